"""The policy files nginx serves by itself (``policy_host.serve.files``): written
by every compile, atomically, only what changed, and repaired after a run
that died half way."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from support.layout import GOLDEN

from policy_host.errors import PolicyHostError
from policy_host.read.config import ProviderConfig
from policy_host.serve import files as static
from policy_host.serve.compiler import compile_snapshot

HOSTS = ("mta-sts.example.com", "mta-sts.example.net", "mta-sts.example.org")


def files(www: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in www.iterdir() if not p.name.startswith(".")}


def test_compile_writes_one_file_per_served_host(config: ProviderConfig) -> None:
    snapshot = compile_snapshot(config).snapshot
    assert files(config.www_dir) == snapshot.policies_by_host()
    assert sorted(files(config.www_dir)) == list(HOSTS)
    served = (config.www_dir / "mta-sts.example.com").read_bytes()
    assert served == (GOLDEN / "example.com.txt").read_bytes()
    mode = stat.S_IMODE(os.stat(config.www_dir / "mta-sts.example.com").st_mode)
    assert mode & 0o044 == 0o044, "nginx's workers (group or others) must read it"


def test_a_change_rewrites_only_that_file(config: ProviderConfig) -> None:
    compile_snapshot(config)
    before = {h: os.stat(config.www_dir / h).st_ino for h in HOSTS}
    path = config.tenants_dir / "example.com.yaml"
    path.write_text(path.read_text().replace("604800", "1209600"))
    compile_snapshot(config)
    after = {h: os.stat(config.www_dir / h).st_ino for h in HOSTS}
    assert after["mta-sts.example.com"] != before["mta-sts.example.com"]
    assert {h: after[h] for h in HOSTS[1:]} == {h: before[h] for h in HOSTS[1:]}
    assert (config.www_dir / "mta-sts.example.com").read_bytes().endswith(b"max_age: 1209600\r\n")


def test_a_removed_tenant_loses_its_file(config: ProviderConfig) -> None:
    compile_snapshot(config)
    (config.tenants_dir / "example.org.yaml").unlink()
    compile_snapshot(config)
    assert sorted(files(config.www_dir)) == list(HOSTS[:2])


def test_a_broken_tenant_keeps_its_last_good_file(config: ProviderConfig) -> None:
    compile_snapshot(config)
    good = (config.www_dir / "mta-sts.example.com").read_bytes()
    (config.tenants_dir / "example.com.yaml").write_text("mode: enforced\n")
    compile_snapshot(config)
    assert (config.www_dir / "mta-sts.example.com").read_bytes() == good


def test_a_run_that_died_half_way_is_repaired_by_the_next(config: ProviderConfig) -> None:
    compile_snapshot(config)
    www = config.www_dir
    # As if a compile had written a file (and its dirty marker) and died
    # before the snapshot: the snapshot still says the old bytes.
    (www / static.TMP / static.DIRTY).touch()
    (www / "mta-sts.example.com").write_bytes(b"half-written")
    (www / "mta-sts.gone.example").write_bytes(b"stray")
    snapshot = compile_snapshot(config).snapshot
    assert files(www) == snapshot.policies_by_host()
    assert not (www / static.TMP / static.DIRTY).exists()


def test_without_a_previous_snapshot_every_file_is_compared(tmp_path: Path) -> None:
    www = tmp_path / "www"
    www.mkdir()
    (www / "mta-sts.a.example").write_bytes(b"old")
    (www / "mta-sts.b.example").write_bytes(b"same")
    result = static.sync(www, {"mta-sts.a.example": b"new", "mta-sts.b.example": b"same"}, None)
    assert (result.full, result.written, result.removed) == (True, 1, 0)
    assert files(www) == {"mta-sts.a.example": b"new", "mta-sts.b.example": b"same"}


def test_nothing_is_written_when_nothing_changed(tmp_path: Path) -> None:
    www = tmp_path / "www"
    wanted = {"mta-sts.a.example": b"x"}
    static.sync(www, wanted, None)
    static.done(www)
    result = static.sync(www, wanted, wanted)
    assert not result.changed and not result.full
    assert not (www / static.TMP / static.DIRTY).exists()


def test_an_unwritable_folder_stops_the_compile(
    config: ProviderConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    compile_snapshot(config)
    snapshot_before = config.snapshot_path.read_bytes()

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(static, "replace_file", refuse)
    (config.tenants_dir / "example.com.yaml").write_text(
        (config.tenants_dir / "example.com.yaml").read_text().replace("604800", "1209600")
    )
    with pytest.raises(PolicyHostError, match="cannot write the policy files nginx serves"):
        compile_snapshot(config)
    # The snapshot (what the workers serve) did not move ahead of the files.
    assert config.snapshot_path.read_bytes() == snapshot_before


def test_a_second_compile_waits_for_the_first(
    config: ProviderConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    compile_snapshot(config)
    monkeypatch.setattr(static, "LOCK_WAIT", 0.2)
    with static.locked(config.www_dir), pytest.raises(PolicyHostError, match="another compile"):
        compile_snapshot(config)
    compile_snapshot(config)  # free again
