"""What one write transaction of the report store adds, held until it is
inserted together.

A report makes a ``report`` row, a ``raw`` row, a ``result`` row per policy
and a ``detail`` row per failure detail; a batch of files makes thousands. One ``executemany``
per table costs less than an ``execute`` per row, so the rows wait here,
with their ids given out in advance (the transaction holds the write lock
from its start, so nobody else takes one), and are inserted when the
transaction commits, or earlier when the store is about to read them. The
daily totals are gathered the same way: one upsert per tenant and day.
"""

from __future__ import annotations

import sqlite3
from typing import Any

REPORT_COLUMNS = (
    "id, organization, report_id, contact, start, end, received, channel, verified, quirks"
)
RAW_COLUMNS = (
    "id, received, channel, origin, verified, auth, outcome, reason, domains, body, packed, "
    "report, size, sha256, cut"
)
RESULT_COLUMNS = (
    "id, report, domain, start, verified, policy_type, policy_string, mx_host, success, "
    "failure, policy_id, policy_match"
)
DETAIL_COLUMNS = (
    "result, result_type, count, sending_mta_ip, receiving_mx_hostname, receiving_mx_helo, "
    "receiving_ip, additional_information, failure_reason_code"
)


def _insert(table: str, columns: str) -> str:
    marks = ", ".join("?" * (columns.count(",") + 1))
    return f"INSERT INTO {table} ({columns}) VALUES ({marks})"


_INSERTS = (
    ("report", _insert("report", REPORT_COLUMNS)),
    ("raw", _insert("raw", RAW_COLUMNS)),
    ("result", _insert("result", RESULT_COLUMNS)),
    ("detail", _insert("detail", DETAIL_COLUMNS)),
)


class Pending:
    """Rows and daily totals of the open transaction, not inserted yet."""

    def __init__(self) -> None:
        self.rows: dict[str, list[tuple[Any, ...]]] = {table: [] for table, _ in _INSERTS}
        self._next_id: dict[str, int] = {}
        self.daily: dict[tuple[str, int, int], list[int]] = {}
        self.daily_failure: dict[tuple[str, int, int, str], int] = {}

    def clear(self) -> None:
        for rows in self.rows.values():
            rows.clear()
        self._next_id.clear()
        self.daily.clear()
        self.daily_failure.clear()

    def new_id(self, conn: sqlite3.Connection, table: str) -> int:
        """The id the next row of ``table`` gets (as SQLite would give it)."""
        next_id = self._next_id.get(table)
        if next_id is None:
            (next_id,) = conn.execute(f"SELECT coalesce(max(id), 0) + 1 FROM {table}").fetchone()
        self._next_id[table] = next_id + 1
        return int(next_id)

    def flush(self, conn: sqlite3.Connection) -> None:
        """Insert the rows held (before anything reads those tables)."""
        for table, statement in _INSERTS:
            rows = self.rows[table]
            if rows:
                conn.executemany(statement, rows)
                rows.clear()

    def flush_daily(self, conn: sqlite3.Connection) -> None:
        """Add the daily totals gathered (one upsert per tenant and day,
        not per report)."""
        conn.executemany(
            "INSERT INTO daily VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET "
            "reports = reports + excluded.reports, success = success + excluded.success, "
            "failure = failure + excluded.failure",
            [(*key, *totals) for key, totals in self.daily.items()],
        )
        conn.executemany(
            "INSERT INTO daily_failure VALUES (?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET "
            "count = count + excluded.count",
            [(*key, count) for key, count in self.daily_failure.items()],
        )
        self.daily.clear()
        self.daily_failure.clear()
