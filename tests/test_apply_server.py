"""`apply` with everything real: `policy-host serve` (gunicorn; its workers
pick up the snapshot `apply` rewrites), knotd taking TSIG-signed updates, and
unbound in front of it as a sender's resolver.

The ordering test plays a sender (RFC 8461 section 5): a thread keeps
resolving ``_mta-sts.<domain>`` through unbound and fetching the policy,
and every id it sees must come with that id's policy or a newer one. A
negative control publishes an id before its policy is served, and the same
check must catch it, so the check is known to have teeth.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import dns.exception
import dns.resolver
import pytest
from support.applyenv import (
    CLI,
    Provider,
    make_provider,
    published_id,
    serve,
    tenant_text,
)
from support.dnsservers import DnsWorld
from support.procs import LOOPBACK, free_port, wait_until

from policy_host.fetch import fetch_from
from policy_host.model import Policy
from policy_host.publish.apply import run
from policy_host.publish.environment import real_environment
from policy_host.publish.update import TxtChange, build_update, id_record_value
from policy_host.render import render
from policy_host.state import published_ids, read_records

CUSTOMER = "customer.example"
CRASH_SCRIPT = Path(__file__).resolve().parent / "support" / "apply_crash.py"
DAY = 86400


def body(*mx: str, max_age: int) -> bytes:
    return render(Policy("enforce", mx, max_age))


def served(port: int, domain: str = CUSTOMER) -> tuple[int, bytes]:
    return fetch_from(f"http://{LOOPBACK}:{port}", f"mta-sts.{domain}", timeout=2.0)


class Sender(threading.Thread):
    """Resolves the TXT as a sender does and fetches the policy each time."""

    def __init__(self, resolver: dns.resolver.Resolver, port: int) -> None:
        super().__init__(daemon=True, name="sender")
        self.resolver = resolver
        self.port = port
        self.seen: list[tuple[str, int, bytes]] = []
        self.errors: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                answer = self.resolver.resolve(f"_mta-sts.{CUSTOMER}", "TXT")
            except dns.exception.DNSException as exc:
                self.errors.append(repr(exc))
                continue
            texts = [b"".join(r.strings).decode() for r in answer]  # type: ignore[attr-defined]
            policy_id = texts[0].removeprefix("v=STSv1; id=").removesuffix(";")
            # A sender with no cached policy for this id fetches it at once.
            try:
                status, got = served(self.port)
            except OSError as exc:
                self.errors.append(repr(exc))
                continue
            self.seen.append((policy_id, status, got))

    def ids(self) -> set[str]:
        return {policy_id for policy_id, _, _ in self.seen}

    def wait_for(self, policy_id: str) -> None:
        wait_until(lambda: policy_id in self.ids(), 10.0, what=f"the sender to see {policy_id}")

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=10.0)


def violations(seen: list[tuple[str, int, bytes]], published: list[tuple[str, bytes]]) -> list[str]:
    """Observations where an id came with an older policy than its own
    (``published`` lists (id, policy) in the order they were published)."""
    id_rank = {policy_id: rank for rank, (policy_id, _) in enumerate(published)}
    body_rank = {policy: rank for rank, (_, policy) in enumerate(published)}
    wrong = []
    for policy_id, status, got in seen:
        if policy_id not in id_rank:
            continue  # the id the zone started with, before any apply
        if status != 200 or body_rank.get(got, -1) < id_rank[policy_id]:
            wrong.append(f"id {policy_id} came with HTTP {status} {got!r}")
    return wrong


@pytest.fixture
def site(dns_world: DnsWorld, tmp_path: Path) -> Provider:
    port = free_port("tcp")
    return make_provider(
        tmp_path / "provider",
        primary_port=dns_world.knot.port,
        key=dns_world.key,
        bind_port=port,
        verify_timeout=10,
    )


def test_a_sender_that_sees_a_new_id_gets_the_new_policy(
    dns_world: DnsWorld, tmp_path: Path
) -> None:
    # Several workers: each picks up a change on its own, and a sender may
    # reach any of them.
    site = make_provider(
        tmp_path / "provider",
        primary_port=dns_world.knot.port,
        key=dns_world.key,
        bind_port=free_port("tcp"),
        verify_timeout=10,
        workers=3,
    )
    config = site.config()
    port = int(config.serve.bind.rpartition(":")[2])
    versions = [
        tenant_text("mx.customer.example", max_age=DAY),
        tenant_text("mx.customer.example", "mx2.customer.example", max_age=DAY),
        tenant_text("mx2.customer.example", max_age=2 * DAY),
    ]
    site.write(CUSTOMER, versions[0])
    published: list[tuple[str, bytes]] = []
    with serve(site, port):
        sender = Sender(dns_world.resolver(timeout=1.0), port)
        sender.start()
        try:
            env = real_environment(config)
            for text, policy in zip(
                versions,
                [
                    body("mx.customer.example", max_age=DAY),
                    body("mx.customer.example", "mx2.customer.example", max_age=DAY),
                    body("mx2.customer.example", max_age=2 * DAY),
                ],
                strict=True,
            ):
                site.write(CUSTOMER, text)
                report = run(config, env)
                assert report.failure is None, report.failure
                policy_id = published_ids(config)[CUSTOMER]
                published.append((policy_id, policy))
                sender.wait_for(policy_id)
            # Removal: `mode: none` is served (from the apply state, by the
            # real gunicorn master) before its id is published.
            site.remove(CUSTOMER)
            report = run(config, env)
            assert report.failure is None, report.failure
            published.append((published_ids(config)[CUSTOMER], render(Policy("none", (), 3600))))
            sender.wait_for(published[-1][0])
            assert violations(sender.seen, published) == []

            # Negative control: publish an id whose policy is not served.
            control = "control1"
            future = body("mx3.customer.example", max_age=DAY)
            update = build_update(
                "provider.example.",
                [TxtChange(f"{CUSTOMER}._mta-sts.provider.example.", id_record_value(control))],
                60,
                None,
            )
            update.use_tsig(dns_world.key.tsig_key())
            dns_world.knot.send_update(update)
            sender.wait_for(control)
            assert violations(sender.seen, [*published, (control, future)]) != []
        finally:
            sender.stop()
    assert not sender.is_alive()
    assert len(sender.seen) > 10, sender.errors[-5:]


STEPS = ["validate", "plan", "record", "reload", "verify", "publish", "confirm", "commit"]


def test_apply_killed_after_each_step_then_rerun_converges(
    dns_world: DnsWorld, site: Provider
) -> None:
    config = site.config()
    port = int(config.serve.bind.rpartition(":")[2])
    site.write(CUSTOMER, tenant_text("mx.customer.example", max_age=DAY))
    with serve(site, port):
        first = subprocess.run(
            [*CLI, "--config", str(site.config_path), "apply"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert first.returncode == 0, first.stderr
        for number, step in enumerate(STEPS, start=2):
            text = tenant_text("mx.customer.example", max_age=number * DAY)
            new = body("mx.customer.example", max_age=number * DAY)
            site.write(CUSTOMER, text)

            crashed = subprocess.run(
                [sys.executable, str(CRASH_SCRIPT), str(site.config_path), step],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert crashed.returncode == -9, (step, crashed.stderr)

            # Whatever id DNS shows now, its policy is what is served.
            pending = read_records(config.state_db)[CUSTOMER].pending
            in_dns = published_id(dns_world.knot, CUSTOMER)
            if pending is not None and in_dns == pending.policy_id:
                assert served(port) == (200, pending.body), step

            rerun = subprocess.run(
                [*CLI, "--config", str(site.config_path), "apply"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert rerun.returncode == 0, (step, rerun.stdout, rerun.stderr)
            final = published_ids(config)[CUSTOMER]
            assert published_id(dns_world.knot, CUSTOMER) == final, step
            assert served(port) == (200, new), step
            assert read_records(config.state_db)[CUSTOMER].pending is None
            if pending is not None:
                assert final == pending.policy_id, step
                assert "taking up an interrupted run" in rerun.stdout, step
        again = subprocess.run(
            [*CLI, "--config", str(site.config_path), "apply", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert again.returncode == 0, again.stderr
        assert '"changes": []' in again.stdout


def test_apply_without_a_running_server_fails_at_reload(
    dns_world: DnsWorld, site: Provider
) -> None:
    site.write(CUSTOMER, tenant_text("mx.customer.example", max_age=DAY))
    before = published_id(dns_world.knot, CUSTOMER)

    done = subprocess.run(
        [*CLI, "--config", str(site.config_path), "apply"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 3
    assert "apply stopped at step 'reload' for customer.example: " in done.stderr
    assert "is the server running?" in done.stderr
    assert published_id(dns_world.knot, CUSTOMER) == before


def test_progress_is_quiet_when_stderr_is_not_a_terminal(
    dns_world: DnsWorld, site: Provider
) -> None:
    config = site.config()
    port = int(config.serve.bind.rpartition(":")[2])
    for n in range(30):
        site.write(f"t{n}.example", tenant_text(f"mx.t{n}.example", max_age=DAY))
    with serve(site, port):
        started = time.monotonic()
        done = subprocess.run(
            [*CLI, "--config", str(site.config_path), "apply"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr
    assert done.stderr.strip().endswith("30 changes, 0 unchanged; served, published and confirmed")
    assert len(published_ids(config)) == 30
    assert elapsed < 30
