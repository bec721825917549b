"""Faults: `apply` killed at every step, DNS down or refusing, nginx down,
the state's disk full, a gunicorn worker killed under load.

One production front for the module (``support.front``, in a network
namespace): nginx on 443 and 8081 in front of ``policy-host serve``, knotd
taking the TSIG-signed UPDATEs, and the state folder on a small tmpfs of
its own that tests fill up. Every `apply` here is the real command line.

What must hold, whatever happened:

- no id is ever published before its policy is served: a sender playing
  thread asks the primary for the TXT, then fetches the policy through
  nginx, over and over, and every id it sees comes with that id's policy
  or a newer one (RFC 8461 section 8);
- a failed run says which step stopped it and why, on one line, and
  commits nothing half-done;
- the next run converges: DNS, what nginx serves, and the state agree.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.rdatatype
import pytest
from support.dnsservers import query
from support.front import (
    CLI,
    HTTPS,
    PROVIDER_ZONE,
    VERIFY,
    Front,
    fill,
    require_front,
    tmpfs,
)
from support.layout import EXAMPLES, ROOT
from support.procs import wait_until
from support.rawhttp import NoReplyError, SourceAddresses, connect_unix, exchange, request_bytes

from policy_host.model import Policy
from policy_host.render import fingerprint, render
from policy_host.state import read_records

CRASH = ROOT / "tests" / "support" / "apply_crash.py"
FAULT = ROOT / "tests" / "support" / "apply_fault.py"
PATH = "/.well-known/mta-sts.txt"
TENANT = "crash.example"
STEADY = "steady.example"
STEADY_POLICY = Policy("enforce", ("mx.steady.example",), 604800)
SOURCES = SourceAddresses(base=40)
DAY = 86400


def version(n: int) -> Policy:
    """The n-th policy of TENANT: each one different (max_age grows)."""
    return Policy("enforce", ("mx1.crash.example", f"mx{n % 3 + 2}.crash.example"), DAY * (n + 1))


def tenant_yaml(policy: Policy) -> str:
    mx = "".join(f"  - {p}\n" for p in policy.mx)
    return f"mode: {policy.mode}\nmx:\n{mx}max_age: {policy.max_age}\n"


@dataclass
class World:
    front: Front
    # Every version written for TENANT, in order, and each id seen for it.
    bodies: list[bytes] = field(default_factory=list)
    ids: dict[str, int] = field(default_factory=dict)

    def write(self, policy: Policy) -> int:
        self.bodies.append(render(policy))
        self.front.write_tenant(TENANT, tenant_yaml(policy))
        return len(self.bodies) - 1

    def note_ids(self, number: int) -> None:
        """Ids the state holds now belong to version ``number`` (ids are
        made in `apply`'s record step, never reused)."""
        record = read_records(self.front.state_dir / "state.sqlite3").get(TENANT)
        if record is None:
            return
        if record.pending is not None and record.pending.policy_id is not None:
            self.ids.setdefault(record.pending.policy_id, number)
        if record.policy_id is not None and record.body is not None:
            self.ids.setdefault(record.policy_id, self.bodies.index(record.body))

    def apply(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.front.cli("apply", *args)

    def dns_id(self) -> str | None:
        assert self.front.knot is not None
        response = query(
            self.front.knot.port, f"{TENANT}._mta-sts.{PROVIDER_ZONE}.", "TXT", recursion=False
        )
        texts = [
            b"".join(rdata.strings).decode()
            for rrset in response.answer
            if rrset.rdtype == dns.rdatatype.TXT
            for rdata in rrset
        ]
        if not texts:
            return None
        assert len(texts) == 1, texts
        return texts[0].removeprefix("v=STSv1; id=").removesuffix(";")

    def served(self, domain: str = TENANT, port: int = HTTPS) -> tuple[int, bytes]:
        host = f"mta-sts.{domain}"
        request = request_bytes(PATH, host)
        if port == HTTPS:
            reply = self.front.https(host, request, source=SOURCES.next())
        else:
            reply = self.front.plain(port, request, source=SOURCES.next())
        return reply.status, reply.body

    def assert_converged(self, *, rerun: bool = True) -> None:
        """DNS, nginx (443 and 8081) and the state agree on the last version;
        with ``rerun``, one more `apply` finds nothing to do."""
        record = read_records(self.front.state_dir / "state.sqlite3")[TENANT]
        latest = self.bodies[-1]
        assert record.pending is None
        assert record.status == "active"
        assert record.body == latest
        assert record.fingerprint == fingerprint(latest)
        assert self.dns_id() == record.policy_id
        assert self.served() == (200, latest)
        assert self.served(port=VERIFY) == (200, latest)
        assert self.served(STEADY) == (200, render(STEADY_POLICY))
        if not rerun:
            return
        again = self.apply("--json")
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["changes"] == []


class Sender(threading.Thread):
    """Asks the primary for the TXT, then fetches the policy through nginx,
    as a sender does on seeing a new id (RFC 8461 section 5)."""

    def __init__(self, world: World) -> None:
        super().__init__(daemon=True, name="sender")
        self.world = world
        self.seen: list[tuple[str | None, int, bytes]] = []
        self.errors: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                policy_id = self.world.dns_id()
                status, body = self.world.served()
            except (OSError, NoReplyError, dns.exception.DNSException) as exc:
                self.errors.append(repr(exc))
                time.sleep(0.01)
                continue
            self.seen.append((policy_id, status, body))

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=10)
        assert not self.is_alive()

    def violations(self) -> list[str]:
        wrong = []
        bodies = self.world.bodies
        for policy_id, status, body in self.seen:
            if policy_id is None:
                continue
            if policy_id not in self.world.ids:
                wrong.append(f"id {policy_id} in DNS was never recorded by apply")
            elif status != 200 or body not in bodies:
                wrong.append(f"id {policy_id} came with HTTP {status} {body[:80]!r}")
            elif bodies.index(body) < self.world.ids[policy_id]:
                wrong.append(
                    f"id {policy_id} (version {self.world.ids[policy_id]}) came with version "
                    f"{bodies.index(body)}"
                )
        return wrong


@contextlib.contextmanager
def sender(world: World) -> Iterator[Sender]:
    thread = Sender(world)
    thread.start()
    try:
        wait_until(lambda: len(thread.seen) > 5, 10, what="the sender's first fetches")
        yield thread
    finally:
        thread.stop()
    assert len(thread.seen) > 20, thread.errors[-5:]
    assert thread.violations() == [], thread.violations()[:5]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    require_front()
    root = tmp_path_factory.mktemp("faults")
    with Front(
        root,
        {STEADY: tenant_yaml(STEADY_POLICY), TENANT: tenant_yaml(version(0))},
        # Long enough for the workers to swap on a loaded machine (the
        # module's reruns failed at 1 s when every core was busy); the
        # runs that must stop at verify wait this long each.
        verify_timeout=3,
        state_tmpfs="8m",
        dns_timeout=1,
    ) as front:
        running = World(front, [render(version(0))])
        first = running.apply()
        assert first.returncode == 0, first.stderr
        running.note_ids(0)
        yield running
        front.nginx.daemon.check_alive()


def one_line_failure(done: subprocess.CompletedProcess[str], step: str) -> str:
    """The run failed at ``step`` and said so in one line (plus the rerun hint)."""
    assert done.returncode == 3, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert "internal error" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("policy-host: ")]
    assert lines, done.stderr
    assert lines[0].startswith(f"policy-host: apply stopped at step '{step}'"), done.stderr
    return lines[0]


