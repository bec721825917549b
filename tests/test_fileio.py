"""Replacing a file atomically (policy_host/fileio.py)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from policy_host.fileio import replace_file


def test_the_file_is_replaced_whole_and_nothing_is_left_beside_it(tmp_path: Path) -> None:
    path = tmp_path / "new" / "folder" / "served.json"
    replace_file(path, b"one")
    replace_file(path, b"two")
    assert path.read_bytes() == b"two"
    assert os.listdir(path.parent) == ["served.json"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # mkstemp's, unless told


def test_mode_and_a_separate_temporary_folder(tmp_path: Path) -> None:
    tmp_dir = tmp_path / ".tmp"
    tmp_dir.mkdir()
    path = tmp_path / "mta-sts.example.com"
    replace_file(path, b"policy", tmp_dir=tmp_dir, mode=0o644, fsync=False, fsync_folder=False)
    assert path.read_bytes() == b"policy"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert os.listdir(tmp_dir) == []


@pytest.mark.parametrize("fsync", [True, False])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fsync: bool
) -> None:
    path = tmp_path / "served.json"
    replace_file(path, b"old")

    def full_disk(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError, match="No space left"):
        replace_file(path, b"new", fsync=fsync)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["served.json"]


def test_durable_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real = os.fsync

    def counted(fd: int) -> None:
        synced.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", counted)
    replace_file(tmp_path / "a", b"x")
    assert len(synced) == 2  # the file, then its folder
    synced.clear()
    replace_file(tmp_path / "b", b"x", fsync=False, fsync_folder=False)
    assert synced == []


def test_a_replaced_file_has_a_new_identity(tmp_path: Path) -> None:
    from policy_host.fileio import file_identity

    path = tmp_path / "served.json"
    assert file_identity(path) is None
    replace_file(path, b"same")
    first = file_identity(path)
    assert first is not None and file_identity(path) == first
    replace_file(path, b"same")  # same bytes, same size: still a new file
    assert file_identity(path) != first
