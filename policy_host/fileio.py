"""Files the control plane shares: atomic replacement, identities, the lock.

Every file the control plane writes for others to read (the snapshot and
its journal, each policy file nginx serves, nginx's generated config, the
parse cache) is replaced atomically: written to a temporary file on the
same file system, then renamed over the old one, so readers see the old
file or the new one, whole. Runs that must not overlap (`apply`, a compile,
the nginx config) each hold a ``locked`` file while they work.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from policy_host.errors import PolicyHostError

# Seconds between attempts while waiting for a held lock.
LOCK_POLL = 0.05


def replace_file(
    path: Path,
    data: bytes,
    *,
    tmp_dir: Path | None = None,
    mode: int | None = None,
    fsync: bool = True,
    fsync_folder: bool = True,
) -> None:
    """Write ``data`` to ``path`` atomically.

    ``tmp_dir``: where the temporary file is made (the same file system as
    ``path``; its folder by default, which is made if missing). ``mode``:
    the file's permissions (``mkstemp``'s 0600 otherwise). ``fsync``: the
    bytes are on disk before the rename; ``fsync_folder``: so is the rename,
    once done (callers replacing many files in one folder sync it once, with
    ``fsync_dir``). Without either, a crash may leave the old file, the new
    one, or (rarely) an empty one: fine for what can be rebuilt.
    """
    if tmp_dir is None:
        tmp_dir = path.parent
        tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=tmp_dir)
    try:
        with os.fdopen(fd, "wb") as handle:
            if mode is not None:
                os.fchmod(handle.fileno(), mode)
            handle.write(data)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if fsync_folder:
        fsync_dir(path.parent)


# (size, mtime_ns, ctime_ns, inode, device): a file replaced by
# ``replace_file`` always gets a new one, and so does a file rewritten in
# place (ctime_ns cannot be set from user space).
Identity = tuple[int, int, int, int, int]


def identity(st: os.stat_result) -> Identity:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def file_identity(path: Path) -> Identity | None:
    """The ``identity`` of ``path``; None if it does not exist."""
    try:
        return identity(os.stat(path))
    except FileNotFoundError:
        return None


def identity_if_readable(path: Path) -> Identity | None:
    """``file_identity``, or None also when the file cannot be looked at
    (whoever reads it says why)."""
    try:
        return file_identity(path)
    except OSError:
        return None


def fsync_dir(path: Path) -> None:
    """Make the renames and removals done in folder ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LockHeld(PolicyHostError, TimeoutError):
    """``locked`` gave up: another process holds the lock."""

    def __init__(self, path: Path, holder: str) -> None:
        self.path = path
        # The pid the holder wrote into the file ("" if it wrote none).
        self.holder = holder
        super().__init__(
            f"{path}: another policy-host run holds this lock"
            f"{' (pid ' + holder + ')' if holder else ''}"
        )


@contextlib.contextmanager
def locked(
    path: Path, *, wait: float = 0.0, mode: int = 0o644, write_pid: bool = False
) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (made, with its folder, if
    missing) until the block ends; closing the file releases it, so a
    process that dies holding it never leaves it stuck.

    Waits up to ``wait`` seconds for another holder, then raises
    ``LockHeld``; any other ``OSError`` (a read-only or full disk) comes
    through as is. ``write_pid``: the file holds this process's pid while
    locked, so the next one can say who holds it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, mode)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                    raise LockHeld(path, holder) from None
                time.sleep(LOCK_POLL)
        if write_pid:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
