"""The apply state's rows: statuses, pending changes, policy ids, the schema.

(``state`` describes what the rows mean.)
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import secrets
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from policy_host.errors import PolicyHostError
from policy_host.model import MAX_AGE_LIMIT
from policy_host.records import is_policy_id

SCHEMA_VERSION = 3
# The schema version that added the hosted TLS-RPT column.
TLSRPT_SINCE = 2
# The schema version that added the served-versions table.
SERVED_SINCE = 3
# Seconds a replaced version's row is kept: the longest max_age a policy
# may have (RFC 8461 section 3.2), so a report made against it within its
# max_age is still tied to its id, and a later one is known as stale.
SERVED_KEEP = MAX_AGE_LIMIT
# History rows kept per tenant (the newest ones).
HISTORY_KEEP = 20

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

SCHEMA = (
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

# The served versions a state without the served table knows of, from the
# history `apply` kept (the newest HISTORY_KEEP events per tenant): the
# migration fills the table with it, and readers of an older state use it.
SERVED_FROM_HISTORY = """
WITH ev AS (
    SELECT domain, at, event, policy_id, fingerprint, max_age FROM history
),
versions AS (
    SELECT domain, fingerprint, MIN(at) AS first_at,
           MAX(CASE WHEN event LIKE 'commit %' THEN at END) AS committed_at
    FROM ev WHERE policy_id IS NOT NULL AND fingerprint IS NOT NULL
    GROUP BY domain, fingerprint
)
SELECT v.domain, v.fingerprint,
    (SELECT e.policy_id FROM ev e WHERE e.domain = v.domain AND e.fingerprint = v.fingerprint
     AND e.policy_id IS NOT NULL ORDER BY e.at DESC LIMIT 1),
    (SELECT COALESCE(e.max_age, 0) FROM ev e WHERE e.domain = v.domain
     AND e.fingerprint = v.fingerprint AND e.policy_id IS NOT NULL ORDER BY e.at DESC LIMIT 1),
    v.first_at, v.committed_at,
    (SELECT MIN(e.at) FROM ev e WHERE e.domain = v.domain AND e.event LIKE 'commit %'
     AND e.at >= COALESCE(v.committed_at, v.first_at)
     AND (e.fingerprint IS NOT v.fingerprint OR e.event = 'commit delete'))
FROM versions v
"""

# Statements that bring a database of version N-1 to N, by N; version 1 is
# ``SCHEMA``. A new database is made by SCHEMA and then every migration.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    # The hosted _smtp._tls TXT value `apply` published for the tenant
    # (RFC 8460 section 3), NULL when none is.
    TLSRPT_SINCE: ("ALTER TABLE tenant ADD COLUMN tlsrpt BLOB",),
    SERVED_SINCE: (
        # Every policy version served, by domain and fingerprint (the
        # SHA-256 of the bytes): its id and max_age, when it was first
        # served, last committed and replaced (NULL while it is current).
        """CREATE TABLE served (
    domain TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    policy_id TEXT NOT NULL,
    max_age INTEGER NOT NULL,
    first_served REAL NOT NULL,
    last_committed REAL,
    replaced_at REAL,
    PRIMARY KEY (domain, fingerprint)
) WITHOUT ROWID""",
        "INSERT INTO served (domain, fingerprint, policy_id, max_age, first_served, "
        "last_committed, replaced_at) " + SERVED_FROM_HISTORY,
    ),
}


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
        if self.policy_id is not None and not is_policy_id(self.policy_id):
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
class ServedVersion:
    """One policy version served for ``domain`` (the ``served`` table)."""

    domain: str
    fingerprint: str
    policy_id: str
    max_age: int
    first_served: float
    last_committed: float | None  # None: served, never committed
    replaced_at: float | None  # None: still current


@dataclass(frozen=True)
class HistoryEntry:
    domain: str
    at: float
    event: str
    policy_id: str | None
    fingerprint: str | None
    max_age: int | None


def new_policy_id(now: float, domain: str, fingerprint: str, taken: Iterable[str] = ()) -> str:
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


def user_version(conn: sqlite3.Connection, path: Path) -> int:
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise StateError(
            f"{path}: apply state has schema version {version}; this policy-host "
            f"knows {SCHEMA_VERSION}: upgrade policy-host"
        )
    return version


COLUMNS = (
    "domain, status, policy_id, fingerprint, body, max_age, longest_max_age, served_at, "
    "published_at, confirmed_at, withdrawal_started, pending_kind, pending_id, "
    "pending_fingerprint, pending_body, pending_max_age, pending_step, pending_since, "
    "pending_served_at, pending_published_at"
)
RECORD_FIELDS = [name.strip() for name in COLUMNS.split(",")][:11]


# The first columns are Record's fields, in order (rows are turned into
# Records positionally: `apply` reads 100,000 of them per run).
assert [f.name for f in dataclasses.fields(Record)][:11] == RECORD_FIELDS


def _record(row: Any) -> Record:
    """A row of ``COLUMNS`` (SQLite gives back the stored types) -> Record."""
    pending = Pending(*row[11:]) if row[11] is not None else None
    domain, status, policy_id, fp, body, max_age, longest, served, published, confirmed, started = (
        row[:11]
    )
    return Record(
        domain, status, policy_id, fp, body, max_age, longest, served, published, confirmed,
        started, pending,
    )  # fmt: skip


def records_of(conn: sqlite3.Connection) -> dict[str, Record]:
    rows = conn.execute(f"SELECT {COLUMNS} FROM tenant ORDER BY domain").fetchall()
    return {str(row[0]): _record(row) for row in rows}


def record_of(conn: sqlite3.Connection, domain: str) -> Record | None:
    row = conn.execute(f"SELECT {COLUMNS} FROM tenant WHERE domain = ?", (domain,)).fetchone()
    return None if row is None else _record(row)
