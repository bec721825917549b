"""SQLite as every store here uses it: one shape of write transaction and
one way to open a database only to read it."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

# Seconds a connection waits for another process's write to finish.
BUSY_TIMEOUT = 10.0


@contextlib.contextmanager
def reading(path: Path) -> Iterator[sqlite3.Connection | None]:
    """A read-only connection (``mode=ro``: never creates the file), or
    ``None`` when there is no database yet. ``sqlite3.Error`` passes
    through for the caller to name its store."""
    if not path.exists():
        yield None
        return
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT)
    try:
        yield conn
    finally:
        conn.close()


@contextlib.contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``; rolled back on any error.

    SQLite may have rolled back by itself already (SQLITE_FULL when the
    disk is full): ROLLBACK's own error ("no transaction is active") must
    not hide the one that did it.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise
