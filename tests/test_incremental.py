"""A change compiled alone (`reload --changed`): the named files only, the
full compile's rules, and every reader of what is served sees it."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from support.layout import GOLDEN

from policy_host.cli import main as cli
from policy_host.cli.changed import named_paths
from policy_host.read.config import ProviderConfig
from policy_host.serve import files as static
from policy_host.serve import pidfile, web
from policy_host.serve.compiler import compile_snapshot
from policy_host.serve.incremental import compile_changed, tenant_names
from policy_host.serve.journal import JOURNAL_NAME, read_journal
from policy_host.serve.snapshot import (
    read_snapshot,
    served_id,
    served_policies,
    snapshot_id,
)

HOST = "mta-sts.example.com"


def edit(config: ProviderConfig, name: str, old: str, new: str) -> Path:
    path = config.tenants_dir / name
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    return path


def worker(config: ProviderConfig) -> web.PolicyTable:
    """A worker's table serving the snapshot now on disk."""
    table = web.PolicyTable(config.snapshot_path)
    table.refresh()
    assert table.snapshot_id == served_id(config.snapshot_path)
    return table


def test_one_changed_file_goes_live_without_the_snapshot_being_written(
    config: ProviderConfig,
) -> None:
    compile_snapshot(config)
    before = read_snapshot(config.snapshot_path)
    assert before is not None
    table = worker(config)
    snapshot_bytes = config.snapshot_path.read_bytes()
    edit(config, "example.com.yaml", "604800", "1209600")

    compiled = compile_changed(config, ["example.com.yaml"])

    assert compiled is not None and compiled.written
    assert list(compiled.changed) == [HOST]
    new = compiled.changed[HOST]
    assert new is not None and new.endswith(b"max_age: 1209600\r\n")
    assert config.snapshot_path.read_bytes() == snapshot_bytes  # not rewritten
    assert (config.www_dir / HOST).read_bytes() == new  # nginx serves it
    assert not static.is_dirty(config.www_dir)
    journal = read_journal(config.snapshot_path.with_name(JOURNAL_NAME))
    assert journal is not None and journal.head == compiled.snapshot.id
    # Every worker applies the step; the control plane reads it too.
    assert table.refresh() is True
    assert table.get(HOST) == new
    assert table.snapshot_id == compiled.snapshot.id == served_id(config.snapshot_path)
    assert snapshot_id(config.snapshot_path) == before.id
    served = served_policies(config.snapshot_path)
    assert served is not None and served[0][HOST] == new and served[1] == compiled.snapshot.id
    after = read_snapshot(config.snapshot_path)
    assert after is not None and after.entries["example.com"].body == new
    assert after.entries["example.com"].source == str(config.tenants_dir / "example.com.yaml")
    assert after.entries["example.net"] == before.entries["example.net"]


def test_the_next_full_compile_continues_from_the_steps(config: ProviderConfig) -> None:
    compile_snapshot(config)
    table = worker(config)
    edit(config, "example.com.yaml", "604800", "1209600")
    first = compile_changed(config, ["example.com.yaml"])
    assert first is not None
    edit(config, "example.net.yaml", "86400", "172800")
    full = compile_snapshot(config)
    # Only example.net is new to the full compile: the step had the rest.
    assert list(full.changed) == ["mta-sts.example.net"]
    assert table.refresh() is True
    assert dict(table.policies) == full.snapshot.policies_by_host()
    assert served_id(config.snapshot_path) == full.snapshot.id == snapshot_id(config.snapshot_path)


def test_a_broken_named_file_keeps_its_last_good_policy(config: ProviderConfig) -> None:
    compile_snapshot(config)
    (config.tenants_dir / "example.com.yaml").write_text("mode: enforce\nmx: [\n")
    compiled = compile_changed(config, ["example.com.yaml"])
    assert compiled is not None
    assert compiled.kept == ["example.com"] and compiled.result.errors
    assert compiled.changed == {}
    assert (config.www_dir / HOST).read_bytes() == (GOLDEN / "example.com.txt").read_bytes()
    entry = compiled.snapshot.entries["example.com"]
    assert entry.stale and entry.body == (GOLDEN / "example.com.txt").read_bytes()


