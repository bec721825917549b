"""What `apply` has done: per tenant the policy and id in DNS, in SQLite.

One row per tenant domain holds two things:

- the *committed* policy: the bytes, fingerprint and id that were served,
  verified, published to the primary DNS server and confirmed there, with
  the times of each step;
- at most one *pending* change: a new id and bytes that a run has started
  to serve and publish but not yet committed.

A run changes the store in short transactions: ``begin`` records the pending
changes (before the server is told to reload), ``mark`` notes the steps done,
``commit`` moves pending into committed (after the primary confirmed the new
TXT). A crash at any point leaves either the old committed state or the new
one, plus a pending change that the next run takes up again; because every
step (reload, verify, UPDATE, confirm) can be repeated safely, the rerun
converges. While a change is pending its id may already be in DNS, so a
tenant without a file is served its pending bytes (see ``fallback_policies``).

Readers that are not `apply` (the snapshot compiler in the gunicorn master,
`check`, `zone`) open the database read-only and never create it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import logging
import re
import secrets
import sqlite3
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from policy_host.errors import PolicyHostError
from policy_host.read.config import ProviderConfig

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
# History rows kept per tenant (the newest ones).
HISTORY_KEEP = 20
# Seconds a reader or writer waits for another's transaction to finish.
BUSY_TIMEOUT = 10.0

# Committed status of a tenant.
UNPUBLISHED = "unpublished"  # nothing committed yet (only a pending change)
ACTIVE = "active"  # its tenant file's policy is published
WITHDRAWING = "withdrawing"  # file removed; `mode: none` published until caches expire
GONE = "gone"  # withdrawn: TXT deleted, not served
STATUSES = (UNPUBLISHED, ACTIVE, WITHDRAWING, GONE)

# Kinds of pending change.
NEW = "new"
CHANGE = "change"
WITHDRAW = "withdraw"
DELETE = "delete"
KINDS = (NEW, CHANGE, WITHDRAW, DELETE)

# Steps a pending change has passed (for reports; a rerun redoes them all).
RECORDED = "recorded"
SERVED = "served"
PUBLISHED = "published"
STEPS = (RECORDED, SERVED, PUBLISHED)

# RFC 8461 section 3.1: id is 1-32 ASCII letters and digits.
ID_PATTERN = re.compile(r"[A-Za-z0-9]{1,32}\Z")

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS tenant (
    domain TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    policy_id TEXT,
    fingerprint TEXT,
    body BLOB,
    max_age INTEGER,
    longest_max_age INTEGER NOT NULL DEFAULT 0,
    served_at REAL,
    published_at REAL,
    confirmed_at REAL,
    withdrawal_started REAL,
    pending_kind TEXT,
    pending_id TEXT,
    pending_fingerprint TEXT,
    pending_body BLOB,
    pending_max_age INTEGER,
    pending_step TEXT,
    pending_since REAL,
    pending_served_at REAL,
    pending_published_at REAL
)""",
    """CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    domain TEXT NOT NULL,
    at REAL NOT NULL,
    event TEXT NOT NULL,
    policy_id TEXT,
    fingerprint TEXT,
    max_age INTEGER
)""",
    "CREATE INDEX IF NOT EXISTS history_domain ON history (domain, seq)",
)


class StateError(PolicyHostError):
    """The state database cannot be read or written."""


@dataclass(frozen=True)
class Pending:
    """A change a run has started: serve ``body``, then publish ``policy_id``.

    For ``delete`` there is no new id: the TXT goes, and ``body`` (the
    withdrawal policy) is served until the deletion is committed.
    """

    kind: str
    policy_id: str | None
    fingerprint: str
    body: bytes
    max_age: int
    step: str = RECORDED
    since: float = 0.0
    served_at: float | None = None
    published_at: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown pending kind {self.kind!r}")
        if (self.policy_id is None) != (self.kind == DELETE):
            raise ValueError(f"{self.kind}: policy_id {self.policy_id!r} does not fit")
        if self.policy_id is not None and not ID_PATTERN.match(self.policy_id):
            raise ValueError(f"bad policy id {self.policy_id!r}")


