"""The real gunicorn (two workers, as a serving node runs it: ``serve
--pushed``) reading the served-policy database: a change that arrives as
a serving node gets it (a journal step beside the snapshot) is served by
every worker, which says so, and a worker's memory does not grow with the
number of tenants (each one used to hold every policy: about 270 bytes a
tenant, 27 MiB more at 100,000)."""

from __future__ import annotations

import random
import time
from pathlib import Path

from support.procs import wait_until
from test_server_gunicorn import Server, exchange, http_request, make_site, serve

from policy_host.fetch import fetch_app
from policy_host.publish.workers import parse_state
from policy_host.serve.journal import journal_path, write_journal
from policy_host.serve.snapshot import Entry, Snapshot, write_snapshot
from policy_host.serve.store import catch_up
from policy_host.serve.web import SNAPSHOT_PATH

# Worker memory at 100,000 tenants may exceed that at 1,000 by this much
# (SQLite's page cache of each thread's connection is 2 MiB at most).
RSS_SLACK_MIB = 12.0


def body(n: int, age: int = 604800) -> bytes:
    return (
        f"version: STSv1\r\nmode: enforce\r\nmx: mx{n}.example.net\r\nmax_age: {age}\r\n"
    ).encode()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def fetch(server: Server, n: int) -> bytes | None:
    reply = exchange(server.port, http_request(f"mta-sts.t{n:06d}.example"))
    return reply.body if reply.status == 200 else None


def workers_serving(server: Server, bind: str, snapshot: str) -> bool:
    """Whether every worker says it serves ``snapshot``."""
    seen: dict[int, str] = {}
    for _ in range(40):
        _, text = fetch_app(bind, SNAPSHOT_PATH, "localhost", timeout=3)
        state = parse_state(text.decode())
        assert state is not None and state.error is None, text
        seen[state.pid] = state.snapshot
    return set(seen) == server.workers() and set(seen.values()) == {snapshot}


def worker_memory_after_a_change(root: Path, tenants: int) -> float:
    """Serve ``tenants`` policies, read many of them, push a change to one:
    every worker serves it; returns the largest worker VmRSS (MiB)."""
    site = make_site(root)
    snapshot = Snapshot({f"t{n:06d}.example": Entry(body(n), "pushed") for n in range(tenants)})
    write_snapshot(site.snapshot, snapshot)
    catch_up(site.snapshot)  # (the master would, before its workers start)
    with serve(site, "--pushed") as server:
        bind = f"127.0.0.1:{server.port}"
        wait_until(lambda: workers_serving(server, bind, snapshot.id), 10.0, what="the workers")
        for n in random.sample(range(tenants), min(tenants, 1500)):
            assert fetch(server, n) == body(n)
        changed = tenants // 2
        new = body(changed, 1209600)
        step = Snapshot(snapshot.entries)  # (a new id)
        write_journal(
            journal_path(site.snapshot),
            snapshot.id,
            step.id,
            {f"mta-sts.t{changed:06d}.example": new},
            (),
        )
        started = time.monotonic()
        wait_until(lambda: workers_serving(server, bind, step.id), 10.0, what="the change")
        assert time.monotonic() - started < 5.0
        for _ in range(20):  # whichever worker takes it
            assert fetch(server, changed) == new
        server.daemon.check_alive()
        return max(rss_mib(pid) for pid in server.workers())


def test_every_worker_serves_a_pushed_change_and_memory_does_not_grow_with_tenants(
    tmp_path: Path,
) -> None:
    small = worker_memory_after_a_change(tmp_path / "small", 1_000)
    large = worker_memory_after_a_change(tmp_path / "large", 100_000)
    assert large <= small + RSS_SLACK_MIB, (small, large)
