"""The report store: SQLite in WAL mode in ``state_dir``.

Every input is first a ``raw`` row (its bytes gzip-compressed, how it came,
what became of it), so nothing received is ever silently dropped. A usable
report adds one ``report`` row, a ``result`` row per policy and a ``detail``
row per failure detail. Senders deliver to every ``rua`` and retry (RFC 8460
section 3), so a report is stored once, keyed by its organisation and
``report-id``; later copies only raise ``copies``. Organisation and
``report-id`` are the sender's to choose, and the HTTPS endpoint is open to
anyone, so a forged copy may arrive first: each report keeps a digest of its
parsed content, a verified copy with the same digest marks the stored one
verified, and a verified copy with another digest replaces an unverified one
(the replaced input stays in ``raw``, refused, with the reason).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from policy_host.errors import PolicyHostError
from policy_host.reports.model import HTTPS, Envelope, Report
from policy_host.reports.pending import Pending
from policy_host.sqlitedb import BUSY_TIMEOUT, immediate, reading

if TYPE_CHECKING:
    from policy_host.reports.rows import ReportRows

# gzip, hashlib (OpenSSL's set-up) and the rows builder are imported where
# storing needs them: the `reports` summaries only read, and their command
# is mostly start-up (docs/performance.md, "Command start-up").

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
    # apart from a true duplicate. NULL for reports stored before.
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


@dataclass(frozen=True)
class Tie:
    """Which served policy a report's result was made against."""

    policy_id: str | None
    match: str  # see policies.MATCHES


@dataclass(frozen=True)
class Received:
    """One input as it arrived, before anything was made of it. ``size``
    and ``sha256`` are set when ``body`` is only the input's first bytes
    (an input too large to read whole); ``sha256`` may be set for a whole
    body too (a worker process works it out, so the storing one need not)."""

    envelope: Envelope
    body: bytes
    received: float
    size: int | None = None
    sha256: str = ""


def keeps_whole(envelope: Envelope, outcome: str) -> bool:
    """Whether an input's bytes are kept whole, or only their size, SHA-256
    and first ``HEAD_BYTES``. Anyone may POST to the public endpoint and name
    any domain, so what it refuses and reports for domains we do not host
    could fill the disk: staff need only enough to see what it was."""
    if outcome == FOREIGN:
        return False
    return not (outcome == REFUSED and envelope.channel == HTTPS)


def digest(report: Report) -> str:
    """SHA-256 of the report's normalised content (``rows.content_digest``)."""
    from policy_host.reports.rows import report_rows

    return report_rows(report).digest


def compress(body: bytes) -> tuple[bytes, bool]:
    """Raw bytes as kept, and whether we packed them: gzip bodies as sent
    (compressing them again gains nothing), anything else gzip-compressed."""
    if body.startswith(b"\x1f\x8b"):
        return body, False
    import gzip

    return gzip.compress(body, compresslevel=6, mtime=0), True


