"""The apply state opened for writing (`apply` only, under its lock)."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from policy_host.sqlitedb import BUSY_TIMEOUT, immediate
from policy_host.state.rows import (
    ACTIVE,
    CHANGE,
    DELETE,
    GONE,
    HISTORY_KEEP,
    MIGRATIONS,
    NEW,
    PUBLISHED,
    RECORDED,
    SCHEMA,
    SCHEMA_VERSION,
    SERVED,
    SERVED_KEEP,
    STEPS,
    UNPUBLISHED,
    WITHDRAW,
    WITHDRAWING,
    Pending,
    Record,
    StateError,
    record_of,
    records_of,
    user_version,
)


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
                self._migrate(user_version(self._conn, path))
        except sqlite3.Error as exc:
            raise StateError(f"{path}: cannot open the apply state: {exc}") from exc

    def _migrate(self, version: int) -> None:
        """Bring the schema from ``version`` to ``SCHEMA_VERSION`` (inside
        the opening transaction: all of it or nothing)."""
        if version == SCHEMA_VERSION:
            return
        # One statement at a time: executescript() would commit.
        statements = list(SCHEMA) if version == 0 else []
        for step in range(max(version, 1) + 1, SCHEMA_VERSION + 1):
            statements.extend(MIGRATIONS[step])
        for statement in statements:
            self._conn.execute(statement)
        self._conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        try:
            with immediate(self._conn) as conn:
                yield conn
        except sqlite3.Error as exc:
            raise StateError(f"{self.path}: cannot write the apply state: {exc}") from exc

    def records(self) -> dict[str, Record]:
        try:
            return records_of(self._conn)
        except sqlite3.Error as exc:
            raise StateError(f"{self.path}: cannot read the apply state: {exc}") from exc

    def records_for(self, domains: Iterable[str]) -> dict[str, Record]:
        """``records()`` of these domains only (`apply --changed`)."""
        try:
            found = (record_of(self._conn, domain) for domain in sorted(set(domains)))
            return {record.domain: record for record in found if record is not None}
        except sqlite3.Error as exc:
            raise StateError(f"{self.path}: cannot read the apply state: {exc}") from exc

    def tlsrpt_values(self, domains: Iterable[str] | None = None) -> dict[str, bytes]:
        """Domain -> the hosted TLS-RPT value published for it (of
        ``domains`` only, when given)."""
        query = "SELECT domain, tlsrpt FROM tenant WHERE tlsrpt IS NOT NULL"
        try:
            if domains is None:
                rows = self._conn.execute(query).fetchall()
            else:
                rows = [
                    row
                    for domain in sorted(set(domains))
                    for row in self._conn.execute(query + " AND domain = ?", (domain,))
                ]
        except sqlite3.Error as exc:
            raise StateError(f"{self.path}: cannot read the apply state: {exc}") from exc
        return {str(domain): bytes(value) for domain, value in rows}

    def set_tlsrpt(self, values: Mapping[str, bytes | None]) -> None:
        """Record the hosted TLS-RPT values published (None: deleted)."""
        with self._transaction() as conn:
            conn.executemany(
                "UPDATE tenant SET tlsrpt = ? WHERE domain = ?",
                [(value, domain) for domain, value in values.items()],
            )

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
                if step == SERVED:
                    _served_version(conn, domain, now, committed=False)
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
                record = record_of(conn, domain)
                pending = record.pending if record else None
                if record is None or pending is None:
                    continue
                _served_version(conn, domain, now, committed=True)
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
            conn.execute(
                "DELETE FROM served WHERE replaced_at IS NOT NULL AND replaced_at < ?",
                (now - SERVED_KEEP,),
            )


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


def _served_version(conn: sqlite3.Connection, domain: str, now: float, *, committed: bool) -> None:
    """Keep the ``served`` table (``state.served_versions``) in step with a
    pending change being served (``committed`` False) or committed: the
    version's row, and, once committed, every other version of the domain
    marked replaced. A deletion replaces the last one and adds none."""
    row = conn.execute(
        "SELECT pending_kind, pending_id, pending_fingerprint, pending_max_age, "
        "COALESCE(pending_served_at, ?) FROM tenant WHERE domain = ? "
        "AND pending_kind IS NOT NULL",
        (now, domain),
    ).fetchone()
    if row is None:
        return
    kind, policy_id, fp, max_age, served_at = row
    if kind != DELETE:
        conn.execute(
            "INSERT INTO served (domain, fingerprint, policy_id, max_age, first_served, "
            "last_committed, replaced_at) VALUES (?, ?, ?, ?, ?, ?, NULL) "
            "ON CONFLICT (domain, fingerprint) DO UPDATE SET policy_id = excluded.policy_id, "
            "max_age = excluded.max_age, replaced_at = NULL, "
            "last_committed = COALESCE(excluded.last_committed, last_committed)",
            (domain, fp, policy_id, max_age, served_at, now if committed else None),
        )
    if committed:
        conn.execute(
            "UPDATE served SET replaced_at = ? WHERE domain = ? AND replaced_at IS NULL "
            "AND (fingerprint != ? OR ?)",
            (now, domain, fp, kind == DELETE),
        )
