"""The report store's schema: its tables, the migrations that build them,
and the names of what became of an input.

``raw`` holds every input (its bytes gzip-compressed, how it came, what
became of it); ``report`` one row per organisation and ``report-id``;
``result`` one per policy and ``detail`` one per failure detail (RFC 8460
section 4); ``daily`` and ``daily_failure`` the per-tenant daily totals the
summaries read (docs/reports.md, "What is stored").
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from policy_host.errors import PolicyHostError

# What became of an input (raw.outcome).
STORED = "stored"
DUPLICATE = "duplicate"
REFUSED = "refused"  # not a usable report: the reason says why
FOREIGN = "foreign"  # only domains we do not host
UNVERIFIED = "unverified"  # mail without a DKIM signature that counts, under `require`
NOT_REPORT = "not-report"  # mail that is no TLS report at all
OUTCOMES = (STORED, DUPLICATE, REFUSED, FOREIGN, UNVERIFIED, NOT_REPORT)

# Each migration takes the schema from its index to the next version; the
# database's user_version says how many have run.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE raw (
            id INTEGER PRIMARY KEY,
            received REAL NOT NULL,
            channel TEXT NOT NULL,
            origin TEXT NOT NULL,
            verified INTEGER NOT NULL,
            auth TEXT NOT NULL,
            outcome TEXT NOT NULL,
            reason TEXT NOT NULL,
            domains TEXT NOT NULL,
            body BLOB NOT NULL,
            packed INTEGER NOT NULL,
            report INTEGER
        )""",
        "CREATE INDEX raw_received ON raw (received)",
        """CREATE TABLE report (
            id INTEGER PRIMARY KEY,
            organization TEXT NOT NULL,
            report_id TEXT NOT NULL,
            contact TEXT,
            start REAL NOT NULL,
            end REAL NOT NULL,
            received REAL NOT NULL,
            channel TEXT NOT NULL,
            verified INTEGER NOT NULL,
            copies INTEGER NOT NULL DEFAULT 1,
            quirks TEXT NOT NULL,
            UNIQUE (organization, report_id)
        )""",
        "CREATE INDEX report_received ON report (received)",
        """CREATE TABLE result (
            id INTEGER PRIMARY KEY,
            report INTEGER NOT NULL,
            domain TEXT NOT NULL,
            start REAL NOT NULL,
            verified INTEGER NOT NULL,
            policy_type TEXT NOT NULL,
            policy_string TEXT NOT NULL,
            mx_host TEXT NOT NULL,
            success INTEGER NOT NULL,
            failure INTEGER NOT NULL,
            policy_id TEXT,
            policy_match TEXT NOT NULL
        )""",
        "CREATE INDEX result_domain ON result (domain, start)",
        "CREATE INDEX result_start ON result (start, domain, success, failure)",
        "CREATE INDEX result_report ON result (report)",
        """CREATE TABLE detail (
            result INTEGER NOT NULL,
            result_type TEXT NOT NULL,
            count INTEGER NOT NULL,
            sending_mta_ip TEXT,
            receiving_mx_hostname TEXT,
            receiving_mx_helo TEXT,
            receiving_ip TEXT,
            additional_information TEXT,
            failure_reason_code TEXT
        )""",
        "CREATE INDEX detail_result ON detail (result)",
    ),
    # Daily totals per tenant, kept as reports are stored, so summaries over
    # all tenants read one row per tenant and day instead of every report
    # (docs/performance.md). Filled from the stored rows when migrating.
    (
        """CREATE TABLE daily (
            domain TEXT NOT NULL,
            day INTEGER NOT NULL,
            verified INTEGER NOT NULL,
            reports INTEGER NOT NULL,
            success INTEGER NOT NULL,
            failure INTEGER NOT NULL,
            PRIMARY KEY (domain, day, verified)
        ) WITHOUT ROWID""",
        "CREATE INDEX daily_day ON daily (day)",
        """CREATE TABLE daily_failure (
            domain TEXT NOT NULL,
            day INTEGER NOT NULL,
            verified INTEGER NOT NULL,
            result_type TEXT NOT NULL,
            count INTEGER NOT NULL,
            PRIMARY KEY (domain, day, verified, result_type)
        ) WITHOUT ROWID""",
        "CREATE INDEX daily_failure_day ON daily_failure (day)",
        "INSERT INTO daily SELECT domain, CAST(start / 86400 AS INTEGER), verified, count(*), "
        "sum(success), sum(failure) FROM result GROUP BY 1, 2, 3",
        "INSERT INTO daily_failure SELECT r.domain, CAST(r.start / 86400 AS INTEGER), r.verified, "
        "d.result_type, sum(d.count) FROM result r JOIN detail d ON d.result = r.id "
        "GROUP BY 1, 2, 3, 4",
    ),
    # The digest of a report's parsed content (``digest``), so that a copy
    # with the same organisation and report-id but other content is told
    # apart from a true duplicate. NULL until the first copy arrives, when
    # it is worked out from the stored rows (``copies``).
    # Size and SHA-256 of every input as received, and whether ``body``
    # holds only its first ``HEAD_BYTES`` (``keeps_whole``).
    (
        "ALTER TABLE report ADD COLUMN digest TEXT",
        "ALTER TABLE raw ADD COLUMN size INTEGER",
        "ALTER TABLE raw ADD COLUMN sha256 TEXT",
        "ALTER TABLE raw ADD COLUMN cut INTEGER NOT NULL DEFAULT 0",
    ),
)
DAY = 86_400
# What is kept of an input that ``keeps_whole`` turns down.
HEAD_BYTES = 4096
SCHEMA_VERSION = len(MIGRATIONS)


class StoreError(PolicyHostError):
    """The report store cannot be opened, read or written (try again later)."""

    exit_status = 75  # EX_TEMPFAIL: an MTA keeps the message and retries


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring the database to ``SCHEMA_VERSION`` inside the caller's write
    transaction; a store from a newer policy-host is refused."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path}: report store has schema version {version}; this "
            f"policy-host knows {SCHEMA_VERSION}: upgrade policy-host"
        )
    if version == SCHEMA_VERSION:
        return  # nothing written: no commit to sync (every worker opens the store)
    for steps in MIGRATIONS[version:]:
        for statement in steps:
            conn.execute(statement)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
