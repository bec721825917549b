"""`apply` against a real knotd taking TSIG-signed dynamic updates.

The server side is ``InProcessServer``: ``reload`` runs the very snapshot
compile the gunicorn master runs on SIGHUP (tenant files plus the apply
state), ``fetch`` answers as a worker would. Tests that need the real
gunicorn are in test_apply_server.py.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.rdatatype
import dns.zone
import pytest
from support.applyenv import (
    FakeClock,
    InProcessServer,
    Provider,
    environment,
    make_provider,
    provider_txt,
    published_id,
    tenant_text,
)
from support.dnsservers import DnsWorld, TsigKey

from policy_host.cli.main import main
from policy_host.publish import steps as apply_steps
from policy_host.publish.apply import apply_lock, run
from policy_host.publish.environment import Environment
from policy_host.publish.report import Report
from policy_host.publish.update import TsigKey as PublishKey
from policy_host.read.config import ProviderConfig
from policy_host.render import render
from policy_host.state import (
    ACTIVE,
    GONE,
    WITHDRAWING,
    history,
    published_ids,
    read_records,
)

CUSTOMER = "customer.example"
SECOND = "second.example"
CUSTOMER_POLICY = tenant_text("mx.customer.example", max_age=604800)
SECOND_POLICY = tenant_text("mx1.second.example", "mx2.second.example", max_age=86400)
DAY = 86400
WEEK = 7 * DAY


@dataclass
class World:
    dns: DnsWorld
    provider: Provider
    config: ProviderConfig
    server: InProcessServer
    clock: FakeClock
    env: Environment

    def apply(self, **env_changes: Any) -> Report:
        """One run; ``env_changes`` replace parts of the environment."""
        return run(self.config, dataclasses.replace(self.env, **env_changes))

    def ok(self) -> Report:
        report = self.apply()
        assert report.failure is None, report.failure
        return report

    def dns_id(self, domain: str) -> str | None:
        return published_id(self.dns.knot, domain)

    def served(self, domain: str) -> bytes | None:
        return self.server.body(domain)


def make_world(dns_world: DnsWorld, root: Path, **options: Any) -> World:
    provider = make_provider(
        root,
        primary_port=dns_world.knot.port,
        key=dns_world.key,
        **options,
    )
    config = provider.config()
    server = InProcessServer(config)
    clock = FakeClock()
    return World(dns_world, provider, config, server, clock, environment(config, server, clock))


@pytest.fixture
def world(dns_world: DnsWorld, tmp_path: Path) -> World:
    return make_world(dns_world, tmp_path / "provider")


def body_of(text: str) -> bytes:
    """The bytes a tenant file's policy is served as."""
    import yaml

    from policy_host.model import Policy

    data = yaml.safe_load(text)
    return render(Policy(data["mode"], tuple(data.get("mx", ())), data["max_age"]))


def none_body(max_age: int) -> bytes:
    return f"version: STSv1\r\nmode: none\r\nmax_age: {max_age}\r\n".encode()


def two_tenants(world: World) -> Report:
    world.provider.write(CUSTOMER, CUSTOMER_POLICY)
    world.provider.write(SECOND, SECOND_POLICY)
    return world.ok()


# -- publishing --------------------------------------------------------------


