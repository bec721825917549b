"""Replacing a file atomically: readers see the old file or the new one, whole.

Every file the control plane writes for others to read (the snapshot and
its journal, each policy file nginx serves, nginx's generated config, the
parse cache) is written this way: to a temporary file on the same file
system, then renamed over the old one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


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


Identity = tuple[int, int, int, int]


def file_identity(path: Path) -> Identity | None:
    """(inode, mtime_ns, ctime_ns, size) of ``path``; None if it does not
    exist. A file replaced by ``replace_file`` always gets a new one."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)


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
