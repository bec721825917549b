"""The status page's rows, kept current without making a request wait.

The first request builds the rows (nothing to show before that). After
that a request that finds a store changed, or the rows older than
``ttl`` (readiness depends on the time), starts one rebuild in a
background thread and is answered from the rows it has, marked as
refreshing; the next request after the rebuild sees the new rows. At
most one rebuild runs at a time, and its thread ends with it, so an idle
app holds no thread; ``stop`` waits for a running one.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from policy_host.read.config import ProviderConfig
from policy_host.status.index import Row, build_rows

log = logging.getLogger(__name__)

Build = Callable[[ProviderConfig, float], list[Row]]


@dataclass(frozen=True)
class Index:
    """The rows of one rebuild, and when the stores were read for it."""

    rows: list[Row]  # domain order
    by_domain: dict[str, Row]
    as_of: float


@dataclass(frozen=True)
class View:
    index: Index
    refreshing: bool  # a rebuild is running: newer figures are on the way


def signature(paths: Sequence[Path]) -> tuple[tuple[int, int], ...]:
    """What changes when a store is written (SQLite in WAL mode writes the
    ``-wal`` file first)."""
    found = []
    for path in paths:
        for p in (path, path.with_name(path.name + "-wal")):
            try:
                st = os.stat(p)
                found.append((st.st_mtime_ns, st.st_size))
            except FileNotFoundError:
                found.append((0, 0))
    return tuple(found)


class IndexCache:
    """The rows, rebuilt in the background when a store changes."""

    def __init__(
        self,
        config: ProviderConfig,
        clock: Callable[[], float],
        ttl: float = 300,
        build: Build = build_rows,
    ):
        self.config = config
        self.clock = clock
        self.ttl = ttl
        self._build = build
        self._paths = [config.state_db, config.results_db, config.reports_db, config.certs_db]
        self._lock = threading.Lock()  # guards the fields below
        self._first = threading.Lock()  # one first build, however many requests wait
        self._index: Index | None = None
        self._key: tuple[tuple[int, int], ...] | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False

    def view(self) -> View:
        """The rows to answer with, starting a rebuild if they are stale."""
        index = self._index
        if index is None:
            with self._first:
                if self._index is None:
                    self._rebuild()
            assert self._index is not None
            return View(self._index, self.refreshing)
        with self._lock:
            running = self._thread is not None
            stale = signature(self._paths) != self._key or self.clock() - index.as_of > self.ttl
            if stale and not running and not self._stopping:
                self._thread = threading.Thread(
                    target=self._refresh, name="policy-host-status-refresh", daemon=True
                )
                self._thread.start()
                running = True
        return View(index, running)

    @property
    def refreshing(self) -> bool:
        with self._lock:
            return self._thread is not None

    def row(self, domain: str) -> Row | None:
        """One tenant's row (a tenant page: no scan of 100,000 rows)."""
        return self.view().index.by_domain.get(domain)

    def stop(self, timeout: float | None = None) -> None:
        """Start no more rebuilds and wait for a running one to end."""
        with self._lock:
            self._stopping = True
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _refresh(self) -> None:
        try:
            self._rebuild()
        except Exception:  # the page keeps its rows; the next request retries
            log.exception("rebuilding the status rows failed")
        finally:
            with self._lock:
                self._thread = None

    def _rebuild(self) -> None:
        # Taken before reading: a write that lands during the rebuild makes
        # the next request start another one rather than go unseen.
        key = signature(self._paths)
        now = self.clock()
        rows = self._build(self.config, now)
        index = Index(rows, {r.domain: r for r in rows}, now)
        with self._lock:
            self._index, self._key = index, key
