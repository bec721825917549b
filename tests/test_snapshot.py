"""The served-policy snapshot: last good kept, removals dropped, atomic writes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support.layout import GOLDEN

from policy_host.errors import PolicyHostError
from policy_host.read.config import ProviderConfig
from policy_host.serve.compiler import compile_snapshot
from policy_host.serve.snapshot import read_snapshot


def test_compile_writes_every_valid_tenant(config: ProviderConfig) -> None:
    compiled = compile_snapshot(config)
    snapshot, result, kept = compiled.snapshot, compiled.result, compiled.kept
    assert (sorted(snapshot.entries), kept, result.errors) == (
        ["example.com", "example.net", "example.org"],
        [],
        [],
    )
    assert read_snapshot(config.snapshot_path) == snapshot
    assert (
        snapshot.policies_by_host()["mta-sts.example.net"]
        == (GOLDEN / "example.net.txt").read_bytes()
    )


def test_broken_tenant_keeps_its_last_good_policy(config: ProviderConfig) -> None:
    compile_snapshot(config)
    (config.tenants_dir / "example.com.yaml").write_text("mode: enforce\nmx: [\n")
    compiled = compile_snapshot(config)
    snapshot, result, kept = compiled.snapshot, compiled.result, compiled.kept
    assert kept == ["example.com"]
    assert result.errors
    entry = snapshot.entries["example.com"]
    assert entry.stale
    assert entry.body == (GOLDEN / "example.com.txt").read_bytes()
    # And it stays kept over further reloads while the file is broken.
    assert compile_snapshot(config).snapshot.entries["example.com"].body == entry.body


def test_fixed_tenant_replaces_last_good(config: ProviderConfig) -> None:
    compile_snapshot(config)
    path = config.tenants_dir / "example.com.yaml"
    good = path.read_text()
    path.write_text("broken: [")
    compile_snapshot(config)
    path.write_text(good.replace("604800", "1209600"))
    entry = compile_snapshot(config).snapshot.entries["example.com"]
    assert not entry.stale
    assert entry.body.endswith(b"max_age: 1209600\r\n")


def test_broken_tenant_without_history_is_not_served(config: ProviderConfig) -> None:
    (config.tenants_dir / "new.example.yaml").write_text("mode: sometimes\n")
    compiled = compile_snapshot(config)
    snapshot, kept = compiled.snapshot, compiled.kept
    assert "new.example" not in snapshot.entries
    assert kept == []


def test_removed_file_stops_being_served(config: ProviderConfig) -> None:
    compile_snapshot(config)
    (config.tenants_dir / "example.org.yaml").unlink()
    assert "example.org" not in compile_snapshot(config).snapshot.entries


def test_snapshot_write_leaves_no_temporary_files(config: ProviderConfig) -> None:
    compile_snapshot(config)
    compile_snapshot(config)
    # (the parse cache is only written for files older than a few seconds)
    assert sorted(p.name for p in config.state_dir.iterdir()) == [
        "served.changes.json",
        "served.db",
        "served.json",
        "served.sqlite3",
        "www",
    ]
    assert [p.name for p in (config.www_dir / ".tmp").iterdir()] == ["lock"]
    # One database, the one the link names (its log gone with its last
    # connection), and the catch-up's lock.
    database = (config.state_dir / "served.sqlite3").resolve()
    assert sorted(p.name for p in database.parent.iterdir()) == sorted([database.name, "lock"])


def test_corrupt_snapshot_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "served.json"
    path.write_text("{not json")
    with pytest.raises(PolicyHostError, match="cannot read the served-policy snapshot"):
        read_snapshot(path)


def test_unreadable_tenants_folder_keeps_every_policy(config: ProviderConfig) -> None:
    before = compile_snapshot(config).snapshot
    config.tenants_dir.rename(config.tenants_dir.with_name("moved"))
    with pytest.raises(PolicyHostError, match="cannot read tenants folder"):
        compile_snapshot(config)
    assert read_snapshot(config.snapshot_path) == before


def test_worker_retries_a_snapshot_it_could_not_read(
    config: ProviderConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    from policy_host.serve import compiler, store, web
    from policy_host.serve.snapshot import served_rows

    # As on a serving node: the workers make the database themselves.
    monkeypatch.setattr(compiler, "keep_up", lambda *args, **kwargs: None)
    compile_snapshot(config)
    table = web.PolicyTable(config.snapshot_path)
    (config.tenants_dir / "example.org.yaml").unlink()
    # A new snapshot the worker has not loaded yet, and no database to
    # take the journal's step in.
    compile_snapshot(config)
    failures = iter([PolicyHostError("transient read error")])

    def flaky_read(path: Path) -> object:
        for exc in failures:
            raise exc
        return served_rows(path)

    monkeypatch.setattr(store, "served_rows", flaky_read)
    assert table.refresh() is False  # the read failed ...
    assert table.load_error == "transient read error"  # (what apply is told)
    assert table.refresh() is True  # ... and the same file is tried again
    assert table.load_error is None
    assert table.get("mta-sts.example.com") == (GOLDEN / "example.com.txt").read_bytes()
    assert table.get("mta-sts.example.org") is None


def test_what_is_served_is_read_once_per_snapshot_file(
    config: ProviderConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    from policy_host.serve import snapshot as snap

    memo = snap.SnapshotMemo()
    written = compile_snapshot(config, memo=memo).snapshot
    reads: list[Path] = []
    real = snap.read_served

    def counted(path: Path) -> tuple[dict[str, bytes], str] | None:
        reads.append(path)
        return real(path)

    monkeypatch.setattr(snap, "read_served", counted)
    # The compile's own snapshot: known without reading it.
    assert snap.served_policies(config.snapshot_path, memo) == (
        written.policies_by_host(),
        written.id,
    )
    assert reads == []
    # Replaced by someone else (another process's compile): read, once.
    text = config.snapshot_path.read_text().replace(written.id, "0123456789abcdef")
    config.snapshot_path.with_name("other").write_text(text)
    config.snapshot_path.with_name("other").replace(config.snapshot_path)
    for _ in range(2):
        assert snap.served_policies(config.snapshot_path, memo) == (
            written.policies_by_host(),
            "0123456789abcdef",
        )
    assert reads == [config.snapshot_path]
    config.snapshot_path.unlink()
    assert snap.served_policies(config.snapshot_path, memo) is None


def test_the_master_keeps_nothing_from_its_compile(
    config: ProviderConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gc

    from policy_host.read import parsecache
    from policy_host.serve import server
    from policy_host.serve.snapshot import SnapshotMemo

    monkeypatch.setattr(parsecache, "RACY_SECONDS", 0.0)  # cache files made just now
    memo = SnapshotMemo()
    compile_snapshot(config, memo=memo)
    compile_snapshot(config, memo=memo)  # the command line keeps what it read and wrote
    assert memo.served is not None
    assert memo.snapshot is not None
    assert memo.load.parse_caches.last is not None
    del memo
    server.recompile(config.path, config)  # what the gunicorn master runs
    gc.collect()
    kept = [o for o in gc.get_objects() if isinstance(o, (SnapshotMemo, parsecache.LoadedCaches))]
    assert kept == []


@pytest.mark.parametrize("dry_run", [True, False])
def test_reload_reports_a_tenant_served_from_the_apply_state_as_kept(
    config: ProviderConfig,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    dry_run: bool,
) -> None:
    from policy_host.cli import main as cli
    from policy_host.serve import server
    from policy_host.state import NEW, WITHDRAW, Pending, Store

    body = (GOLDEN / "example.org.txt").read_bytes()
    with Store(config.state_db) as store:
        store.begin({"example.org": Pending(NEW, "id1", "fp", body, 86400)}, 0)
        store.commit(["example.org"], 1, confirmed=True)
        store.begin({"example.org": Pending(WITHDRAW, "id2", "fp2", b"none", 60)}, 2)
    compile_snapshot(config)
    (config.tenants_dir / "example.org.yaml").unlink()  # being withdrawn
    monkeypatch.setattr(server, "running_pid", lambda config: os.getpid())
    argv = ["--config", str(config.path), "reload", *(["--dry-run"] if dry_run else [])]
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    # Served from the state (its withdrawal policy) with or without --dry-run.
    assert "example.org: no longer served" not in err
    assert "example.org: changed" in err
    assert "(1 new or changed, 0 removed)" in err