def test_a_removed_named_file_stops_being_served(config: ProviderConfig) -> None:
    compile_snapshot(config)
    table = worker(config)
    (config.tenants_dir / "example.org.yaml").unlink()
    compiled = compile_changed(config, ["example.org.yaml"])
    assert compiled is not None and compiled.changed == {"mta-sts.example.org": None}
    assert not (config.www_dir / "mta-sts.example.org").exists()
    assert table.refresh() is True and table.get("mta-sts.example.org") is None
    # A full compile then agrees: nothing more to change.
    assert compile_snapshot(config).changed == {}


def test_a_new_named_file_is_served(config: ProviderConfig) -> None:
    compile_snapshot(config)
    text = (config.tenants_dir / "example.com.yaml").read_text()
    (config.tenants_dir / "new.example.yaml").write_text(text)
    compiled = compile_changed(config, ["new.example.yaml"])
    assert compiled is not None and list(compiled.changed) == ["mta-sts.new.example"]
    assert (config.www_dir / "mta-sts.new.example").read_bytes() == (
        config.www_dir / HOST
    ).read_bytes()


def test_dry_run_writes_nothing(config: ProviderConfig) -> None:
    compile_snapshot(config)
    edit(config, "example.com.yaml", "604800", "1209600")
    old = (config.www_dir / HOST).read_bytes()
    compiled = compile_changed(config, ["example.com.yaml"], proceed=lambda _c: False)
    assert compiled is not None and not compiled.written and list(compiled.changed) == [HOST]
    assert (config.www_dir / HOST).read_bytes() == old
    assert served_id(config.snapshot_path) == snapshot_id(config.snapshot_path)


@pytest.mark.parametrize(
    "why", ["no snapshot", "dirty", "name not the domain", "gone, name not a domain"]
)
def test_what_only_a_full_compile_can_decide_is_left_to_it(
    config: ProviderConfig, why: str
) -> None:
    name = "example.com.yaml"
    if why != "no snapshot":
        compile_snapshot(config)
    if why == "dirty":
        (config.www_dir / static.TMP / static.DIRTY).touch()
    if why == "name not the domain":
        text = (config.tenants_dir / name).read_text()
        name = "Example.COM.yaml"
        (config.tenants_dir / name).write_text(text)
    if why == "gone, name not a domain":
        name = "Example.NET.yaml"  # no such file: only a full load knows
    assert compile_changed(config, [name]) is None


def test_paths_are_taken_from_arguments_and_stdin(config: ProviderConfig) -> None:
    folder = config.tenants_dir
    lines = f"{folder}/a.example.yaml\nREADME.md\n{folder}/b.example.yaml\n"
    paths = list(named_paths(["-", str(folder / "c.example.yaml")], io.StringIO(lines)))
    named = tenant_names(config, [*paths, "/elsewhere/d.example.yaml", str(folder / ".x.yaml")])
    assert named.names == ["a.example.yaml", "b.example.yaml", "c.example.yaml"]
    assert named.outside == ["/elsewhere/d.example.yaml", str(folder / ".x.yaml")]


def test_reload_changed_reads_paths_from_stdin_and_reports(
    config: ProviderConfig,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    compile_snapshot(config)
    path = edit(config, "example.com.yaml", "604800", "1209600")
    monkeypatch.setattr(pidfile, "running_pid", lambda config: os.getpid())
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{path}\nREADME.md\n"))
    argv = ["--config", str(config.path), "reload", "--changed", "-"]
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert "example.com: changed" in err and "changed 1 of 1 named" in err
    assert b"max_age: 1209600" in (config.www_dir / HOST).read_bytes()
    # A path outside the tenants folder is a usage error; nothing changes.
    before = served_id(config.snapshot_path)
    outside = ["--config", str(config.path), "reload", "--changed", "/tmp/x.example.yaml"]
    assert cli.main(outside) == 2
    assert "not a file in the tenants folder" in capsys.readouterr().out
    assert served_id(config.snapshot_path) == before