def test_first_apply_serves_then_publishes_every_tenant(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    report = two_tenants(world)

    assert report.steps == ["validate", "plan", "record", "reload", "verify", "publish",
                            "confirm", "commit"]  # fmt: skip
    assert [(c.domain, c.kind) for c in report.plan.changes] == [(CUSTOMER, "new"), (SECOND, "new")]
    ids = published_ids(world.config)
    assert set(ids) == {CUSTOMER, SECOND}
    for domain, text in ((CUSTOMER, CUSTOMER_POLICY), (SECOND, SECOND_POLICY)):
        assert world.dns_id(domain) == ids[domain]
        assert world.served(domain) == body_of(text)
    # One UPDATE for the batch, TSIG-signed, secret never in the text.
    assert len(report.updates) == 1
    assert "key hmac-sha256:policy-host-test-key. <secret not shown>" in report.updates[0]
    assert world.dns.key.secret not in report.updates[0]
    assert world.dns.key.secret not in caplog.text
    assert "apply: step commit done" in caplog.text


def test_txt_with_semicolon_space_reads_back_intact(world: World) -> None:
    world.provider.write(CUSTOMER, CUSTOMER_POLICY)
    world.ok()
    policy_id = published_ids(world.config)[CUSTOMER]
    expected = f"v=STSv1; id={policy_id};".encode()

    # From the primary, one string holding everything after the "; ".
    assert provider_txt(world.dns.knot, CUSTOMER) == [(expected,)]
    # And as a sender sees it: through a recursive resolver, via the
    # customer's CNAME into the provider zone.
    answer = world.dns.resolver().resolve(f"_mta-sts.{CUSTOMER}", "TXT")
    assert [b"".join(rdata.strings) for rdata in answer] == [expected]  # type: ignore[attr-defined]


def test_changed_policy_gets_a_new_id_and_others_keep_theirs(world: World) -> None:
    two_tenants(world)
    before = published_ids(world.config)
    changed = tenant_text("mx.customer.example", max_age=2 * WEEK)
    world.provider.write(CUSTOMER, changed)

    report = world.ok()

    after = published_ids(world.config)
    assert [(c.domain, c.kind, c.old_id) for c in report.plan.changes] == [
        (CUSTOMER, "change", before[CUSTOMER])
    ]
    assert after[CUSTOMER] != before[CUSTOMER]
    assert after[SECOND] == before[SECOND]
    assert world.dns_id(CUSTOMER) == after[CUSTOMER]
    assert world.served(CUSTOMER) == body_of(changed)


def test_rerun_without_changes_touches_nothing(world: World) -> None:
    two_tenants(world)
    ids = published_ids(world.config)
    serial = world.dns.knot.serial("provider.example")
    reloads = world.server.reloads

    report = world.ok()

    assert report.plan.changes == ()
    assert report.steps == ["validate", "plan"]
    assert published_ids(world.config) == ids
    assert world.dns.knot.serial("provider.example") == serial
    assert world.server.reloads == reloads


def test_changes_within_one_second_still_get_distinct_ids(world: World) -> None:
    # The clock stands still: ids must differ anyway, even going back to
    # bytes published before (A -> B -> A).
    seen = []
    for max_age in (DAY, 2 * DAY, DAY, 2 * DAY):
        world.provider.write(CUSTOMER, tenant_text("mx.customer.example", max_age=max_age))
        world.ok()
        seen.append(published_ids(world.config)[CUSTOMER])
    assert len(set(seen)) == 4
    assert all(i.isalnum() and i.isascii() and 1 <= len(i) <= 32 for i in seen)


def test_dropped_mx_is_reported_with_the_old_max_age(world: World) -> None:
    two_tenants(world)
    world.provider.write(SECOND, tenant_text("mx2.second.example", max_age=86400))

    report = world.ok()

    assert len(report.plan.notes) == 1
    note = report.plan.notes[0]
    assert note.startswith("second.example: mx no longer lists mx1.second.example")
    assert "up to its max_age of 86400 s" in note


# -- removal -----------------------------------------------------------------


def test_removed_tenant_is_withdrawn_then_deleted_after_its_longest_max_age(
    world: World,
) -> None:
    two_tenants(world)
    # A longer max_age once published counts, even if it was lowered later.
    world.provider.write(SECOND, tenant_text("mx1.second.example", max_age=2 * WEEK))
    world.ok()
    world.provider.write(SECOND, SECOND_POLICY)
    world.ok()
    old_id = published_ids(world.config)[SECOND]

    world.provider.remove(SECOND)
    world.clock.advance(60)
    started = world.clock.now
    report = world.ok()

    [change] = report.plan.changes
    assert (change.domain, change.kind, change.old_id) == (SECOND, "withdraw", old_id)
    withdrawal_id = published_ids(world.config)[SECOND]
    assert withdrawal_id != old_id
    assert world.dns_id(SECOND) == withdrawal_id
    # Served from the apply state: mode none with the short max_age.
    assert world.served(SECOND) == none_body(3600)
    record = read_records(world.config.state_db)[SECOND]
    assert record.status == WITHDRAWING
    assert record.withdrawal_ends() == started + 2 * WEEK
    assert [(w.domain, w.ends) for w in report.plan.withdrawing] == [(SECOND, started + 2 * WEEK)]

    # Still inside the withdrawal period: reported, nothing changes.
    world.clock.advance(2 * WEEK - 1)
    report = world.ok()
    assert report.plan.changes == ()
    assert [w.domain for w in report.plan.withdrawing] == [SECOND]
    assert world.dns_id(SECOND) == withdrawal_id
    assert world.served(SECOND) == none_body(3600)

    # Over: the TXT goes first, then the policy stops being served.
    world.clock.advance(1)
    report = world.ok()
    assert [(c.domain, c.kind) for c in report.plan.changes] == [(SECOND, "delete")]
    assert report.steps[-4:] == ["publish", "confirm", "commit", "unserve"]
    assert provider_txt(world.dns.knot, SECOND) == []
    assert world.served(SECOND) is None
    assert read_records(world.config.state_db)[SECOND].status == GONE
    assert set(published_ids(world.config)) == {CUSTOMER}
    # The other tenant never moved.
    assert world.served(CUSTOMER) == body_of(CUSTOMER_POLICY)

    # And after that, nothing more to do.
    assert world.ok().plan.changes == ()
    events = [e.event for e in history(world.config.state_db, SECOND)]
    assert events[-4:] == ["begin withdraw", "commit withdraw", "begin delete", "commit delete"]


def test_tenant_file_back_during_withdrawal_ends_the_withdrawal(world: World) -> None:
    two_tenants(world)
    world.provider.remove(SECOND)
    world.ok()
    assert read_records(world.config.state_db)[SECOND].status == WITHDRAWING

    world.provider.write(SECOND, SECOND_POLICY)
    report = world.ok()

    assert [(c.domain, c.kind) for c in report.plan.changes] == [(SECOND, "change")]
    record = read_records(world.config.state_db)[SECOND]
    assert (record.status, record.withdrawal_started) == (ACTIVE, None)
    assert world.served(SECOND) == body_of(SECOND_POLICY)
    assert world.dns_id(SECOND) == record.policy_id


def test_removed_file_keeps_its_policy_served_until_apply_withdraws_it(world: World) -> None:
    two_tenants(world)
    world.provider.remove(SECOND)
    # A plain reload (no apply): the tenant does not just vanish.
    world.server.reload()
    assert world.served(SECOND) == body_of(SECOND_POLICY)


# -- refused updates ---------------------------------------------------------


@pytest.mark.parametrize(
    "wrong",
    [
        pytest.param(
            lambda key: PublishKey(key.name, key.algorithm, TsigKey().secret), id="secret"
        ),
        pytest.param(lambda key: PublishKey("unknown-key.", key.algorithm, key.secret), id="name"),
    ],
)
def test_update_with_a_bad_key_is_reported_and_not_committed(
    world: World, wrong: Callable[[TsigKey], PublishKey]
) -> None:
    two_tenants(world)
    before = published_ids(world.config)
    world.provider.write(CUSTOMER, tenant_text("mx.customer.example", max_age=2 * WEEK))
    bad = environment(world.config, world.server, world.clock, key=wrong(world.dns.key))

    report = world.apply(dns=bad.dns)

    assert report.failure is not None
    assert (report.failure.step, report.failure.domains) == ("publish", [CUSTOMER])
    assert "refused the UPDATE for zone provider.example.: TSIG BAD" in str(report.failure)
    assert world.dns.key.secret not in str(report.failure)
    assert published_ids(world.config) == before
    assert world.dns_id(CUSTOMER) == before[CUSTOMER]
    pending = read_records(world.config.state_db)[CUSTOMER].pending
    assert pending is not None and pending.step == "served"

    # Fixed key: the rerun publishes the id the failed run had prepared.
    report = world.ok()
    assert report.plan.changes[0].resumed
    assert published_ids(world.config)[CUSTOMER] == pending.policy_id == world.dns_id(CUSTOMER)


@pytest.mark.parametrize(
    ("id_zone", "step", "message"),
    [
        # customer.example is served by knotd but takes no updates.
        ("_ids.customer.example", "publish", "refused the UPDATE for zone customer.example."),
        # knotd serves no such zone (its root zone answers for it).
        ("_mta-sts.elsewhere.example", "publish", "refused the UPDATE for zone ."),
        # A CNAME is no place for records: caught before anything changes.
        ("_mta-sts.customer.example", "plan", "is a CNAME at primary"),
    ],
)
def test_update_to_the_wrong_zone_is_refused(
    dns_world: DnsWorld, tmp_path: Path, id_zone: str, step: str, message: str
) -> None:
    world = make_world(dns_world, tmp_path / "p", id_zone=id_zone)
    world.provider.write(CUSTOMER, CUSTOMER_POLICY)

    report = world.apply()

    assert report.failure is not None
    assert (report.failure.step, report.failure.domains) == (step, [CUSTOMER])
    assert message in str(report.failure)
    if step == "plan":
        assert not world.config.state_db.exists() or not read_records(world.config.state_db)
        return
    assert published_ids(world.config) == {}
    record = read_records(world.config.state_db)[CUSTOMER]
    assert (record.status, record.policy_id) == ("unpublished", None)


# -- crashes -------------------------------------------------------------------


class Crash(Exception):
    """Stands for the process dying right after a step."""


def crash_after(step: str) -> Callable[[str], None]:
    def hook(done: str) -> None:
        if done == step:
            raise Crash(step)

    return hook


def assert_never_new_id_with_old_policy(world: World, bodies: dict[str, bytes]) -> None:
    """RFC 8461 section 8: whatever id DNS shows, its policy is served."""
    for domain in (CUSTOMER, SECOND):
        policy_id = world.dns_id(domain)
        if policy_id in bodies:
            assert world.served(domain) == bodies[policy_id], (domain, policy_id)


RUN_STEPS = ["validate", "plan", "record", "reload", "verify", "publish", "confirm", "commit"]


@pytest.mark.parametrize("step", RUN_STEPS)
def test_crash_after_each_step_then_rerun_converges(world: World, step: str) -> None:
    two_tenants(world)
    changed = tenant_text("mx.customer.example", "mx2.customer.example", max_age=WEEK)
    world.provider.write(CUSTOMER, changed)

    with pytest.raises(Crash):
        world.apply(hook=crash_after(step))

    pending = read_records(world.config.state_db)[CUSTOMER].pending
    # Pending from the moment it is recorded until it is committed.
    assert (pending is not None) == (step in ("record", "reload", "verify", "publish", "confirm"))
    bodies = {pending.policy_id: pending.body} if pending and pending.policy_id else {}
    assert_never_new_id_with_old_policy(world, bodies)

    report = world.ok()

    final = published_ids(world.config)[CUSTOMER]
    assert world.dns_id(CUSTOMER) == final
    assert world.served(CUSTOMER) == body_of(changed)
    assert read_records(world.config.state_db)[CUSTOMER].pending is None
    if pending is not None:
        # The interrupted change is taken up with its own id.
        assert final == pending.policy_id
        assert report.plan.changes[0].resumed
    # And then there is nothing left to do.
    assert world.ok().plan.changes == ()


# A deletion has nothing new to serve first: no reload before the UPDATE.
@pytest.mark.parametrize("step", ["plan", "record", "publish", "confirm", "commit", "unserve"])
def test_crash_while_deleting_a_withdrawn_tenant_then_rerun_converges(
    world: World, step: str
) -> None:
    two_tenants(world)
    world.provider.remove(SECOND)
    world.ok()
    world.clock.advance(DAY)  # SECOND's longest max_age

    with pytest.raises(Crash):
        world.apply(hook=crash_after(step))
    world.ok()

    assert provider_txt(world.dns.knot, SECOND) == []
    assert world.served(SECOND) is None
    assert read_records(world.config.state_db)[SECOND].status == GONE
    assert world.ok().steps == ["validate", "plan"]


@pytest.mark.parametrize("step", ["record", "reload", "publish", "commit"])
def test_crash_while_withdrawing_then_rerun_converges(world: World, step: str) -> None:
    two_tenants(world)
    world.provider.remove(SECOND)

    with pytest.raises(Crash):
        world.apply(hook=crash_after(step))
    # Between the runs the withdrawal policy is what is served.
    world.server.reload()
    assert world.served(SECOND) == none_body(3600)
    world.ok()

    record = read_records(world.config.state_db)[SECOND]
    assert record.status == WITHDRAWING
    assert world.dns_id(SECOND) == record.policy_id
    assert world.served(SECOND) == none_body(3600)


def test_policy_changed_again_after_a_crash_gets_a_fresh_id(world: World) -> None:
    two_tenants(world)
    world.provider.write(CUSTOMER, tenant_text("mx.customer.example", max_age=2 * WEEK))
    with pytest.raises(Crash):
        world.apply(hook=crash_after("publish"))
    interrupted = read_records(world.config.state_db)[CUSTOMER].pending
    assert interrupted is not None and world.dns_id(CUSTOMER) == interrupted.policy_id

    # Back to the bytes committed before: the interrupted id is in DNS with
    # the other bytes, so these need an id of their own.
    world.provider.write(CUSTOMER, CUSTOMER_POLICY)
    report = world.ok()

    final = published_ids(world.config)[CUSTOMER]
    assert not report.plan.changes[0].resumed
    assert final != interrupted.policy_id
    assert world.dns_id(CUSTOMER) == final
    assert world.served(CUSTOMER) == body_of(CUSTOMER_POLICY)


def test_verify_timeout_stops_before_publishing(dns_world: DnsWorld, tmp_path: Path) -> None:
    world = make_world(dns_world, tmp_path / "p", verify_timeout=1)
    two_tenants(world)
    before = published_ids(world.config)
    world.provider.write(CUSTOMER, tenant_text("mx.customer.example", max_age=2 * WEEK))

    def stale(upstream: str, host: str) -> tuple[int, bytes]:
        return 200, body_of(CUSTOMER_POLICY)  # an upstream that never reloads

    report = world.apply(fetch=stale)

    assert report.failure is not None
    assert (report.failure.step, report.failure.domains) == ("verify", [CUSTOMER])
    assert "nothing was published" in str(report.failure)
    assert world.dns_id(CUSTOMER) == before[CUSTOMER]
    assert published_ids(world.config) == before


# -- the command line -----------------------------------------------------------


def cli(world: World, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(["--config", str(world.provider.config_path), *args])
    out, err = capsys.readouterr()
    return status, out, err


def test_dry_run_prints_the_plan_and_changes_nothing(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    two_tenants(world)
    old = published_ids(world.config)[CUSTOMER]
    world.provider.write(CUSTOMER, tenant_text("mx.customer.example", max_age=2 * WEEK))
    db = world.config.state_db.read_bytes()
    serial = world.dns.knot.serial("provider.example")

    status, out, err = cli(world, capsys, "apply", "--dry-run")

    assert status == 0, err
    assert f"customer.example: change: would change id {old} -> " in out
    assert "    -max_age: 604800\n    +max_age: 1209600\n" in out
    assert "    zone provider.example.\n" in out
    assert "    key hmac-sha256:policy-host-test-key. <secret not shown>\n" in out
    assert "    update delete customer.example._mta-sts.provider.example. TXT\n" in out
    assert '    update add customer.example._mta-sts.provider.example. 60 TXT "v=STSv1; id=' in out
    assert "nothing was changed" in err
    assert world.dns.key.secret not in out + err
    assert world.config.state_db.read_bytes() == db
    assert world.dns.knot.serial("provider.example") == serial
    assert published_ids(world.config)[CUSTOMER] == old


def test_dry_run_json_on_a_fresh_tree_creates_nothing(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    world.provider.write(CUSTOMER, CUSTOMER_POLICY)

    status, out, _ = cli(world, capsys, "apply", "--dry-run", "--json")

    report = json.loads(out)
    assert status == 0
    assert report["dry_run"] and report["ok"]
    assert [(c["domain"], c["action"], c["old_id"]) for c in report["changes"]] == [
        (CUSTOMER, "new", None)
    ]
    assert "+mode: enforce" in report["changes"][0]["diff"]
    assert len(report["dns_updates"]) == 1
    assert not world.config.state_dir.exists()


def test_key_file_others_can_read_is_refused(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    world.provider.write(CUSTOMER, CUSTOMER_POLICY)
    key_file = world.provider.root / "tsig.key"
    key_file.chmod(0o644)

    status, out, err = cli(world, capsys, "apply")

    assert status == 2
    assert f"{key_file}: TSIG key file is accessible by group or others (mode 0644)" in err
    assert f"chmod 600 {key_file}" in err
    assert world.dns.key.secret not in out + err
    assert not world.config.state_dir.exists()


def test_validation_error_stops_the_run_before_anything_changes(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    two_tenants(world)
    db = world.config.state_db.read_bytes()
    world.provider.write(CUSTOMER, tenant_text("mx.customer.example", max_age=2 * WEEK))
    world.provider.write("broken.example", "mode: enforced\nmax_age: 1\n")

    status, _, err = cli(world, capsys, "apply")

    assert status == 1
    assert "broken.example.yaml:1: mode: expected one of enforce, testing, none" in err
    assert "apply stopped at step 'validate'" in err
    assert world.config.state_db.read_bytes() == db


def test_two_applies_never_overlap(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    world.provider.write(CUSTOMER, CUSTOMER_POLICY)
    with apply_lock(world.config.state_dir):
        status, _, err = cli(world, capsys, "apply")
    assert status == 3
    assert f"another policy-host apply is running (pid {os.getpid()}" in err
    assert published_ids(world.config) == {}


def test_zone_prints_the_published_records_in_zone_file_form(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    two_tenants(world)
    world.provider.remove(SECOND)
    world.ok()
    ids = published_ids(world.config)

    status, out, _ = cli(world, capsys, "zone")

    assert status == 0
    assert "; second.example: withdrawing (mode none) until " in out
    zone = dns.zone.from_text(out, origin="provider.example.", relativize=False, check_origin=False)
    for domain in (CUSTOMER, SECOND):
        rdataset = zone.find_rdataset(f"{domain}._mta-sts.provider.example.", dns.rdatatype.TXT)
        assert rdataset.ttl == 60
        assert [b"".join(r.strings) for r in rdataset] == [f"v=STSv1; id={ids[domain]};".encode()]


def test_without_a_primary_apply_serves_and_zone_lists_the_ids(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    provider = make_provider(tmp_path / "manual", primary_port=None, key=None)
    provider.write(CUSTOMER, CUSTOMER_POLICY)
    config = provider.config()
    server = InProcessServer(config)
    env = environment(config, server, FakeClock())

    report = run(config, env)

    assert report.failure is None and report.manual_dns
    assert report.steps == ["validate", "plan", "record", "reload", "verify", "commit"]
    assert server.body(CUSTOMER) == body_of(CUSTOMER_POLICY)
    # Not confirmed in DNS, so not "published" for `check`...
    assert published_ids(config) == {}
    # ...but `zone` prints it for the operator to load.
    assert main(["--config", str(provider.config_path), "zone"]) == 0
    policy_id = read_records(config.state_db)[CUSTOMER].policy_id
    assert (
        f'customer.example._mta-sts.provider.example. 300 IN TXT "v=STSv1; id={policy_id};"'
        in capsys.readouterr().out
    )


def test_steps_are_the_documented_ones() -> None:
    # "nodes" runs only with serving nodes (tests/test_nodes_netns.py).
    assert (*RUN_STEPS[:5], "nodes", *RUN_STEPS[5:], "unserve", "tlsrpt") == apply_steps.STEPS


def test_show_gives_the_published_id_and_the_safe_mx_migration(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    two_tenants(world)
    world.provider.remove(SECOND)
    world.ok()
    ids = published_ids(world.config)

    status, out, _ = cli(world, capsys, "show", CUSTOMER)
    assert status == 0
    assert (
        f'customer.example._mta-sts.provider.example.  60  IN  TXT  "v=STSv1; id={ids[CUSTOMER]};"'
        in out
    )
    assert "; Moving MX hosts safely (RFC 8461 section 8): add the new MX to mx: and run" in out
    assert "wait max_age (604800 s)" in out

    status, out, _ = cli(world, capsys, "show", SECOND)
    assert status == 0
    assert "(tenant file removed: 'policy-host apply' withdraws it, then deletes it)" in out
    assert "mode: none\nmax_age: 3600\n" in out
    assert f'"v=STSv1; id={ids[SECOND]};"' in out
