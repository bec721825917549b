"""The report store: SQLite in WAL mode in ``state_dir``, written here.

Every input is first a ``raw`` row (its bytes gzip-compressed, how it came,
what became of it), so nothing received is ever silently dropped. A usable
report adds one ``report`` row, a ``result`` row per policy and a ``detail``
row per failure detail. Senders deliver to every ``rua`` and retry (RFC 8460
section 3), so a report is stored once, keyed by its organisation and
``report-id``; what a later copy does is ``copies``'s. Whether a key is
stored already is asked once per batch of inputs (``known``), so a report
that is new costs no statement of its own: its rows wait in ``Pending``
and go in with one ``executemany`` per table.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import sqlite3
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

from policy_host.reports import copies, retention
from policy_host.reports.model import HTTPS, Envelope, Report
from policy_host.reports.pending import Pending
from policy_host.reports.rows import ReportRows, digest_of, domains, report_rows
from policy_host.reports.schema import (
    DAY,
    FOREIGN,
    HEAD_BYTES,
    REFUSED,
    STORED,
    StoreError,
    migrate,
)
from policy_host.sqlitedb import BUSY_TIMEOUT, immediate

# A report's key: organisation and report-id, both the sender's choice.
Key = tuple[str, str]
# SQLite's default limit of host parameters per statement is 32,766; a
# batch asks for its keys in slices well below it.
KEYS_PER_QUERY = 4000


class Tie(NamedTuple):
    """Which served policy a report's result was made against."""

    policy_id: str | None
    match: str  # see policies.MATCHES


class Received(NamedTuple):
    """One input as it arrived, before anything was made of it. ``size``
    and ``sha256`` are set when ``body`` is only the input's first bytes
    (an input too large to read whole); ``sha256`` may be set for a whole
    body too (a worker process works it out, so the storing one need not)."""

    envelope: Envelope
    body: bytes
    received: float
    size: int | None = None
    sha256: str = ""


def keeps_whole(channel: str, outcome: str) -> bool:
    """Whether an input's bytes are kept whole, or only their size, SHA-256
    and first ``HEAD_BYTES``. Anyone may POST to the public endpoint and name
    any domain, so what it refuses and reports for domains we do not host
    could fill the disk: staff need only enough to see what it was."""
    if outcome == FOREIGN:
        return False
    return not (outcome == REFUSED and channel == HTTPS)


def digest(report: Report) -> str:
    """SHA-256 of the report's normalised content (``rows.content_digest``)."""
    return digest_of(report_rows(report))


def compress(body: bytes) -> tuple[bytes, bool]:
    """Raw bytes as kept, and whether we packed them: gzip bodies as sent
    (compressing them again gains nothing), anything else gzip-compressed."""
    if body.startswith(b"\x1f\x8b"):
        return body, False
    return gzip.compress(body, compresslevel=6, mtime=0), True


