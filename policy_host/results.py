"""The latest `check` and `certs` results, and promotion and guard events.

SQLite in ``state_dir``: ``results.sqlite3`` (WAL mode) for check results
and events, and a table in `certs`' own ``certs.sqlite3`` for certificate
expiry (certs runs as root; the service user owns the rest). `check` and
`certs` write there so that `promote`, the guard and the status page read what was
found instead of asking DNS again; the events keep every promotion, step
down and guard alert with its evidence, so "why is this customer in
testing?" has an answer months later.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from policy_host.errors import PolicyHostError
from policy_host.sqlitedb import BUSY_TIMEOUT, immediate, reading

# Event kinds.
PROMOTED = "promoted"
STEPPED_DOWN = "stepped-down"
GUARD_ALERT = "guard-alert"
EVENT_KINDS = (PROMOTED, STEPPED_DOWN, GUARD_ALERT)

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS check_result (
    domain TEXT PRIMARY KEY,
    checked REAL NOT NULL,
    status TEXT NOT NULL,
    mode TEXT,
    reasons TEXT NOT NULL,
    mx_hosts TEXT
)""",
    "CREATE INDEX IF NOT EXISTS check_result_status ON check_result (status, domain)",
    """CREATE TABLE IF NOT EXISTS event (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    domain TEXT NOT NULL,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    message TEXT NOT NULL,
    evidence TEXT NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS event_domain ON event (domain, seq)",
)


class ResultsError(PolicyHostError):
    """The results database cannot be read or written."""


@dataclass(frozen=True)
class CheckResult:
    """One tenant's latest `check`: when, its status, each reason (code,
    severity, message, subject) and the MX hosts DNS gave (None: not asked)."""

    domain: str
    checked: float
    status: str
    mode: str | None
    reasons: tuple[dict[str, str], ...]
    mx_hosts: tuple[str, ...] | None

    @property
    def codes(self) -> list[str]:
        return [r["code"] for r in self.reasons]


@dataclass(frozen=True)
class Event:
    domain: str
    at: float
    kind: str
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)


def _connect(path: Path, schema: Sequence[str], wal: bool) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None)
    if wal:
        conn.execute("PRAGMA journal_mode=WAL")
    for statement in schema:
        conn.execute(statement)
    return conn


@contextlib.contextmanager
def _writing(
    path: Path, schema: Sequence[str] = SCHEMA, wal: bool = True
) -> Iterator[sqlite3.Connection]:
    try:
        conn = _connect(path, schema, wal)
    except sqlite3.Error as exc:
        raise ResultsError(f"{path}: cannot open the results store: {exc}") from exc
    try:
        with immediate(conn):
            yield conn
    except sqlite3.Error as exc:
        raise ResultsError(f"{path}: cannot write the results store: {exc}") from exc
    finally:
        conn.close()


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[sqlite3.Connection | None]:
    """A read-only connection, or None when nothing was ever stored."""
    try:
        with reading(path) as conn:
            yield conn
    except sqlite3.Error as exc:
        raise ResultsError(f"{path}: cannot read the results store: {exc}") from exc


def put_checks(path: Path, results: Iterable[CheckResult]) -> int:
    """Store each tenant's latest check result; how many were stored."""
    rows = [
        (
            r.domain,
            r.checked,
            r.status,
            r.mode,
            json.dumps(list(r.reasons)),
            None if r.mx_hosts is None else json.dumps(list(r.mx_hosts)),
        )
        for r in results
    ]
    with _writing(path) as conn:
        conn.executemany("INSERT OR REPLACE INTO check_result VALUES (?, ?, ?, ?, ?, ?)", rows)
    return len(rows)


def add_events(path: Path, events: Sequence[Event]) -> None:
    with _writing(path) as conn:
        conn.executemany(
            "INSERT INTO event (domain, at, kind, message, evidence) VALUES (?, ?, ?, ?, ?)",
            [
                (e.domain, e.at, e.kind, e.message, json.dumps(e.evidence, sort_keys=True))
                for e in events
            ],
        )


def _check_of(row: Sequence[Any]) -> CheckResult:
    domain, checked, status, mode, reasons, mx_hosts = row
    return CheckResult(
        domain,
        checked,
        status,
        mode,
        # Most checks pass with no reasons: skip the JSON parser for those.
        () if reasons == "[]" else tuple(json.loads(reasons)),
        None if mx_hosts is None else tuple(json.loads(mx_hosts)),
    )


def read_checks(path: Path, domains: Sequence[str] | None = None) -> dict[str, CheckResult]:
    """The latest check result per tenant (for ``domains``, or all)."""
    with _reading(path) as conn:
        if conn is None:
            return {}
        sql = "SELECT domain, checked, status, mode, reasons, mx_hosts FROM check_result"
        if domains is None:
            rows = conn.execute(sql).fetchall()
        else:
            rows = []
            for start in range(0, len(domains), 500):
                chunk = list(domains[start : start + 500])
                rows += conn.execute(
                    f"{sql} WHERE domain IN ({','.join('?' * len(chunk))})", chunk
                ).fetchall()
    return {row[0]: _check_of(row) for row in rows}


def read_events(path: Path, domain: str | None = None, limit: int = 1000) -> list[Event]:
    """Events, newest first (for one domain, or all)."""
    with _reading(path) as conn:
        if conn is None:
            return []
        where, args = ("WHERE domain = ?", [domain]) if domain else ("", [])
        rows = conn.execute(
            f"SELECT domain, at, kind, message, evidence FROM event {where} "
            "ORDER BY seq DESC LIMIT ?",
            [*args, limit],
        ).fetchall()
    return [Event(d, at, k, m, json.loads(ev)) for d, at, k, m, ev in rows]


def latest_event_per_domain(path: Path) -> dict[str, Event]:
    """Each domain's newest event (for the status page's list)."""
    with _reading(path) as conn:
        if conn is None:
            return {}
        rows = conn.execute(
            "SELECT domain, at, kind, message, evidence FROM event WHERE seq IN "
            "(SELECT max(seq) FROM event GROUP BY domain)"
        ).fetchall()
    return {d: Event(d, at, k, m, json.loads(ev)) for d, at, k, m, ev in rows}


def count_events(path: Path, since: float) -> dict[str, int]:
    """Events per kind at or after ``since`` (for the metrics)."""
    with _reading(path) as conn:
        if conn is None:
            return {}
        rows = conn.execute(
            "SELECT kind, count(*) FROM event WHERE at >= ? GROUP BY 1", (since,)
        ).fetchall()
    return {kind: n for kind, n in rows}
