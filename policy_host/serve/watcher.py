"""Make tenant file changes live as they are written: `policy-host watch`.

The kernel says which files in the tenants folder were written, renamed or
removed (inotify, through ``inotify_simple``: one watch on the folder,
whatever the number of files), and each batch of names is compiled alone
(``incremental``): with 1,000,000 tenants a change is served by nginx and
every worker within a few hundredths of a second of the file's close,
where a command started for it would spend longer importing Python.

A full compile (``compiler.compile_snapshot``) runs at start, whenever a
batch cannot be compiled alone, when the kernel's event queue overflowed
(events were lost), and every ``full_every`` seconds as a safety net: it
finds any change an event did not announce (a file system that sends none,
an edit while the watcher was down).

Only ``IN_CLOSE_WRITE`` and renames and removals count: a file is compiled
once it is written whole, not when it is created empty.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from inotify_simple import INotify, flags

from policy_host.errors import PolicyHostError
from policy_host.read.config import ProviderConfig
from policy_host.read.scan import SUFFIX
from policy_host.read.tenants import default_jobs
from policy_host.serve.compiler import compile_snapshot
from policy_host.serve.incremental import compile_changed

log = logging.getLogger(__name__)

WATCHED = flags.CLOSE_WRITE | flags.MOVED_TO | flags.MOVED_FROM | flags.DELETE
# The folder itself went away or was replaced: watch it again, compile whole.
GONE = flags.DELETE_SELF | flags.MOVE_SELF | flags.IGNORED
# After the first event, gather what follows this many milliseconds more
# (a `git checkout` writes many files in a burst) before compiling.
BATCH_MS = 5


@dataclass
class Batch:
    """What one read of the event queue asks for."""

    names: set[str] = field(default_factory=set)
    # Events were lost, or the folder was replaced: compile everything.
    full: bool = False


def batch_of(events: list[tuple[int, int, int, str]]) -> Batch:
    """The tenant file names in ``events`` (wd, mask, cookie, name)."""
    batch = Batch()
    for _wd, mask, _cookie, name in events:
        if mask & (flags.Q_OVERFLOW | GONE):
            batch.full = True
        elif name.endswith(SUFFIX) and not name.startswith("."):
            batch.names.add(name)
    return batch


@dataclass
class Watcher:
    """The loop of `policy-host watch` (``run``); ``clock`` and ``inotify``
    are passed in so tests can drive it."""

    config: ProviderConfig
    # Seconds between full compiles (the safety net).
    full_every: float
    clock: Callable[[], float] = time.monotonic
    inotify: INotify = field(default_factory=INotify)
    last_full: float = 0.0

    def watch_folder(self) -> None:
        self.inotify.add_watch(os.fspath(self.config.tenants_dir), WATCHED | GONE)

    def full(self) -> None:
        """Compile every tenant file (the safety net), in a forked child
        that leaves without freeing what it built (at 1,000,000 tenants
        freeing a full compile's objects one by one takes seconds, and
        events wait meanwhile); never raises."""
        self.last_full = self.clock()
        pid = os.fork()
        if pid == 0:  # the child: compile and leave, whatever happens
            status = 1
            try:
                compile_snapshot(self.config, jobs=default_jobs())
                status = 0
            except PolicyHostError as exc:
                log.error("full compile failed; still serving the previous policies: %s", exc)
            except BaseException:
                log.exception("full compile failed; still serving the previous policies")
            finally:
                logging.shutdown()
                os._exit(status)
        os.waitpid(pid, 0)

    def changed(self, names: set[str]) -> None:
        """Compile ``names`` alone, or everything when that is needed."""
        try:
            compiled = compile_changed(self.config, sorted(names))
        except PolicyHostError as exc:
            log.error("compiling %s failed: %s; compiling every file", ", ".join(names), exc)
            compiled = None
        if compiled is None:
            self.full()
            return
        for problem in compiled.result.problems:
            (log.error if problem.is_error else log.warning)("%s", problem)
        for domain in compiled.kept:
            log.warning("%s: file is broken; still serving its last good policy", domain)
        log.info("%d tenant files changed, %d policies", len(names), len(compiled.changed))

    def step(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for events and act on them."""
        events = self.inotify.read(timeout=max(0, int(timeout * 1000)), read_delay=BATCH_MS)
        if not events and self.clock() - self.last_full < self.full_every:
            return
        batch = batch_of(events)
        if batch.full:
            log.warning("the tenants folder was replaced or events were lost; compiling it all")
            if any(e[1] & GONE for e in events):
                self.watch_folder()
            self.full()
        elif batch.names:
            self.changed(batch.names)
        if self.clock() - self.last_full >= self.full_every:
            self.full()

    def run(self, stop: Callable[[], bool] = lambda: False) -> None:
        """Watch, then compile everything once, then act on each change
        until ``stop()`` (checked at least every second)."""
        self.watch_folder()  # first: nothing written after the compile is missed
        self.full()
        log.info("watching %s", self.config.tenants_dir)
        while not stop():
            left = self.full_every - (self.clock() - self.last_full)
            self.step(min(1.0, max(0.0, left)))
