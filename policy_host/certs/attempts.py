"""When each name was last ordered and how it went, and how many orders
went out in the last hour: a small SQLite file of ``certs``' own in
``state_dir``, so a broken customer never burns the CA's rate limits.

It also keeps, per name, until when the certificate ``certs`` last found
valid runs: `apply` runs as the server's user, who cannot read certbot's
``live`` folder (root's, mode 0700), and holds back a new tenant's first
id until its name has a certificate (RFC 8461 section 8: serve, then
publish); ``recorded_until`` is what it reads then."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from policy_host.errors import PolicyHostError
from policy_host.sqlitedb import reading

HOUR = 3600.0


@dataclass(frozen=True)
class Attempt:
    host: str
    at: float
    ok: bool
    message: str


class AttemptLog:
    """When each name was last ordered and how it went; orders per hour."""

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = path
        if read_only:
            # --dry-run: read what is there, create and change nothing.
            target = f"file:{path}?mode=ro" if path.exists() else "file::memory:"
            self.db = sqlite3.connect(target, uri=True, isolation_level=None)
            if path.exists():
                return
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(path, timeout=10, isolation_level=None)
            # `apply` (the server's user) reads the certificates table.
            with contextlib.suppress(OSError):
                path.chmod(0o644)
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS attempts (
                host TEXT PRIMARY KEY, at REAL NOT NULL, ok INTEGER NOT NULL,
                message TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS orders (at REAL NOT NULL, host TEXT NOT NULL);
            CREATE INDEX IF NOT EXISTS orders_at ON orders (at);
            CREATE TABLE IF NOT EXISTS certificates (
                host TEXT PRIMARY KEY, not_after REAL NOT NULL);
            """
        )

    def close(self) -> None:
        self.db.close()

    def last(self, host: str) -> Attempt | None:
        row = self.db.execute(
            "SELECT host, at, ok, message FROM attempts WHERE host = ?", (host,)
        ).fetchone()
        return Attempt(row[0], row[1], bool(row[2]), row[3]) if row else None

    def orders_since(self, since: float) -> int:
        count: int = self.db.execute(
            "SELECT count(*) FROM orders WHERE at >= ?", (since,)
        ).fetchone()[0]
        return count

    def ordering(self, host: str, at: float) -> None:
        """Count an order before it is sent: a crash mid-order still counts."""
        with self.db:
            self.db.execute("INSERT INTO orders (at, host) VALUES (?, ?)", (at, host))
            self.db.execute("DELETE FROM orders WHERE at < ?", (at - 7 * 24 * HOUR,))

    def record(self, host: str, at: float, ok: bool, message: str) -> None:
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO attempts (host, at, ok, message) VALUES (?, ?, ?, ?)",
                (host, at, int(ok), message),
            )

    def certificate(self, host: str, not_after: float | None) -> None:
        """Note the valid certificate ``host`` has (None: it has none)."""
        with self.db:
            if not_after is None:
                self.db.execute("DELETE FROM certificates WHERE host = ?", (host,))
            else:
                self.db.execute(
                    "INSERT OR REPLACE INTO certificates (host, not_after) VALUES (?, ?)",
                    (host, not_after),
                )


def recorded_certificates(path: Path) -> dict[str, float]:
    """Every policy name with a valid certificate when ``certs`` last ran,
    and until when (read-only; a name not listed has none)."""
    try:
        with reading(path) as db:
            rows = db.execute("SELECT host, not_after FROM certificates").fetchall() if db else []
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):  # written before certificates were recorded
            return {}
        raise PolicyHostError(f"{path}: cannot read what certs recorded: {exc}") from None
    return {host: float(not_after) for host, not_after in rows}


def recorded_until(path: Path, host: str) -> float | None:
    """Until when the certificate ``certs`` last found valid for ``host``
    runs (None: none recorded)."""
    return recorded_certificates(path).get(host)


@contextlib.contextmanager
def attempt_log(path: Path, read_only: bool) -> Iterator[AttemptLog]:
    attempts = AttemptLog(path, read_only=read_only)
    try:
        yield attempts
    finally:
        attempts.close()