class Store:
    """The report database, opened for reading and writing."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # Rows and daily totals of the open transaction, written when it commits.
        self.pending = Pending()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self._durable = False
            self._set_durable(True)
            with self.transaction() as conn:
                migrate(conn, path)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"{path}: cannot open the report store: {exc}") from exc

    def _set_durable(self, durable: bool) -> None:
        # FULL: a commit is on disk before we answer 2xx or exit 0. NORMAL
        # (in WAL mode) survives a crash of the process but not of the
        # machine; a later FULL commit makes everything before it durable
        # too, since it syncs the one WAL file that holds it all.
        if durable != self._durable:
            self.conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._durable = durable

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """A write transaction; ``durable=False`` only where a durable one
        follows before anyone is told the inputs are kept (a batch of files)."""
        self.pending.clear()
        try:
            self._set_durable(durable)
            with immediate(self.conn) as conn:
                yield conn
                self.pending.flush(conn)
                self.pending.flush_daily(conn)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot write the report store: {exc}") from exc

    def sync(self) -> None:
        """Put everything committed so far on disk: the database file and
        its write-ahead log, where commits made with ``durable=False`` may
        still be only in the page cache (for a durable transaction that
        had nothing to write, which SQLite does not sync)."""
        try:
            # The folder too: the log may have been made during the run.
            for name in (str(self.path), f"{self.path}-wal", str(self.path.parent)):
                with contextlib.suppress(FileNotFoundError):
                    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot write the report store: {exc}") from exc

    def known(self, conn: sqlite3.Connection, keys: Collection[Key]) -> set[Key]:
        """Which of ``keys`` are stored already (one query per few thousand)."""
        found: set[Key] = set()
        listed = list(keys)
        for i in range(0, len(listed), KEYS_PER_QUERY):
            part = listed[i : i + KEYS_PER_QUERY]
            values = ", ".join(["(?, ?)"] * len(part))
            # A join from the keys (CROSS JOIN keeps that order), so each is
            # one lookup in the unique index; ``(a, b) IN (VALUES ...)``
            # would scan the whole index.
            rows = conn.execute(
                f"SELECT r.organization, r.report_id FROM (VALUES {values}) AS k "
                "CROSS JOIN report r ON r.organization = k.column1 AND r.report_id = k.column2",
                [text for key in part for text in key],
            )
            found.update(rows)
        return found

    def add_raw(
        self,
        conn: sqlite3.Connection,
        item: Received,
        outcome: str,
        reason: str = "",
        domains: Sequence[str] = (),
        report_row: int | None = None,
    ) -> int:
        """An input's ``raw`` row: its bytes (only the first ``HEAD_BYTES``
        where ``keeps_whole`` says so), how it came and what became of it."""
        env, data, received, size, sha256 = item
        whole = len(data) if size is None else size
        sha256 = sha256 or hashlib.sha256(data).hexdigest()
        if not keeps_whole(env.channel, outcome):
            data = data[:HEAD_BYTES]
        body, packed = compress(data)
        raw_row = self.pending.new_id(conn, "raw")
        self.pending.rows["raw"].append(
            (
                raw_row, received, env.channel, env.origin, int(env.verified), env.auth, outcome,
                reason, " ".join(domains), body, int(packed), report_row, whole, sha256,
                int(len(data) < whole),
            )
        )  # fmt: skip
        return raw_row

    def add_report(
        self,
        conn: sqlite3.Connection,
        item: Received,
        report: Report,
        ties: Sequence[Tie],
    ) -> str:
        """Store a parsed report (and its raw bytes); STORED or DUPLICATE."""
        return self.add_rows(conn, item, report_rows(report), ties)

    def add_rows(
        self,
        conn: sqlite3.Connection,
        item: Received,
        report: ReportRows,
        ties: Sequence[Tie],
        *,
        new: bool | None = None,
    ) -> str:
        """``add_report`` of a report already made into rows. ``new``: the
        caller knows whether its key is stored already (``known``)."""
        if new is None:
            new = not self.known(conn, [(report.organization, report.report_id)])
        if not new:
            return copies.another_copy(self, conn, item, report, ties)
        self.add_new(conn, item, report, ties)
        return STORED

    def add_new(
        self, conn: sqlite3.Connection, item: Received, report: ReportRows, ties: Sequence[Tie]
    ) -> None:
        """A report whose key is not stored yet, and its raw bytes."""
        env = item.envelope
        report_row = self.pending.new_id(conn, "report")
        self.pending.rows["report"].append(
            (
                report_row, report.organization, report.report_id, report.contact, report.start,
                report.end, item.received, env.channel, int(env.verified),
                " ".join(report.quirks),
            )
        )  # fmt: skip
        self.add_raw(conn, item, STORED, "", domains(report.policies), report_row)
        self.add_results(conn, report_row, report, ties, verified=env.verified)

    def add_results(
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
        pending = self.pending
        results, details = pending.rows["result"], pending.rows["detail"]
        flag = int(verified)
        for policy, tie in zip(report.policies, ties, strict=True):
            result_row = pending.new_id(conn, "result")
            results.append(
                (
                    result_row, report_row, policy.domain, report.start, flag,
                    policy.policy_type, policy.strings_json, policy.mx_json, policy.success,
                    policy.failure, tie.policy_id, tie.match,
                )
            )  # fmt: skip
            totals = pending.daily.setdefault((policy.domain, day, flag), [0, 0, 0])
            totals[0] += 1
            totals[1] += policy.success
            totals[2] += policy.failure
            for d in policy.details:
                key = (policy.domain, day, flag, d[0])
                pending.daily_failure[key] = pending.daily_failure.get(key, 0) + d[1]
                details.append((result_row, *d))

    def prune(self, now: float, keep_reports: float, keep_raw: float) -> tuple[int, int]:
        """``retention.prune`` in a transaction of its own."""
        with self.transaction() as conn:
            return retention.prune(conn, now, keep_reports, keep_raw)

    def raw_body(self, raw_id: int) -> bytes:
        """An input's bytes exactly as they were received (only the first
        ``HEAD_BYTES`` of one whose ``cut`` is set)."""
        row = self.conn.execute("SELECT body, packed FROM raw WHERE id = ?", (raw_id,)).fetchone()
        if row is None:
            raise StoreError(f"no raw input {raw_id}")
        return gzip.decompress(bytes(row[0])) if row[1] else bytes(row[0])

    def outcomes(self) -> dict[str, int]:
        rows = self.conn.execute("SELECT outcome, count(*) FROM raw GROUP BY outcome")
        return {str(outcome): int(n) for outcome, n in rows}
