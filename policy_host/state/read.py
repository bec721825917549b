"""Read-only access to the apply state (the snapshot compiler in the
gunicorn master, `check`, `zone`, `show`): the database is never created."""

from __future__ import annotations

import contextlib
import sqlite3
import urllib.parse
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

from policy_host.sqlitedb import BUSY_TIMEOUT
from policy_host.state.rows import (
    ACTIVE,
    SERVED_FROM_HISTORY,
    SERVED_SINCE,
    TLSRPT_SINCE,
    WITHDRAWING,
    HistoryEntry,
    Record,
    ServedVersion,
    StateError,
    records_of,
    user_version,
)


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
        if user_version(conn, path) == 0:
            # Created but never initialised (a crash in the very first
            # transaction): nothing was ever committed.
            yield None
            return
        yield conn
    except sqlite3.Error as exc:
        raise StateError(f"{path}: cannot read the apply state: {exc}") from exc
    finally:
        conn.close()


class _WithStateDb(Protocol):
    @property
    def state_db(self) -> Path: ...


def published_ids(db: Path | _WithStateDb) -> dict[str, str]:
    """Domain -> the id `apply` last published *and* confirmed at the primary.

    ``db``: the database, or anything that names it as ``state_db`` (the
    provider config). Read-only: returns ``{}`` when there is no state yet
    and never creates the database. Tenants being withdrawn are included (their TXT carries
    the id of the ``mode: none`` policy); withdrawn ones are not.
    """
    with _read_only(db if isinstance(db, Path) else db.state_db) as conn:
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
        return records_of(conn)


def fallback_policies(path: Path, domains: Iterable[str] | None = None) -> dict[str, bytes]:
    """What a tenant *without a file* is served, by domain.

    A tenant being withdrawn is served its ``mode: none`` policy; a tenant
    whose file was removed but that `apply` has not withdrawn yet keeps its
    last published policy. Where a change is pending its bytes win: its id
    may already be in DNS, and a sender that sees an id must get that id's
    policy or a newer one (RFC 8461 section 8). The snapshot compiler uses
    this only for domains that have no tenant file. ``domains``: only
    these (a change compiled alone asks for its few, not every tenant).
    """
    # One lean query rather than read_records(): every compile (each reload,
    # the server starting) asks, and with 100,000 tenants building a Record
    # for each costs more than the rest of the compile.
    query = (
        "SELECT domain, CASE WHEN pending_kind IS NOT NULL THEN pending_body ELSE body END "
        "FROM tenant WHERE (pending_kind IS NOT NULL "
        "OR (status IN (?, ?) AND body IS NOT NULL))"
    )
    with _read_only(path) as conn:
        if conn is None:
            return {}
        if domains is None:
            rows = conn.execute(query + " ORDER BY domain", (ACTIVE, WITHDRAWING)).fetchall()
        else:
            rows = []
            for domain in sorted(set(domains)):
                rows += conn.execute(
                    query + " AND domain = ?", (ACTIVE, WITHDRAWING, domain)
                ).fetchall()
    return {str(domain): bytes(body) for domain, body in rows if body is not None}


def hosted_tlsrpt(path: Path) -> dict[str, bytes]:
    """Domain -> the hosted ``_smtp._tls`` TXT value `apply` published
    (``<domain>.<tlsrpt.zone>``); ``{}`` when there is none yet."""
    with _read_only(path) as conn:
        if conn is None or user_version(conn, path) < TLSRPT_SINCE:
            return {}
        rows = conn.execute(
            "SELECT domain, tlsrpt FROM tenant WHERE tlsrpt IS NOT NULL ORDER BY domain"
        ).fetchall()
    return {str(domain): bytes(value) for domain, value in rows}


def served_versions(path: Path) -> list[ServedVersion]:
    """Every policy version served per domain, with its id, max_age, and
    when it was first served, last committed and replaced (by domain, oldest
    first); ``[]`` when
    there is no state. A state `apply` has not migrated yet is read from
    its history (as the migration would fill the table)."""
    with _read_only(path) as conn:
        if conn is None:
            return []
        if user_version(conn, path) >= SERVED_SINCE:
            query = (
                "SELECT domain, fingerprint, policy_id, max_age, first_served, "
                "last_committed, replaced_at FROM served"
            )
        else:
            query = SERVED_FROM_HISTORY
        rows = conn.execute(query).fetchall()
    versions = [ServedVersion(*row) for row in rows]
    return sorted(versions, key=lambda v: (v.domain, v.first_served))


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