def fault_run(
    world: World, step: str, action: str, argument: str
) -> subprocess.CompletedProcess[str]:
    """`policy-host apply` with ``action`` injected right after ``step``."""
    return subprocess.run(
        [
            sys.executable,
            str(FAULT),
            step,
            action,
            argument,
            "--config",
            str(world.front.config_path),
            "apply",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# -- 1. kill -9 -----------------------------------------------------------------

# The names for the points, and the step each comes right after.
KILL_POINTS = [
    ("before-reload", "record"),
    ("after-reload", "reload"),
    ("after-update-sent", "publish"),
    ("before-state-commit", "confirm"),
]


def test_apply_killed_at_each_step_then_rerun_converges_and_never_publishes_early(
    world: World,
) -> None:
    with sender(world) as watching:
        for name, step in KILL_POINTS:
            number = world.write(version(len(world.bodies)))
            before = world.dns_id()
            crashed = subprocess.run(
                [sys.executable, str(CRASH), str(world.front.config_path), step],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert crashed.returncode == -signal.SIGKILL, (name, crashed.stderr)
            world.note_ids(number)
            record = read_records(world.front.state_dir / "state.sqlite3")[TENANT]
            assert record.pending is not None, name
            if step in ("record", "reload"):
                assert world.dns_id() == before, name  # nothing published yet
            else:
                assert world.dns_id() == record.pending.policy_id, name
                assert world.served() == (200, world.bodies[number]), name

            rerun = world.apply()
            assert rerun.returncode == 0, (name, rerun.stdout, rerun.stderr)
            assert "taking up an interrupted run" in rerun.stdout, name
            world.note_ids(number)
            assert world.dns_id() == record.pending.policy_id, name
            world.assert_converged(rerun=False)
        assert world.front.workers_of_master(), "gunicorn lost its workers"
    world.assert_converged()
    assert {policy_id for policy_id, _, _ in watching.seen} >= set(list(world.ids)[-4:])


@pytest.mark.parametrize("delay", [0.9])
def test_apply_killed_at_a_random_moment_then_rerun_converges(world: World, delay: float) -> None:
    with sender(world):
        number = world.write(version(len(world.bodies)))
        proc = subprocess.Popen(
            [*CLI, "--config", str(world.front.config_path), "apply"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        time.sleep(delay)
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        world.note_ids(number)
        rerun = world.apply()
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        world.note_ids(number)
        world.assert_converged()


# -- 2. DNS down, DNS refusing, nginx down ----------------------------------------


@contextlib.contextmanager
def stopped(pid: int) -> Iterator[None]:
    """The process stops answering (SIGSTOP) until the block ends (SIGCONT)."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def test_dns_primary_down_after_serving_keeps_the_change_for_the_rerun(world: World) -> None:
    """The primary stops answering between serving and publishing: nothing
    is committed, the served policy may already be the new one (its id is
    not out), and the rerun publishes the id the run had prepared."""
    assert world.front.knot is not None
    before = world.dns_id()
    number = world.write(version(len(world.bodies)))
    knot = world.front.knot.daemon.pid
    with sender(world):
        try:
            done = fault_run(world, "verify", "sigstop", str(knot))
        finally:
            os.kill(knot, signal.SIGCONT)
        world.note_ids(number)
        line = one_line_failure(done, "publish")
        assert "UPDATE failed" in line or "no answer" in line, line
        record = read_records(world.front.state_dir / "state.sqlite3")[TENANT]
        assert record.pending is not None and record.pending.step == "served"
        assert record.policy_id == before
        assert world.served() == (200, world.bodies[number])
        rerun = world.apply()
        assert rerun.returncode == 0, rerun.stderr
        assert world.dns_id() == record.pending.policy_id
    world.assert_converged()


def test_dns_primary_refusing_the_update_commits_nothing(world: World) -> None:
    key_file = world.front.key_file
    good = key_file.read_text()
    before = world.dns_id()
    number = world.write(version(len(world.bodies)))
    wrong = good.replace(world.front.key.secret, "c2VjcmV0IHRoYXQgaXMgbm90IHRoZSBrZXk=")
    key_file.write_text(wrong)
    try:
        done = world.apply()
    finally:
        key_file.write_text(good)
    world.note_ids(number)
    line = one_line_failure(done, "publish")
    assert "refused the UPDATE" in line and "TSIG" in line, line
    assert world.front.key.secret not in done.stdout + done.stderr
    record = read_records(world.front.state_dir / "state.sqlite3")[TENANT]
    assert record.pending is not None and record.policy_id != record.pending.policy_id
    assert world.dns_id() == before
    rerun = world.apply()
    assert rerun.returncode == 0, rerun.stderr
    assert world.dns_id() == record.pending.policy_id
    world.assert_converged()


def test_nginx_down_stops_apply_at_verify_and_publishes_nothing(world: World) -> None:
    before = world.dns_id()
    number = world.write(version(len(world.bodies)))
    world.front.nginx.stop()
    try:
        done = world.apply()
    finally:
        world.front.nginx.start()
    world.note_ids(number)
    line = one_line_failure(done, "verify")
    assert "http://127.0.0.1:8081" in line and "nothing was published" in line, line
    assert world.dns_id() == before
    assert read_records(world.front.state_dir / "state.sqlite3")[TENANT].pending is not None
    rerun = world.apply()
    assert rerun.returncode == 0, rerun.stderr
    world.assert_converged()


# -- 3. disk full ---------------------------------------------------------------------


@contextlib.contextmanager
def full_disk(world: World) -> Iterator[Path]:
    path = fill(world.front.state_dir)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def state_bytes(world: World) -> bytes:
    return (world.front.state_dir / "state.sqlite3").read_bytes()


def test_disk_full_before_apply_changes_nothing_then_rerun_converges(world: World) -> None:
    before, state = world.dns_id(), state_bytes(world)
    served = world.served()
    number = world.write(version(len(world.bodies)))
    with full_disk(world):
        done = world.apply()
    assert done.returncode == 3, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr, done.stderr
    assert "No space left on device" in done.stderr or "disk is full" in done.stderr
    assert state_bytes(world) == state
    assert world.dns_id() == before
    assert world.served() == served
    rerun = world.apply()
    assert rerun.returncode == 0, rerun.stderr
    world.note_ids(number)
    world.assert_converged()


@pytest.mark.parametrize("step", ["record", "confirm"])
def test_disk_full_during_apply_fails_clearly_then_rerun_converges(world: World, step: str) -> None:
    """The disk fills up right after ``step``: the next write fails (the
    snapshot and policy files, or the state), the run stops with a clear
    error, and a rerun with space again completes it."""
    committed = read_records(world.front.state_dir / "state.sqlite3")[TENANT].policy_id
    before = world.dns_id()
    number = world.write(version(len(world.bodies)))
    with sender(world):
        try:
            done = fault_run(world, step, "fill", str(world.front.state_dir))
        finally:
            (world.front.state_dir / "filler").unlink(missing_ok=True)
        world.note_ids(number)
        output = done.stdout + done.stderr
        assert done.returncode == 3, output
        assert "Traceback" not in output and "internal error" not in output, output
        assert "No space left on device" in output or "disk is full" in output, output
        record = read_records(world.front.state_dir / "state.sqlite3")[TENANT]
        assert record.policy_id == committed  # nothing committed
        assert record.pending is not None
        if step == "record":  # the policy files or the snapshot could not be written
            assert world.dns_id() == before
        else:  # published and confirmed; only the commit failed
            assert world.dns_id() == record.pending.policy_id
            assert world.served() == (200, world.bodies[number])
        rerun = world.apply()
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        world.note_ids(number)
    world.assert_converged()


def test_reload_on_a_full_disk_fails_clearly_and_keeps_serving(world: World) -> None:
    """A broken tenant file makes `reload` rewrite the snapshot (that tenant
    is now served from its last good policy) though no policy file changes;
    the disk is full."""
    steady = world.front.tenants_dir / f"{STEADY}.yaml"
    good = steady.read_text()
    steady.write_text("mode: enforced\n")
    try:
        with full_disk(world):
            done = world.front.cli("reload")
    finally:
        world.front.write_tenant(STEADY, good)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr, done.stderr
    assert "No space left on device" in done.stderr, done.stderr
    assert world.served(STEADY) == (200, render(STEADY_POLICY))
    assert world.front.cli("reload").returncode == 0
    world.assert_converged()


def test_a_first_apply_on_a_full_disk_says_so(tmp_path: Path) -> None:
    """No state yet, and no room for even the lock file's few bytes."""
    require_front()  # root: the tmpfs
    shutil.copytree(EXAMPLES / "tenants", tmp_path / "tenants")
    config = tmp_path / "config.yaml"
    config.write_text(
        "tenants_dir: tenants\nstate_dir: state\npolicy_host: mta-sts.provider.example\n"
        "id_zone: _mta-sts.provider.example\n"
    )
    with tmpfs(tmp_path / "state", "256k") as state:
        fill(state)
        done = subprocess.run(
            [*CLI, "--config", str(config), "apply"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 3, done.stdout + done.stderr
    assert done.stderr.strip() == (
        f"policy-host: {state}/apply.lock: cannot take the apply lock: No space left on device"
    )


# -- 4. a worker killed under load ------------------------------------------------------


def test_a_gunicorn_worker_killed_under_load_other_requests_are_answered(world: World) -> None:
    """Clients on gunicorn's own socket (what nginx passes on) and through
    nginx, while one of the two workers is killed with SIGKILL."""
    expected = {TENANT: world.bodies[-1], STEADY: render(STEADY_POLICY)}
    results: list[tuple[float, str, int]] = []
    stop = threading.Event()
    lock = threading.Lock()

    def via_socket(domain: str) -> tuple[int, bytes]:
        with connect_unix(world.front.socket_path) as sock:
            reply = exchange(sock, request_bytes(PATH, f"mta-sts.{domain}"))
        return reply.status, reply.body

    def client(n: int) -> None:
        domain = (TENANT, STEADY)[n % 2]
        kind = "app" if n < 4 else "nginx"
        while not stop.is_set():
            started = time.monotonic()
            try:
                status, body = via_socket(domain) if kind == "app" else world.served(domain)
                outcome = 200 if (status, body) == (200, expected[domain]) else status
            except (OSError, NoReplyError):
                outcome = 0
            with lock:
                results.append((started, kind, outcome))

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(6)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)
        workers = world.front.workers_of_master()
        assert len(workers) == 2, workers
        victim = min(workers)
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        wait_until(
            lambda: len(world.front.workers_of_master() - {victim}) == 2,
            10,
            what="gunicorn to replace the killed worker",
        )
        time.sleep(1.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
    failed = [r for r in results if r[2] != 200]
    # Only requests in flight when the worker died may fail (on its socket,
    # or a 502 from nginx passing one on): at most one per client, and none
    # that started after the kill.
    assert len(failed) <= len(threads), failed
    assert all(start <= killed_at and outcome in (0, 502) for start, _, outcome in failed), failed
    after = [r for r in results if r[0] > killed_at]
    assert sum(kind == "app" for _, kind, _ in after) > 30
    assert all(outcome == 200 for _, _, outcome in after)
    for kind in ("app", "nginx"):
        assert sum(k == kind for _, k, _ in results) > 50
