"""What a web worker serves: the served-policy database, read per request.

A worker holds no policies of its own: each request is one point query on
the database ``store`` keeps beside the snapshot, through a read-only
connection of the request's thread, so a worker's memory does not grow
with the tenants and a starting worker reads nothing (docs/scaling.md).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from policy_host.errors import PolicyHostError
from policy_host.fileio import Identity, LockHeld, identity_if_readable
from policy_host.serve.journal import journal_path
from policy_host.serve.store import EVERY, HELD, LOOKUP, catch_up, database_path, open_reader

log = logging.getLogger(__name__)


# At most this many policies in a worker's cache (about 300 bytes each):
# memory stays flat however many tenants there are.
CACHE_ENTRIES = 10_000


class Policies(Protocol):
    """What the view, the fast path and the worker's report read."""

    @property
    def snapshot_id(self) -> str: ...

    @property
    def load_error(self) -> str | None: ...

    def get(self, host: str) -> bytes | None: ...


class FixedPolicies:
    """Policies given as a mapping (tests, benchmarks): never change."""

    def __init__(self, policies: Mapping[str, bytes]) -> None:
        self.policies = dict(policies)
        self.snapshot_id = ""
        self.load_error: str | None = None

    def get(self, host: str) -> bytes | None:
        return self.policies.get(host)


class _Connection(threading.local):
    """One thread's read-only connection and the database it opened."""

    conn: sqlite3.Connection | None = None
    generation = -1


class PolicyTable:
    """``mta-sts.<domain>`` -> bytes, read from the database beside the
    snapshot at ``path``.

    A watcher thread (``watch``) looks at the identity of the snapshot and
    of its change journal every ``interval`` seconds, and when either
    changed brings the database up to them (``store.catch_up``: whoever
    wrote them normally has, so this finds nothing to do; a serving node
    has no compiler, and there the first worker to look does it). A step
    is one transaction, so a request sees the old policies or the new ones,
    never a mix. When a new database was built (it is a new file) every
    thread opens it at its next request. No worker restarts for a change.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.journal_path = journal_path(path)
        self.database = database_path(path)
        self._local = _Connection()
        # Which database the threads should have open; bumped when the
        # link names another one.
        self._generation = 0
        self._target = _link_target(self.database)
        self._stamps: tuple[Identity | None, Identity | None] | None = None
        self._failed: object = None
        # Why the snapshot on disk could not be served (None: it is).
        self.load_error: str | None = None
        self._seen = ""  # the id of no database at all
        # Policies this worker answered since the snapshot it last saw
        # (``_look``): a popular tenant costs a dict lookup, not a query.
        self._cache: dict[str, bytes] = {}
        # Seconds between looks, once ``watch`` runs.
        self.watch_interval: float | None = None
        self._stopping = threading.Event()
        self._unreadable: object = None

    def get(self, host: str) -> bytes | None:
        # Captured before the query: when the watcher swaps in an empty
        # cache (a new snapshot), bytes read before the swap go into the
        # old one, which nothing reads any more.
        cache = self._cache
        body = cache.get(host)
        if body is not None:
            return body
        local = self._local
        if local.generation == self._generation and local.conn is not None:
            try:
                rows = local.conn.execute(LOOKUP, (host,)).fetchall()
            except sqlite3.Error:
                rows = self._query(LOOKUP, (host,))
        else:
            rows = self._query(LOOKUP, (host,))
        if not rows:
            return None
        body = bytes(rows[0][0])
        if len(cache) >= CACHE_ENTRIES:
            cache.clear()
        cache[host] = body
        return body

    @property
    def snapshot_id(self) -> str:
        """The snapshot the database this thread reads holds ("" when there
        is none yet): what the worker serves, and says it serves. Reading it
        empties the cache when the snapshot is another than at the last
        look, so no request answers from an older one once it is told."""
        return self._look()[0]

    def _look(self) -> tuple[str, bool]:
        """The snapshot the database holds, and whether it is another than
        at the last look (then the cache starts anew)."""
        rows = self._query(HELD, ())
        held = str(rows[0][0]) if rows else ""
        if held == self._seen:
            return held, False
        self._cache = {}
        self._seen = held
        log.info("serving snapshot %s", held)
        return held, True

    @property
    def policies(self) -> dict[str, bytes]:
        """Every policy served (reads them all: for tests and tools; a
        request reads one)."""
        return dict(self._query(EVERY, ()))

    def _query(self, sql: str, args: tuple[str, ...]) -> list[Any]:
        """``sql`` on this thread's connection, (re)opened if it is not to
        the current database or failed; [] when it cannot be read."""
        local = self._local
        error: sqlite3.Error | None = None
        for attempt in range(2):
            try:
                if local.conn is None or local.generation != self._generation or attempt:
                    self._reopen(local)
                assert local.conn is not None
                return local.conn.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                error = exc
        target = _link_target(self.database)
        if target != self._unreadable:
            self._unreadable = target
            log.error("%s: cannot read the served-policy database: %s", self.database, error)
        return []

    def _reopen(self, local: _Connection) -> None:
        if local.conn is not None:
            local.conn.close()
            local.conn = None
        local.generation = self._generation
        local.conn = open_reader(self.database)

    def refresh(self) -> bool:
        """Catch up with the snapshot and journal if either changed; True
        when the snapshot served is another than at the last look."""
        stamps = (identity_if_readable(self.path), identity_if_readable(self.journal_path))
        if stamps != self._stamps:
            try:
                catch_up(self.path)
            except LockHeld:
                pass  # another process is at it: look again next time
            except PolicyHostError as exc:
                # Keep the old stamps so the next look tries again: a worker
                # that gave up here would serve old bytes under a newly
                # published id (`apply` asks every worker, SNAPSHOT_PATH).
                self.load_error = str(exc)
                if stamps != self._failed:
                    log.error(
                        "%s; still serving the previous policies, and apply will publish "
                        "nothing until this worker can serve the new ones",
                        exc,
                    )
                    self._failed = stamps
            else:
                self._stamps, self.load_error = stamps, None
        target = _link_target(self.database)
        if target != self._target:
            self._target = target
            self._generation += 1
        return self._look()[1]

    def watch(self, interval: float) -> threading.Thread:
        """Refresh now, then every ``interval`` seconds, in a daemon thread,
        until ``stop_watching`` (a worker's ends with its process)."""
        self.watch_interval = interval
        stopping = self._stopping

        def loop() -> None:
            while True:
                try:
                    self.refresh()
                except Exception:  # never let the watcher die
                    log.exception("snapshot watcher failed")
                if stopping.wait(interval):
                    return

        thread = threading.Thread(target=loop, name="policy-host-snapshot-watcher", daemon=True)
        thread.start()
        return thread

    def stop_watching(self) -> None:
        """End the watcher thread at its next look."""
        self._stopping.set()


def _link_target(link: Path) -> str | None:
    """Which database ``link`` names (None: none, or not a link)."""
    try:
        return os.readlink(link)
    except OSError:
        return None