@dataclass(frozen=True)
class Record:
    """One tenant's row: the committed policy and any pending change."""

    domain: str
    status: str
    policy_id: str | None = None
    fingerprint: str | None = None
    body: bytes | None = None
    max_age: int | None = None
    longest_max_age: int = 0
    served_at: float | None = None
    published_at: float | None = None
    confirmed_at: float | None = None
    withdrawal_started: float | None = None
    pending: Pending | None = None

    @property
    def live(self) -> bool:
        """True while the tenant has (or may have) a TXT record and a policy."""
        return self.status in (ACTIVE, WITHDRAWING) or self.pending is not None

    def withdrawal_ends(self) -> float | None:
        """When the last cached non-``none`` policy has expired (RFC 8461
        section 5: senders may keep a policy for its max_age)."""
        if self.status != WITHDRAWING or self.withdrawal_started is None:
            return None
        return self.withdrawal_started + self.longest_max_age


@dataclass(frozen=True)
class HistoryEntry:
    domain: str
    at: float
    event: str
    policy_id: str | None
    fingerprint: str | None
    max_age: int | None


# -- ids -------------------------------------------------------------------


def new_id(now: float, domain: str, fingerprint: str, taken: Iterable[str] = ()) -> str:
    """A fresh policy id: UTC time to the second plus 8 hex digits.

    The hex digits hash the domain, the new fingerprint and random bytes, so
    two changes within one second still get different ids; ``taken`` (the
    tenant's earlier ids) is avoided outright. 23 letters and digits.
    """
    stamp = datetime.datetime.fromtimestamp(now, datetime.UTC).strftime("%Y%m%dT%H%M%S")
    avoid = set(taken)
    while True:
        salt = secrets.token_bytes(8)
        digest = hashlib.sha256(f"{domain}\0{fingerprint}\0".encode() + salt).hexdigest()
        candidate = stamp + digest[:8]
        if candidate not in avoid:
            return candidate


# -- read-only access ------------------------------------------------------


@contextlib.contextmanager
def _read_only(path: Path) -> Iterator[sqlite3.Connection | None]:
    """A connection that only reads, or ``None`` when there is no database.

    Opened ``mode=rw`` (which never creates a file, and falls back to
    read-only by itself where the file is write-protected) with
    ``query_only``: if `apply` was killed in the middle of a commit, SQLite
    must roll back the journal it left before anyone can read, and a
    ``mode=ro`` connection cannot.
    """
    if not path.exists():
        yield None
        return
    uri = "file:" + urllib.parse.quote(str(path)) + "?mode=rw"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT)
        conn.execute("PRAGMA query_only=1")
    except sqlite3.Error as exc:
        raise StateError(f"{path}: cannot open the apply state: {exc}") from exc
    try:
        if _user_version(conn, path) == 0:
            # Created but never initialised (a crash in the very first
            # transaction): nothing was ever committed.
            yield None
            return
        yield conn
    except sqlite3.Error as exc:
        raise StateError(f"{path}: cannot read the apply state: {exc}") from exc
    finally:
        conn.close()


def _user_version(conn: sqlite3.Connection, path: Path) -> int:
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise StateError(
            f"{path}: apply state has schema version {version}; this policy-host "
            f"knows {SCHEMA_VERSION}: upgrade policy-host"
        )
    return version


def published_ids(config: ProviderConfig) -> dict[str, str]:
    """Domain -> the id `apply` last published *and* confirmed at the primary.

    Read-only: returns ``{}`` when there is no state yet and never creates
    the database. Tenants being withdrawn are included (their TXT carries
    the id of the ``mode: none`` policy); withdrawn ones are not.
    """
    with _read_only(config.state_db) as conn:
        if conn is None:
            return {}
        rows = conn.execute(
            "SELECT domain, policy_id FROM tenant WHERE policy_id IS NOT NULL "
            "AND confirmed_at IS NOT NULL AND status IN (?, ?) ORDER BY domain",
            (ACTIVE, WITHDRAWING),
        ).fetchall()
    return {str(domain): str(policy_id) for domain, policy_id in rows}


def read_records(path: Path) -> dict[str, Record]:
    """Every tenant row, read-only; ``{}`` when there is no database."""
    with _read_only(path) as conn:
        if conn is None:
            return {}
        return _records(conn)


def fallback_policies(path: Path) -> dict[str, bytes]:
    """What a tenant *without a file* is served, by domain.

    A tenant being withdrawn is served its ``mode: none`` policy; a tenant
    whose file was removed but that `apply` has not withdrawn yet keeps its
    last published policy. Where a change is pending its bytes win: its id
    may already be in DNS, and a sender that sees an id must get that id's
    policy or a newer one (RFC 8461 section 8). The snapshot compiler uses
    this only for domains that have no tenant file.
    """
    # One lean query rather than read_records(): every compile (each reload,
    # the server starting) asks, and with 100,000 tenants building a Record
    # for each costs more than the rest of the compile.
    with _read_only(path) as conn:
        if conn is None:
            return {}
        rows = conn.execute(
            "SELECT domain, CASE WHEN pending_kind IS NOT NULL THEN pending_body ELSE body END "
            "FROM tenant WHERE pending_kind IS NOT NULL "
            "OR (status IN (?, ?) AND body IS NOT NULL) ORDER BY domain",
            (ACTIVE, WITHDRAWING),
        ).fetchall()
    return {str(domain): bytes(body) for domain, body in rows if body is not None}


