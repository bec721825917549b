"""How long stored reports and other inputs are kept (``reports prune``)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from policy_host.reports.schema import DAY, STORED, StoreError
from policy_host.sqlitedb import reading


def prune(
    conn: sqlite3.Connection, now: float, keep_reports: float, keep_raw: float
) -> tuple[int, int]:
    """Drop reports received more than ``keep_reports`` seconds ago, and
    raw inputs that made no report more than ``keep_raw`` seconds ago, in
    the caller's write transaction. Returns (reports, raw rows) deleted."""
    old = "SELECT id FROM report WHERE received < ?"
    conn.execute(
        f"DELETE FROM detail WHERE result IN (SELECT id FROM result WHERE report IN ({old}))",
        (now - keep_reports,),
    )
    conn.execute(f"DELETE FROM result WHERE report IN ({old})", (now - keep_reports,))
    conn.execute("DELETE FROM raw WHERE outcome = ? AND received < ?", (STORED, now - keep_reports))
    reports = conn.execute("DELETE FROM report WHERE received < ?", (now - keep_reports,)).rowcount
    # Daily totals by report day: as old as what retention dropped.
    oldest = int((now - keep_reports) // DAY)
    conn.execute("DELETE FROM daily WHERE day < ?", (oldest,))
    conn.execute("DELETE FROM daily_failure WHERE day < ?", (oldest,))
    raws = conn.execute(
        "DELETE FROM raw WHERE outcome != ? AND received < ?", (STORED, now - keep_raw)
    ).rowcount
    return int(reports), int(raws)


def would_prune(path: Path, now: float, keep_reports: float, keep_raw: float) -> tuple[int, int]:
    """What ``prune`` would drop: (reports, raw rows), read without
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
