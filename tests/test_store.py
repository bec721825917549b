"""The database the workers read (``serve/store.py``): brought up to the
snapshot and its journal by a journal step when the journal leads there,
by a new database otherwise (none yet, a broken one, a journal that starts
anew), one catch-up at a time whoever runs it."""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
import os
import sqlite3
from pathlib import Path

import pytest

from policy_host.fileio import locked
from policy_host.read.config import ProviderConfig
from policy_host.serve import compiler, journal, store
from policy_host.serve import table as table_module
from policy_host.serve.compiler import compile_snapshot
from policy_host.serve.snapshot import Entry, Snapshot, served_id, write_snapshot
from policy_host.serve.store import CaughtUp, catch_up, database_path
from policy_host.serve.table import PolicyTable

HOST = "mta-sts.example.com"


def edit(config: ProviderConfig, domain: str, old: str, new: str) -> None:
    path = config.tenants_dir / f"{domain}.yaml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def databases(snapshot_path: Path) -> list[str]:
    """The databases in the folder (their -wal and -shm while a reader has
    one open go with them)."""
    folder = snapshot_path.with_name(store.FOLDER_NAME)
    names = {name.partition(store.SUFFIX)[0] + store.SUFFIX for name in os.listdir(folder)}
    return sorted(names - {store.LOCK_NAME + store.SUFFIX})


def served_table(config: ProviderConfig) -> PolicyTable:
    """A worker's table reading the database of a fresh compile."""
    compile_snapshot(config)
    catch_up(config.snapshot_path)
    table = PolicyTable(config.snapshot_path)
    table.refresh()
    return table


@pytest.fixture
def by_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Compiles leave the database alone, as on a serving node: each test
    calls ``catch_up`` itself."""
    monkeypatch.setattr(compiler, "keep_up", lambda *args, **kwargs: None)


@pytest.mark.usefixtures("by_workers")
def test_no_database_yet_is_built_from_the_snapshot(config: ProviderConfig) -> None:
    written = compile_snapshot(config).snapshot
    assert not database_path(config.snapshot_path).exists()
    assert catch_up(config.snapshot_path) == CaughtUp(written.id, 0, built=True)
    table = PolicyTable(config.snapshot_path)
    assert table.policies == written.policies_by_host()
    assert table.snapshot_id == written.id
    # Nothing new: nothing done.
    assert catch_up(config.snapshot_path) == CaughtUp(written.id)


@pytest.mark.usefixtures("by_workers")
def test_a_change_goes_in_as_one_journal_step(config: ProviderConfig) -> None:
    compile_snapshot(config)
    catch_up(config.snapshot_path)
    link = os.readlink(database_path(config.snapshot_path))
    edit(config, "example.com", "604800", "1209600")
    (config.tenants_dir / "example.org.yaml").unlink()
    after = compile_snapshot(config).snapshot
    assert catch_up(config.snapshot_path) == CaughtUp(after.id, steps=1)
    # The same database file: readers need not reopen anything.
    assert os.readlink(database_path(config.snapshot_path)) == link
    assert PolicyTable(config.snapshot_path).policies == after.policies_by_host()


@pytest.mark.usefixtures("by_workers")
def test_a_journal_that_does_not_lead_there_means_a_new_database(
    config: ProviderConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = served_table(config)
    old = table.get(HOST)
    link = database_path(config.snapshot_path)
    first = os.readlink(link)
    monkeypatch.setattr(journal, "JOURNAL_MAX_CHANGES", 1)
    edit(config, "example.com", "604800", "1209600")
    edit(config, "example.net", "86400", "172800")
    after = compile_snapshot(config).snapshot  # the journal starts anew
    assert catch_up(config.snapshot_path) == CaughtUp(after.id, 0, built=True)
    assert os.readlink(link) != first
    assert databases(config.snapshot_path) == [Path(os.readlink(link)).name]  # the old one removed
    # A thread that had the old one open keeps reading it until the
    # table's next look, then reads the new one.
    assert table.get(HOST) == old
    assert table.refresh() is True
    assert table.policies == after.policies_by_host()


@pytest.mark.usefixtures("by_workers")
def test_a_database_built_while_steps_wait_in_the_journal_takes_them(
    config: ProviderConfig,
) -> None:
    """A compile that died between its journal and its snapshot: what is
    served is the journal's head (what nginx serves too)."""
    first = compile_snapshot(config).snapshot
    edit(config, "example.com", "604800", "1209600")
    changed = compile_snapshot(config).snapshot
    # The first snapshot back on disk, the journal leading on from it.
    write_snapshot(config.snapshot_path, first)
    assert served_id(config.snapshot_path) == changed.id
    assert catch_up(config.snapshot_path) == CaughtUp(changed.id, 1, built=True)
    assert PolicyTable(config.snapshot_path).policies == changed.policies_by_host()