def history(path: Path, domain: str | None = None) -> list[HistoryEntry]:
    """Recorded events, oldest first (for one domain, or all)."""
    with _read_only(path) as conn:
        if conn is None:
            return []
        where, args = ("WHERE domain = ?", (domain,)) if domain else ("", ())
        rows = conn.execute(
            "SELECT domain, at, event, policy_id, fingerprint, max_age FROM history "
            f"{where} ORDER BY seq",
            args,
        ).fetchall()
    return [HistoryEntry(*row) for row in rows]


_COLUMNS = (
    "domain, status, policy_id, fingerprint, body, max_age, longest_max_age, served_at, "
    "published_at, confirmed_at, withdrawal_started, pending_kind, pending_id, "
    "pending_fingerprint, pending_body, pending_max_age, pending_step, pending_since, "
    "pending_served_at, pending_published_at"
)
_RECORD_FIELDS = [name.strip() for name in _COLUMNS.split(",")][:11]


# The first columns are Record's fields, in order (rows are turned into
# Records positionally: `apply` reads 100,000 of them per run).
assert [f.name for f in dataclasses.fields(Record)][:11] == _RECORD_FIELDS


def _record(row: Any) -> Record:
    """A row of ``_COLUMNS`` (SQLite gives back the stored types) -> Record."""
    pending = Pending(*row[11:]) if row[11] is not None else None
    domain, status, policy_id, fp, body, max_age, longest, served, published, confirmed, started = (
        row[:11]
    )
    return Record(
        domain, status, policy_id, fp, body, max_age, longest, served, published, confirmed,
        started, pending,
    )  # fmt: skip


def _records(conn: sqlite3.Connection) -> dict[str, Record]:
    rows = conn.execute(f"SELECT {_COLUMNS} FROM tenant ORDER BY domain").fetchall()
    return {str(row[0]): _record(row) for row in rows}


def _record_of(conn: sqlite3.Connection, domain: str) -> Record | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM tenant WHERE domain = ?", (domain,)).fetchone()
    return None if row is None else _record(row)


# -- the read-write store (apply only, under its lock) ---------------------