class Store:
    """The report database, opened for reading and writing."""

    def __init__(self, path: Path, *, durable: bool = True) -> None:
        self.path = path
        # Rows and daily totals of the open transaction, written when it commits.
        self._pending = Pending()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk before we answer 2xx or exit 0.
            self.conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._migrate()
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"{path}: cannot open the report store: {exc}") from exc

    def _migrate(self) -> None:
        with self.transaction() as conn:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path}: report store has schema version {version}; this "
                    f"policy-host knows {SCHEMA_VERSION}: upgrade policy-host"
                )
            for steps in MIGRATIONS[version:]:
                for statement in steps:
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self._pending.clear()
        try:
            with immediate(self.conn) as conn:
                yield conn
                self._pending.flush(conn)
                self._pending.flush_daily(conn)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot write the report store: {exc}") from exc

    def add_raw(
        self,
        conn: sqlite3.Connection,
        item: Received,
        outcome: str,
        reason: str = "",
        domains: Sequence[str] = (),
        report_row: int | None = None,
    ) -> int:
        env = item.envelope
        data = item.body
        size = len(data) if item.size is None else item.size
        import hashlib

        sha256 = item.sha256 or hashlib.sha256(data).hexdigest()
        if not keeps_whole(env, outcome):
            data = data[:HEAD_BYTES]
        body, packed = compress(data)
        raw_row = self._pending.new_id(conn, "raw")
        self._pending.rows["raw"].append(
            (
                raw_row,
                item.received,
                env.channel,
                env.origin,
                int(env.verified),
                env.auth,
                outcome,
                reason,
                " ".join(domains),
                body,
                int(packed),
                report_row,
                size,
                sha256,
                int(len(data) < size),
            )
        )
        return raw_row

    def add_report(
        self,
        conn: sqlite3.Connection,
        item: Received,
        report: Report,
        ties: Sequence[Tie],
    ) -> str:
        """Store a parsed report (and its raw bytes); STORED or DUPLICATE."""
        from policy_host.reports.rows import report_rows

        return self.add_rows(conn, item, report_rows(report), ties)

    def add_rows(
        self,
        conn: sqlite3.Connection,
        item: Received,
        report: ReportRows,
        ties: Sequence[Tie],
    ) -> str:
        """``add_report`` of a report already made into rows."""
        from policy_host.reports.rows import domains

        env = item.envelope
        content = report.digest
        cursor = conn.execute(
            "INSERT INTO report (organization, report_id, contact, start, end, received, "
            "channel, verified, quirks, digest) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (organization, report_id) DO NOTHING",
            (
                report.organization,
                report.report_id,
                report.contact,
                report.start,
                report.end,
                item.received,
                env.channel,
                int(env.verified),
                " ".join(report.quirks),
                content,
            ),
        )
        if cursor.rowcount == 0:
            return self._another_copy(conn, item, report, ties, content)
        report_row = int(cursor.lastrowid or 0)
        self.add_raw(conn, item, STORED, domains=domains(report.policies), report_row=report_row)
        self._add_results(conn, report_row, report, ties, verified=env.verified)
        return STORED

    def _another_copy(
        self,
        conn: sqlite3.Connection,
        item: Received,
        report: ReportRows,
        ties: Sequence[Tie],
        content: str,
    ) -> str:
        """A report whose organisation and report-id are stored already."""
        from policy_host.reports.rows import domains

        # What follows reads and changes stored rows: those held go in first.
        self._pending.flush(conn)
        verified = item.envelope.verified
        report_row, was_verified, stored_digest = conn.execute(
            "SELECT id, verified, digest FROM report WHERE organization = ? AND report_id = ?",
            (report.organization, report.report_id),
        ).fetchone()
        conn.execute("UPDATE report SET copies = copies + 1 WHERE id = ?", (report_row,))
        if stored_digest == content:
            if verified and not was_verified:
                conn.execute("UPDATE report SET verified = 1 WHERE id = ?", (report_row,))
                self._roll(conn, report_row, -1, verified=False)
                conn.execute("UPDATE result SET verified = 1 WHERE report = ?", (report_row,))
                self._roll(conn, report_row, 1, verified=True)
            return DUPLICATE
        if not verified or was_verified:
            # Other content under a stored report's name, and no better
            # claim to it: kept aside, the stored report stays as it is.
            reason = f"differs from the stored report {report.organization} {report.report_id}"
            self.add_raw(conn, item, REFUSED, reason, domains(report.policies))
            return DUPLICATE
        # A verified copy whose content differs from the unverified one we
        # hold: the unverified one may be forged (anyone can POST), so the
        # verified content replaces it, and the replaced input is kept raw.
        raw_row = self.add_raw(
            conn, item, STORED, domains=domains(report.policies), report_row=report_row
        )
        self._pending.flush(conn)
        conn.execute(
            "UPDATE raw SET outcome = ?, reason = ?, report = NULL WHERE report = ? AND id != ?",
            (
                REFUSED,
                f"replaced by a DKIM-verified copy with other content (raw {raw_row})",
                report_row,
                raw_row,
            ),
        )
        self._roll(conn, report_row, -1, verified=False)
        conn.execute(
            "DELETE FROM detail WHERE result IN (SELECT id FROM result WHERE report = ?)",
            (report_row,),
        )
        conn.execute("DELETE FROM result WHERE report = ?", (report_row,))
        conn.execute(
            "UPDATE report SET contact = ?, start = ?, end = ?, received = ?, channel = ?, "
            "verified = 1, quirks = ?, digest = ? WHERE id = ?",
            (
                report.contact,
                report.start,
                report.end,
                item.received,
                item.envelope.channel,
                " ".join(report.quirks),
                content,
                report_row,
            ),
        )
        self._add_results(conn, report_row, report, ties, verified=True)
        return STORED

    def _add_results(
        self,
        conn: sqlite3.Connection,
        report_row: int,
        report: ReportRows,
        ties: Sequence[Tie],
        *,
        verified: bool,
    ) -> None:
        """A stored report's result and detail rows, and its daily totals."""
        day = int(report.start // DAY)
        pending = self._pending
        results, details = pending.rows["result"], pending.rows["detail"]
        for policy, tie in zip(report.policies, ties, strict=True):
            result_row = pending.new_id(conn, "result")
            results.append(
                (
                    result_row,
                    report_row,
                    policy.domain,
                    report.start,
                    int(verified),
                    policy.policy_type,
                    policy.strings_json,
                    policy.mx_json,
                    policy.success,
                    policy.failure,
                    tie.policy_id,
                    tie.match,
                )
            )
            totals = pending.daily.setdefault((policy.domain, day, int(verified)), [0, 0, 0])
            totals[0] += 1
            totals[1] += policy.success
            totals[2] += policy.failure
            for d in policy.details:
                key = (policy.domain, day, int(verified), d[0])
                pending.daily_failure[key] = pending.daily_failure.get(key, 0) + d[1]
                details.append((result_row, *d))

    def _roll(
        self, conn: sqlite3.Connection, report_row: object, sign: int, *, verified: bool
    ) -> None:
        """Add (sign 1) or take away (-1) a stored report's rows in the daily totals."""
        conn.execute(
            "INSERT INTO daily SELECT domain, CAST(start / 86400 AS INTEGER), ?, ?, ? * success, "
            "? * failure FROM result WHERE report = ? AND true ON CONFLICT DO UPDATE SET "
            "reports = reports + excluded.reports, success = success + excluded.success, "
            "failure = failure + excluded.failure",
            (int(verified), sign, sign, sign, report_row),
        )
        conn.execute(
            "INSERT INTO daily_failure SELECT r.domain, CAST(r.start / 86400 AS INTEGER), ?, "
            "d.result_type, ? * d.count FROM result r JOIN detail d ON d.result = r.id "
            "WHERE r.report = ? AND true ON CONFLICT DO UPDATE SET count = count + excluded.count",
            (int(verified), sign, report_row),
        )

    def prune(self, now: float, keep_reports: float, keep_raw: float) -> tuple[int, int]:
        """Drop reports received more than ``keep_reports`` seconds ago, and
        raw inputs that made no report more than ``keep_raw`` seconds ago.
        Returns (reports, raw rows) deleted."""
        with self.transaction() as conn:
            old = "SELECT id FROM report WHERE received < ?"
            conn.execute(
                "DELETE FROM detail WHERE result IN (SELECT id FROM result WHERE report IN "
                f"({old}))",
                (now - keep_reports,),
            )
            conn.execute(f"DELETE FROM result WHERE report IN ({old})", (now - keep_reports,))
            conn.execute(
                "DELETE FROM raw WHERE outcome = ? AND received < ?", (STORED, now - keep_reports)
            )
            reports = conn.execute(
                "DELETE FROM report WHERE received < ?", (now - keep_reports,)
            ).rowcount
            # Daily totals by report day: as old as what retention dropped.
            oldest = int((now - keep_reports) // DAY)
            conn.execute("DELETE FROM daily WHERE day < ?", (oldest,))
            conn.execute("DELETE FROM daily_failure WHERE day < ?", (oldest,))
            raws = conn.execute(
                "DELETE FROM raw WHERE outcome != ? AND received < ?", (STORED, now - keep_raw)
            ).rowcount
        return int(reports), int(raws)

    def raw_body(self, raw_id: int) -> bytes:
        """An input's bytes exactly as they were received (only the first
        ``HEAD_BYTES`` of one whose ``cut`` is set)."""
        row = self.conn.execute("SELECT body, packed FROM raw WHERE id = ?", (raw_id,)).fetchone()
        if row is None:
            raise StoreError(f"no raw input {raw_id}")
        import gzip

        return gzip.decompress(bytes(row[0])) if row[1] else bytes(row[0])

    def outcomes(self) -> dict[str, int]:
        rows = self.conn.execute("SELECT outcome, count(*) FROM raw GROUP BY outcome")
        return {str(outcome): int(n) for outcome, n in rows}


def would_prune(path: Path, now: float, keep_reports: float, keep_raw: float) -> tuple[int, int]:
    """What ``Store.prune`` would drop: (reports, raw rows), read without
    changing anything (the database is opened read-only, never created or
    migrated)."""
    try:
        with reading(path) as conn:
            if conn is None:
                return 0, 0
            reports = conn.execute(
                "SELECT count(*) FROM report WHERE received < ?", (now - keep_reports,)
            ).fetchone()[0]
            raws = conn.execute(
                "SELECT count(*) FROM raw WHERE outcome != ? AND received < ?",
                (STORED, now - keep_raw),
            ).fetchone()[0]
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: cannot read the report store: {exc}") from exc
    return int(reports), int(raws)
