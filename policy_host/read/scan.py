"""Look at the tenants folder: which tenant files exist, and their identities.

With 100,000 tenants a look at the folder takes a few tenths of a second,
as does reading the parse cache; with a large cache the two run side by
side, the look in a forked child (``list_beside``). A command that reads
the served snapshot before it compiles (`reload`) starts the look even
earlier (``ScanAhead``), and the load takes it up.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from policy_host.fileio import Identity, identity, identity_if_readable

log = logging.getLogger(__name__)

SUFFIX = ".yaml"

# Tenant file names in order, each with its identity (None when it vanished
# or cannot be looked at, or when identities were not asked for).
Listing = list[tuple[str, Identity | None]]
# Waits for a listing made in a child.
Scanned = Callable[[], Listing]


def list_folder(folder: Path, identities: bool = True) -> Listing:
    """The tenant files in ``folder``; raises OSError if it cannot be listed."""
    # listdir and a stat relative to the open folder: with 100,000 files this
    # takes half the time of os.scandir and DirEntry.stat.
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        names = sorted(n for n in os.listdir(fd) if n.endswith(SUFFIX) and not n.startswith("."))
        if not identities:
            return [(name, None) for name in names]
        found: Listing = []
        stat = os.stat
        for name in names:
            try:
                st = stat(name, dir_fd=fd)
            except OSError:  # reading it will say why
                found.append((name, None))
                continue
            found.append((name, identity(st)))
        return found
    finally:
        os.close(fd)


def list_beside(folder: Path) -> Scanned:
    """Start ``list_folder(folder)`` in a forked child; the returned function
    waits for its result (and raises the child's OSError). Only called where
    no other thread runs. If the child fails otherwise, the folder is listed
    here."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: list, send, and leave without cleaning up
        try:
            os.close(read_end)
            try:
                outcome: object = list_folder(folder)
            except OSError as exc:
                outcome = exc
            with os.fdopen(write_end, "wb") as pipe:
                pipe.write(pickle.dumps(outcome, pickle.HIGHEST_PROTOCOL))
        finally:
            os._exit(0)
    os.close(write_end)

    def result() -> Listing:
        with os.fdopen(read_end, "rb") as pipe:
            data = pipe.read()
        os.waitpid(pid, 0)
        try:
            # Our own child's bytes, over a pipe only it and we hold.
            outcome = pickle.loads(data)
        except Exception:  # the child died before it sent anything
            log.warning("scanning %s in a second process failed; scanning it here", folder)
            return list_folder(folder)
        if isinstance(outcome, OSError):
            raise outcome
        found: Listing = outcome
        return found

    return result


def reap(scanned: Scanned) -> None:
    """Wait for a child whose listing is not wanted."""
    with contextlib.suppress(Exception):
        scanned()


@dataclass(frozen=True)
class ScanAhead:
    """A listing of ``folder`` started early in a child, for one later load."""

    folder: Path
    started_ns: int  # time.time_ns() when it began
    result: Scanned
    # The identity then of the folder holding the snapshot and its change
    # journal: if another compile replaces either before the load (a
    # change compiled alone writes only the journal), the listing may miss
    # what that compile served (a file made since) or bring back what it
    # dropped, so it is not used. (Anything else renamed there only costs
    # a second look.)
    snapshot: Path
    snapshot_identity: Identity | None

    @classmethod
    def start(cls, folder: Path, snapshot: Path) -> ScanAhead:
        """Only called where no other thread runs (it forks)."""
        snapshot_identity = identity_if_readable(snapshot.parent)
        started = time.time_ns()
        return cls(folder, started, list_beside(folder), snapshot, snapshot_identity)

    def usable(self) -> bool:
        """Whether no compile replaced the snapshot since; if one did, the
        child is reaped."""
        if identity_if_readable(self.snapshot.parent) == self.snapshot_identity:
            return True
        log.info("another compile ran since the tenants folder was looked at; looking again")
        reap(self.result)
        return False
