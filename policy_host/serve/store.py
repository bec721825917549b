"""The served policies as a database the web workers read, one row a host.

The snapshot and its change journal (``snapshot``, ``journal``) stay what
a compile writes and what is pushed to the serving nodes; this database is
made from them, beside the snapshot (``served.sqlite3``), so that a worker
reads the one policy a request asks for instead of holding every policy
in a table of its own (at 1,000,000 tenants such a table was 290-350 MiB a
worker, and reading the snapshot into it at start took seconds). The pages
stay in the kernel's page cache, which every worker shares.

``catch_up`` brings the database to what is served (``snapshot.served_id``):
the journal's steps from the id it holds, in one transaction, so a request
sees the policies before a step or after it, never a mix (WAL mode: readers
never wait for the writer). When the journal does not lead there from that
id, or there is no database, or it cannot be read, a new one is built from
the snapshot and put in place; readers keep the one they have open until
they reopen (``table.PolicyTable`` does at its next look).

Each database built is a file of its own in ``served.db/`` and
``served.sqlite3`` is a symbolic link to the current one, replaced by
rename: SQLite finds a WAL database's ``-wal`` and ``-shm`` files by the
database's name, so a new file renamed over an old name would be read with
the old file's log. Catch-ups are taken one at a time (a lock in
``served.db/``); the held id is read again inside the write transaction.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from policy_host.errors import PolicyHostError
from policy_host.fileio import LockHeld, fsync_dir, locked
from policy_host.serve.journal import Journal, Step, journal_path, read_journal
from policy_host.serve.snapshot import served_rows, snapshot_id
from policy_host.sqlitedb import BUSY_TIMEOUT, immediate

log = logging.getLogger(__name__)

FORMAT = 1
DATABASE_NAME = "served.sqlite3"
FOLDER_NAME = "served.db"
LOCK_NAME = "lock"
SUFFIX = ".sqlite3"
# Seconds the writer of a snapshot waits for another process's catch-up
# (a rebuild of 1,000,000 rows takes seconds) before leaving it to the
# workers, whose watchers catch up too.
WRITER_WAIT = 60.0
# Pages (KiB when negative) of SQLite's cache while a database is built:
# rows go in in key order, so only the rightmost path of the tree is hot.
BUILD_CACHE = -16384

LOOKUP = "SELECT body FROM policy WHERE host = ?"
HELD = "SELECT value FROM meta WHERE name = 'snapshot'"
EVERY = "SELECT host, body FROM policy ORDER BY host"
_SCHEMA = (
    "CREATE TABLE policy (host TEXT PRIMARY KEY, body BLOB NOT NULL) WITHOUT ROWID",
    "CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    f"PRAGMA user_version = {FORMAT}",
)
_PUT = "INSERT OR REPLACE INTO policy (host, body) VALUES (?, ?)"
_DROP = "DELETE FROM policy WHERE host = ?"
_SET_HELD = "INSERT OR REPLACE INTO meta (name, value) VALUES ('snapshot', ?)"


def database_path(snapshot_path: Path) -> Path:
    """The link to the current database, beside the snapshot."""
    return snapshot_path.with_name(DATABASE_NAME)


def open_reader(database: Path) -> sqlite3.Connection:
    """A read-only connection to the database ``database`` links to
    (``sqlite3.Error`` when there is none or it cannot be opened). A
    connection is for one thread; SQLite keeps its prepared statements
    (``LOOKUP``) for the next call."""
    real = Path(os.path.realpath(database))
    return sqlite3.connect(
        f"{real.as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT, isolation_level=None
    )


@dataclass(frozen=True)
class CaughtUp:
    """What ``catch_up`` found and did."""

    id: str  # the snapshot the database holds now
    steps: int = 0  # journal steps applied
    built: bool = False  # a new database was built from the snapshot


def catch_up(
    snapshot_path: Path,
    *,
    wait: float = 0.0,
    served: tuple[Mapping[str, bytes], str] | None = None,
) -> CaughtUp | None:
    """Bring the database beside ``snapshot_path`` to what is served.

    ``None`` when there is no snapshot, or when another user owns the
    database (root running a command by hand: the files it made there
    would be root's, and the server could not write them again; the
    workers catch up themselves). ``served``: the snapshot just written,
    as ``(mta-sts.<domain> -> body, id)``, used instead of reading the file
    when a database must be built. Raises ``LockHeld`` when another process
    is catching up for longer than ``wait`` seconds, ``PolicyHostError``
    when the snapshot or the database cannot be read or written (the
    database keeps what it held).
    """
    folder = snapshot_path.with_name(FOLDER_NAME)
    link = database_path(snapshot_path)
    try:
        # The state folder's owner while there is no database yet.
        owner = (folder if folder.exists() else folder.parent).stat().st_uid
    except OSError as exc:
        raise PolicyHostError(
            f"{folder}: cannot look at the served-policy database: {exc}"
        ) from exc
    if owner != os.geteuid():
        log.warning("%s is another user's; its owner's workers bring it up to date", folder)
        return None
    try:
        with locked(folder / LOCK_NAME, wait=wait):
            return _catch_up(snapshot_path, link, folder, served)
    except LockHeld:
        raise
    except (sqlite3.Error, OSError) as exc:
        raise PolicyHostError(
            f"{link}: cannot bring the served-policy database up to date: {exc}"
        ) from exc


def keep_up(snapshot_path: Path, served: tuple[Mapping[str, bytes], str] | None = None) -> None:
    """``catch_up`` for whoever just wrote the snapshot or its journal;
    never raises: what it could not do, the workers' watchers do
    (``table.PolicyTable.refresh``), and until then they say which
    snapshot they serve (`apply` waits for it)."""
    try:
        done = catch_up(snapshot_path, wait=WRITER_WAIT, served=served)
    except LockHeld:
        log.warning("another process is updating the served-policy database; left to it")
    except PolicyHostError as exc:
        log.error("%s; the workers will try again", exc)
    else:
        if done is not None and (done.steps or done.built):
            how = "built" if done.built else f"{done.steps} journal steps applied"
            log.debug("served-policy database at snapshot %s (%s)", done.id, how)


def _catch_up(
    path: Path, link: Path, folder: Path, served: tuple[Mapping[str, bytes], str] | None
) -> CaughtUp | None:
    on_disk = snapshot_id(path)
    if on_disk is None:
        return None
    journal = _journal(path)
    lead = journal.since(on_disk) if journal is not None else None
    target = lead[-1].id if lead else on_disk
    conn = _open_writer(link)
    if conn is not None:
        with contextlib.closing(conn), immediate(conn):
            held = _held(conn)
            if held == target:
                return CaughtUp(target)
            steps = _steps_to(journal, held, target)
            if steps is not None:
                _apply(conn, steps)
                return CaughtUp(target, len(steps))
    return _rebuild(path, link, folder, served)


def _journal(path: Path) -> Journal | None:
    """The change journal; None if there is none or it cannot be read (a
    shortcut only: the database is then built from the snapshot)."""
    try:
        return read_journal(journal_path(path))
    except PolicyHostError as exc:
        log.warning("%s; building the served-policy database from the snapshot", exc)
        return None


def _open_writer(link: Path) -> sqlite3.Connection | None:
    """A connection to the current database, None when there is none or
    it is not one of ours (then one is built)."""
    real = Path(os.path.realpath(link))
    if not real.is_file():
        return None
    conn = sqlite3.connect(
        f"{real.as_uri()}?mode=rw", uri=True, timeout=BUSY_TIMEOUT, isolation_level=None
    )
    try:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version != FORMAT:
            raise sqlite3.DatabaseError(f"format {version}, not {FORMAT}")
        _held(conn)
    except sqlite3.Error as exc:
        conn.close()
        log.warning("%s: %s; building it again", real, exc)
        return None
    return conn


def _held(conn: sqlite3.Connection) -> str | None:
    row = conn.execute(HELD).fetchone()
    return str(row[0]) if row is not None else None


def _steps_to(journal: Journal | None, held: str | None, target: str) -> list[Step] | None:
    """The journal's steps from ``held`` to ``target``; None when it does
    not lead there."""
    if journal is None or held is None:
        return None
    steps = journal.since(held)
    made = [step.id for step in steps or ()]
    return steps[: made.index(target) + 1] if steps and target in made else None


def _apply(conn: sqlite3.Connection, steps: Sequence[Step]) -> None:
    for step in steps:
        conn.executemany(_PUT, step.put.items())
        conn.executemany(_DROP, ((host,) for host in step.drop))
    conn.execute(_SET_HELD, (steps[-1].id,))


def _rebuild(
    path: Path, link: Path, folder: Path, served: tuple[Mapping[str, bytes], str] | None
) -> CaughtUp | None:
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{secrets.token_hex(8)}{SUFFIX}"
    new = folder / name
    try:
        with _rows_of(path, served) as found:
            if found is None:
                return None
            built, rows = found
            steps = _fill(new, built, rows, path)
        tmp = link.with_name(f".{link.name}.{secrets.token_hex(4)}")
        os.symlink(f"{FOLDER_NAME}/{name}", tmp)
        os.replace(tmp, link)
        fsync_dir(link.parent)
    except BaseException:
        _remove(folder, name)
        raise
    _remove_others(folder, keep=name)
    held = steps[-1].id if steps else built
    log.info("built the served-policy database for snapshot %s", held)
    return CaughtUp(held, len(steps), built=True)


@contextlib.contextmanager
def _rows_of(
    path: Path, served: tuple[Mapping[str, bytes], str] | None
) -> Iterator[tuple[str, Iterable[tuple[str, bytes]]] | None]:
    """The snapshot's id and rows: ``served`` when it is the snapshot on
    disk, else the file, a line at a time."""
    if served is not None and served[1] == snapshot_id(path):
        yield served[1], served[0].items()
        return
    with served_rows(path) as found:
        yield found


def _fill(new: Path, built: str, rows: Iterable[tuple[str, bytes]], path: Path) -> list[Step]:
    """Write ``rows`` (the snapshot ``built``) and the journal's steps
    since it into the new database ``new``; returns the steps."""
    conn = sqlite3.connect(new, isolation_level=None)
    with contextlib.closing(conn):
        # No rollback journal while it is made: a failed build is removed.
        conn.execute("PRAGMA journal_mode = OFF")
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute(f"PRAGMA cache_size = {BUILD_CACHE}")
        for statement in _SCHEMA:
            conn.execute(statement)
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO policy (host, body) VALUES (?, ?)", rows)
        conn.execute(_SET_HELD, (built,))
        journal = _journal(path)
        steps = (journal.since(built) if journal is not None else None) or []
        if steps:
            _apply(conn, steps)
        conn.execute("COMMIT")
        conn.execute("PRAGMA journal_mode = WAL")
    fd = os.open(new, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return steps


def _remove_others(folder: Path, keep: str) -> None:
    """Remove every database but ``keep``. Each is checkpointed first: a
    reader that opened one just before has everything in the file itself,
    should it find the log gone."""
    for entry in os.listdir(folder):
        if entry.endswith(SUFFIX) and entry != keep:
            with contextlib.suppress(sqlite3.Error, OSError):
                conn = sqlite3.connect(folder / entry, timeout=1.0, isolation_level=None)
                with contextlib.closing(conn):
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            _remove(folder, entry)
        elif not entry.startswith(keep) and entry != LOCK_NAME and SUFFIX in entry:
            _remove(folder, entry[: entry.index(SUFFIX) + len(SUFFIX)])


def _remove(folder: Path, name: str) -> None:
    for tail in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(folder / f"{name}{tail}")
