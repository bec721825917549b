"""`policy-host watch`: a tenant file is served as soon as it is written
(real inotify events), a broken one keeps its last good policy, and the
full compile runs at start, after lost events and as a periodic net."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from inotify_simple import flags

from policy_host.read.config import ProviderConfig
from policy_host.serve import web
from policy_host.serve.snapshot import snapshot_id
from policy_host.serve.watcher import Watcher, batch_of

HOST = "mta-sts.example.com"


def wait_for(check: Callable[[], bool], seconds: float = 10.0) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > seconds:
            raise AssertionError("not within the time allowed")
        time.sleep(0.002)
    return time.monotonic() - started


@pytest.fixture
def watching(config: ProviderConfig) -> Iterator[Watcher]:
    watcher = Watcher(config, full_every=3600.0)
    stop = threading.Event()
    thread = threading.Thread(target=watcher.run, args=(stop.is_set,), daemon=True)
    thread.start()
    wait_for(lambda: snapshot_id(config.snapshot_path) is not None)
    try:
        yield watcher
    finally:
        stop.set()
        thread.join(5)
        watcher.inotify.close()


def test_a_written_file_is_served_by_nginx_and_the_workers(
    config: ProviderConfig, watching: Watcher
) -> None:
    table = web.PolicyTable(config.snapshot_path)
    path = config.tenants_dir / "example.com.yaml"
    path.write_text(path.read_text().replace("604800", "1209600"))
    www = config.www_dir / HOST
    wait_for(lambda: b"max_age: 1209600" in www.read_bytes())

    def caught_up() -> bool:  # the journal step follows the file
        table.refresh()
        return table.get(HOST) == www.read_bytes()

    wait_for(caught_up)


def test_a_new_file_renamed_into_place_and_a_removed_one(
    config: ProviderConfig, watching: Watcher
) -> None:
    text = (config.tenants_dir / "example.com.yaml").read_text()
    tmp = config.tenants_dir / ".new.example.yaml.tmp"
    tmp.write_text(text)
    tmp.rename(config.tenants_dir / "new.example.yaml")
    (config.tenants_dir / "example.org.yaml").unlink()
    wait_for(lambda: (config.www_dir / "mta-sts.new.example").exists())
    wait_for(lambda: not (config.www_dir / "mta-sts.example.org").exists())


def test_a_broken_file_keeps_its_last_good_policy(
    config: ProviderConfig, watching: Watcher
) -> None:
    www = config.www_dir / HOST
    good = www.read_bytes()
    (config.tenants_dir / "example.com.yaml").write_text("mode: enforce\nmx: [\n")
    # Then a good change elsewhere: once it is served, the broken one was
    # compiled before it (events are taken in order).
    path = config.tenants_dir / "example.net.yaml"
    path.write_text(path.read_text().replace("86400", "172800"))
    wait_for(lambda: b"max_age: 172800" in (config.www_dir / "mta-sts.example.net").read_bytes())
    assert www.read_bytes() == good


def test_events_are_reduced_to_tenant_file_names() -> None:
    batch = batch_of(
        [
            (1, flags.CLOSE_WRITE, 0, "a.example.yaml"),
            (1, flags.MOVED_TO, 7, "b.example.yaml"),
            (1, flags.CLOSE_WRITE, 0, ".b.example.yaml.swp"),
            (1, flags.DELETE, 0, "notes.txt"),
            (1, flags.DELETE, 0, "a.example.yaml"),
        ]
    )
    assert (batch.names, batch.full) == ({"a.example.yaml", "b.example.yaml"}, False)
    assert batch_of([(-1, flags.Q_OVERFLOW, 0, "")]).full
    assert batch_of([(1, flags.DELETE_SELF, 0, "")]).full


def test_the_safety_net_compiles_what_no_event_announced(
    config: ProviderConfig, tmp_path: Path
) -> None:
    now = [0.0]
    watcher = Watcher(config, full_every=60.0, clock=lambda: now[0])
    try:
        watcher.watch_folder()
        watcher.full()
        # A change the watch cannot see: the file is edited before the
        # folder is watched again (as by a watcher that was down).
        watcher.inotify.close()
        path = config.tenants_dir / "example.com.yaml"
        path.write_text(path.read_text().replace("604800", "1209600"))
        watcher.inotify = type(watcher.inotify)()
        watcher.watch_folder()
        watcher.step(0.01)
        assert b"max_age: 604800" in (config.www_dir / HOST).read_bytes()
        now[0] = 61.0
        watcher.step(0.01)
        assert b"max_age: 1209600" in (config.www_dir / HOST).read_bytes()
    finally:
        watcher.inotify.close()