@pytest.mark.usefixtures("by_workers")
@pytest.mark.parametrize("damage", ["garbage", "missing-file", "no-link", "wrong-format"])
def test_a_broken_or_missing_database_is_built_again(config: ProviderConfig, damage: str) -> None:
    written = compile_snapshot(config).snapshot
    catch_up(config.snapshot_path)
    link = database_path(config.snapshot_path)
    real = link.resolve()
    if damage == "garbage":
        real.write_bytes(b"this is not a database" * 300)
    elif damage == "missing-file":
        real.unlink()
    elif damage == "no-link":
        link.unlink()
    else:
        with sqlite3.connect(real) as conn:
            conn.execute("PRAGMA user_version = 99")
        conn.close()
    table = PolicyTable(config.snapshot_path)
    if damage != "wrong-format":
        assert table.get(HOST) is None  # (answered 404, logged)
    assert catch_up(config.snapshot_path) == CaughtUp(written.id, 0, built=True)
    assert table.refresh() is True
    assert table.policies == written.policies_by_host()
    assert databases(config.snapshot_path) == [Path(os.readlink(link)).name]


def _catch_up_in_child(path: Path, start: multiprocessing.synchronize.Event) -> None:
    start.wait(10)
    done = catch_up(path, wait=30.0)
    os._exit(0 if done is not None and done.built else 1)


def test_two_processes_catching_up_at_once_build_one_database(tmp_path: Path) -> None:
    """The catch-up lock: two workers of a serving node that both find no
    database make one between them, and the second finds it done."""
    path = tmp_path / "served.json"
    bodies = {f"t{n:05d}.example": Entry(b"v\r\n%d\r\n" % n, "s") for n in range(20000)}
    snapshot = Snapshot(bodies)
    write_snapshot(path, snapshot)
    context = multiprocessing.get_context("fork")
    start = context.Event()
    children = [context.Process(target=_catch_up_in_child, args=(path, start)) for _ in range(2)]
    for child in children:
        child.start()
    start.set()
    for child in children:
        child.join(60)
    # Exactly one built it (exit 0); the other found it up to date (1).
    assert sorted(str(child.exitcode) for child in children) == ["0", "1"]
    assert catch_up(path) == CaughtUp(snapshot.id)
    assert PolicyTable(path).policies == snapshot.policies_by_host()
    assert databases(path) == [Path(os.readlink(database_path(path))).name]


def test_a_catch_up_under_way_makes_a_worker_look_again_later(tmp_path: Path) -> None:
    path = tmp_path / "served.json"
    write_snapshot(path, Snapshot({"a.example": Entry(b"a\r\n", "s")}))
    table = PolicyTable(path)
    with locked(path.with_name(store.FOLDER_NAME) / store.LOCK_NAME):
        assert table.refresh() is False  # another process is at it
        assert table.load_error is None
    assert table.refresh() is True
    assert table.get("mta-sts.a.example") == b"a\r\n"


def test_an_unreadable_snapshot_keeps_the_database_and_is_reported(
    config: ProviderConfig,
) -> None:
    written = compile_snapshot(config).snapshot  # (its catch-up built the database)
    table = PolicyTable(config.snapshot_path)
    assert table.refresh() is True
    config.snapshot_path.write_text("not a snapshot\n")
    assert table.refresh() is False
    assert table.load_error is not None and "not a policy-host snapshot" in table.load_error
    # The last good policies stay served.
    assert table.policies == written.policies_by_host()
    assert table.snapshot_id == written.id


@pytest.mark.usefixtures("by_workers")
def test_a_worker_never_says_it_serves_a_snapshot_its_cache_is_older_than(
    config: ProviderConfig,
) -> None:
    table = served_table(config)
    old = table.get(HOST)
    assert old is not None and b"604800" in old
    assert table.get(HOST) is old  # the second answer comes from the cache
    edit(config, "example.com", "604800", "1209600")
    after = compile_snapshot(config).snapshot
    assert catch_up(config.snapshot_path) == CaughtUp(after.id, steps=1)
    # The database has the change but this worker has not looked yet: it
    # may still answer the bytes it had, and then it must not claim the new
    # snapshot (apply asks every worker before it publishes an id).
    assert table.snapshot_id == after.id
    assert table.get(HOST) == after.policies_by_host()[HOST]


@pytest.mark.usefixtures("by_workers")
def test_the_cache_stays_within_its_size(
    config: ProviderConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(table_module, "CACHE_ENTRIES", 2)
    table = served_table(config)
    served = table.policies
    assert len(served) >= 3
    for host, body in served.items():
        assert table.get(host) == body
        assert len(table._cache) <= 2
    assert table.get("mta-sts.not-a-tenant.example") is None
    assert "mta-sts.not-a-tenant.example" not in table._cache