class Store:
    """The state database opened for writing; every method is one transaction."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # Autocommit mode: transactions are opened explicitly below.
            self._conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=DELETE")
            self._conn.execute("PRAGMA synchronous=FULL")
            with self._transaction():
                if _user_version(self._conn, path) == 0:
                    # One statement at a time: executescript() would commit.
                    for statement in _SCHEMA:
                        self._conn.execute(statement)
                    self._conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            raise StateError(f"{path}: cannot open the apply state: {exc}") from exc

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                # SQLite may have rolled back by itself already (SQLITE_FULL
                # when the disk is full): ROLLBACK's own error ("no
                # transaction is active") must not hide the one that did it.
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StateError(f"{self.path}: cannot write the apply state: {exc}") from exc

    def records(self) -> dict[str, Record]:
        try:
            return _records(self._conn)
        except sqlite3.Error as exc:
            raise StateError(f"{self.path}: cannot read the apply state: {exc}") from exc

    def begin(self, changes: Mapping[str, Pending], now: float) -> None:
        """Record pending changes (replacing earlier pending ones)."""
        with self._transaction() as conn:
            for domain, pending in changes.items():
                old = conn.execute(
                    "SELECT pending_max_age FROM tenant WHERE domain = ? "
                    "AND pending_kind IN (?, ?)",
                    (domain, NEW, CHANGE),
                ).fetchone()
                # A superseded pending policy may have reached DNS: its
                # max_age counts towards how long a withdrawal lasts.
                longest = old[0] if old and old[0] is not None else 0
                conn.execute(
                    "INSERT INTO tenant (domain, status) VALUES (?, ?) "
                    "ON CONFLICT (domain) DO NOTHING",
                    (domain, UNPUBLISHED),
                )
                conn.execute(
                    "UPDATE tenant SET pending_kind = ?, pending_id = ?, pending_fingerprint = ?, "
                    "pending_body = ?, pending_max_age = ?, pending_step = ?, pending_since = ?, "
                    "pending_served_at = NULL, pending_published_at = NULL, "
                    "longest_max_age = MAX(longest_max_age, ?) WHERE domain = ?",
                    (
                        pending.kind,
                        pending.policy_id,
                        pending.fingerprint,
                        pending.body,
                        pending.max_age,
                        RECORDED,
                        now,
                        longest,
                        domain,
                    ),
                )
                _add_history(conn, domain, now, f"begin {pending.kind}", pending)

    def mark(self, domains: Iterable[str], step: str, now: float) -> None:
        """Note that the pending changes of ``domains`` passed ``step``."""
        if step not in STEPS:
            raise ValueError(f"unknown step {step!r}")
        column = {SERVED: "pending_served_at", PUBLISHED: "pending_published_at"}.get(step)
        with self._transaction() as conn:
            for domain in domains:
                extra = f", {column} = ?" if column else ""
                args: tuple[object, ...] = (step, now, domain) if column else (step, domain)
                conn.execute(
                    f"UPDATE tenant SET pending_step = ?{extra} "
                    "WHERE domain = ? AND pending_kind IS NOT NULL",
                    args,
                )

    def commit(self, domains: Iterable[str], now: float, *, confirmed: bool) -> None:
        """Make the pending changes of ``domains`` the committed state.

        ``confirmed`` is False when there is no primary to publish to (the
        operator loads `policy-host zone` output by hand).
        """
        with self._transaction() as conn:
            for domain in domains:
                record = _record_of(conn, domain)
                pending = record.pending if record else None
                if record is None or pending is None:
                    continue
                confirmed_at = now if confirmed else None
                published_at = (pending.published_at or now) if confirmed else None
                served_at = pending.served_at or now
                if pending.kind == DELETE:
                    conn.execute(
                        "UPDATE tenant SET status = ?, policy_id = NULL, fingerprint = NULL, "
                        "body = NULL, max_age = NULL, served_at = NULL, published_at = ?, "
                        "confirmed_at = ?, withdrawal_started = NULL WHERE domain = ?",
                        (GONE, published_at, confirmed_at, domain),
                    )
                else:
                    withdrawing = pending.kind == WITHDRAW
                    # The withdrawal clock starts when `mode: none` is first
                    # confirmed in DNS: from then on every sender that looks
                    # gets `none`, so older policies only live on in caches.
                    started = (
                        (record.withdrawal_started or now)
                        if withdrawing and record.status == WITHDRAWING
                        else (now if withdrawing else None)
                    )
                    conn.execute(
                        "UPDATE tenant SET status = ?, policy_id = ?, fingerprint = ?, body = ?, "
                        "max_age = ?, served_at = ?, published_at = ?, confirmed_at = ?, "
                        "withdrawal_started = ?, longest_max_age = MAX(longest_max_age, ?) "
                        "WHERE domain = ?",
                        (
                            WITHDRAWING if withdrawing else ACTIVE,
                            pending.policy_id,
                            pending.fingerprint,
                            pending.body,
                            pending.max_age,
                            served_at,
                            published_at,
                            confirmed_at,
                            started,
                            0 if withdrawing else pending.max_age,
                            domain,
                        ),
                    )
                conn.execute(
                    "UPDATE tenant SET pending_kind = NULL, pending_id = NULL, "
                    "pending_fingerprint = NULL, pending_body = NULL, pending_max_age = NULL, "
                    "pending_step = NULL, pending_since = NULL, pending_served_at = NULL, "
                    "pending_published_at = NULL WHERE domain = ?",
                    (domain,),
                )
                _add_history(conn, domain, now, f"commit {pending.kind}", pending)

    def history(self, domain: str) -> list[HistoryEntry]:
        rows = self._conn.execute(
            "SELECT domain, at, event, policy_id, fingerprint, max_age FROM history "
            "WHERE domain = ? ORDER BY seq",
            (domain,),
        ).fetchall()
        return [HistoryEntry(*row) for row in rows]


def _add_history(
    conn: sqlite3.Connection, domain: str, now: float, event: str, pending: Pending
) -> None:
    conn.execute(
        "INSERT INTO history (domain, at, event, policy_id, fingerprint, max_age) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (domain, now, event, pending.policy_id, pending.fingerprint, pending.max_age),
    )
    conn.execute(
        "DELETE FROM history WHERE domain = ? AND seq NOT IN "
        "(SELECT seq FROM history WHERE domain = ? ORDER BY seq DESC LIMIT ?)",
        (domain, domain, HISTORY_KEEP),
    )
