"""Each served policy as a file that nginx serves by itself.

Any path that runs Python for every request reaches about a tenth of what
nginx does serving a file (docs/performance.md), so nginx answers
``GET``/``HEAD /.well-known/mta-sts.txt`` from ``<state_dir>/www/<host>``
(``nginx/policy-host-tenant.conf``, and the loopback listener `apply`
verifies through) and only passes a request to gunicorn when that file is
missing. The app stays the source of truth: these files are written from
the same snapshot the app serves, by the same compile
(``snapshot.compile_snapshot``: the gunicorn master, `reload`, `apply`).

Every file is replaced atomically (written under ``www/.tmp/``, then
renamed), so a request gets the old bytes or the new ones, whole. nginx
opens the file for every request (no ``open_file_cache``), so once the
rename is done every nginx worker serves the new bytes: what `apply`
verifies is what every sender gets (RFC 8461 section 8).

Only what changed since the previous snapshot is written. Before the first
change a marker (``www/.tmp/dirty``) is made durable; the compile removes it
after the snapshot is written. If a run dies in between, the next one finds
the marker and compares every file's bytes instead of trusting the previous
snapshot; so does a run without a previous snapshot.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from policy_host import fileio
from policy_host.fileio import LockHeld, fsync_dir, replace_file

log = logging.getLogger(__name__)

TMP = ".tmp"
DIRTY = "dirty"
LOCK = "lock"
# Seconds a compile waits for another one to finish (they take seconds).
LOCK_WAIT = 120.0
# Up to this many files written, each is fsynced; beyond, one sync() at the
# end is much cheaper than thousands of fsyncs.
FSYNC_EACH_UP_TO = 64
# Mode of the policy files: nginx's workers (www-data, a member of the
# service's group) read them; policies are public anyway.
FILE_MODE = 0o644


@dataclass
class SyncResult:
    written: int = 0
    removed: int = 0
    full: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.written or self.removed)


def _is_policy_file(name: str) -> bool:
    return not name.startswith(".")


def sync(
    www: Path, wanted: Mapping[str, bytes], previous: Mapping[str, bytes] | None, base: str = ""
) -> SyncResult:
    """Make ``www`` hold exactly one file per host in ``wanted``.

    ``previous`` is what the previous snapshot served (by host); None, or a
    dirty marker left by an interrupted run, means every file's bytes are
    compared. Call ``done(www)`` once the snapshot that matches ``wanted``
    is written. ``base``: the id of what was served before (the
    marker keeps it: ``dirty_base``).
    """
    tmp_dir = www / TMP
    tmp_dir.mkdir(parents=True, exist_ok=True)
    marker = tmp_dir / DIRTY
    result = SyncResult(full=previous is None or marker.exists())
    present = {name for name in os.listdir(www) if _is_policy_file(name)}
    removed = sorted(present - wanted.keys())
    if result.full:
        writes = [host for host, body in wanted.items() if _read(www / host) != body]
    else:
        assert previous is not None
        writes = [
            host
            for host, body in wanted.items()
            if host not in present or previous.get(host) != body
        ]
    if not writes and not removed:
        return result
    _mark_dirty(marker, tmp_dir, base)
    each = len(writes) <= FSYNC_EACH_UP_TO
    for host in writes:
        replace_file(
            www / host,
            wanted[host],
            tmp_dir=tmp_dir,
            mode=FILE_MODE,
            fsync=each,
            fsync_folder=False,
        )
    for host in removed:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(www / host)
    if not each:
        os.sync()
    fsync_dir(www)
    result.written, result.removed = len(writes), len(removed)
    log.info(
        "%s: wrote %d policy files, removed %d%s",
        www,
        result.written,
        result.removed,
        " (compared every file)" if result.full else "",
    )
    return result


def put(www: Path, changed: Mapping[str, bytes | None], base: str) -> SyncResult:
    """Write (or, for None, remove) just these hosts' files: a change
    compiled alone (``incremental``), which neither lists ``www`` nor
    compares the other files. The dirty marker is made first, as in
    ``sync`` (``base``: the id served before); call ``done(www)`` once the
    journal step is written."""
    tmp_dir = www / TMP
    tmp_dir.mkdir(parents=True, exist_ok=True)
    result = SyncResult()
    if not changed:
        return result
    _mark_dirty(tmp_dir / DIRTY, tmp_dir, base)
    for host, body in changed.items():
        if body is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(www / host)
                result.removed += 1
        else:
            replace_file(
                www / host, body, tmp_dir=tmp_dir, mode=FILE_MODE, fsync=True, fsync_folder=False
            )
            result.written += 1
    fsync_dir(www)
    return result


def read_policy(www: Path, host: str) -> bytes | None:
    """The bytes nginx serves for ``host`` (None: no file)."""
    try:
        with open(www / host, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def is_dirty(www: Path) -> bool:
    """Whether a compile died between its first file and its snapshot."""
    return (www / TMP / DIRTY).exists()


def dirty_base(www: Path) -> str | None:
    """``None`` when no compile died half way; else the id of what was
    served before the first that did (``""``: not known). Journal steps
    after it may be a dead compile's, which no snapshot has."""
    try:
        return (www / TMP / DIRTY).read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeError):
        return ""


@contextlib.contextmanager
def locked(www: Path, wait: float | None = None) -> Iterator[None]:
    """Hold ``www/.tmp/lock`` for a whole compile. Two at once (the
    server's own at start, an operator's `reload`, `apply`) would interleave
    their files, each writing what it read; the second waits its turn, for
    ``LOCK_WAIT`` seconds at most, then raises ``TimeoutError``."""
    path = www / TMP / LOCK
    with contextlib.ExitStack() as stack:
        try:
            wait = LOCK_WAIT if wait is None else wait
            stack.enter_context(fileio.locked(path, wait=wait, mode=FILE_MODE))
        except LockHeld:
            raise TimeoutError(f"{path}: another compile holds it") from None
        yield


def done(www: Path) -> None:
    """The snapshot matching the files is written: drop the dirty marker."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(www / TMP / DIRTY)


def _read(path: Path) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:
        return None


def _mark_dirty(marker: Path, tmp_dir: Path, base: str) -> None:
    if marker.exists():  # an earlier run's: its base is the one known good
        return
    fd = os.open(marker, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, base.encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(tmp_dir)
