"""`apply`, `check` and `zone --servers` with a knot primary and a knot secondary.

RFC 8461 section 8: a change counts as done only when every authoritative
server of the id zone answers the new TXT. The primary takes the TSIG-signed
UPDATE and NOTIFYs the secondary, which transfers the zone (real knotd, both
on loopback); `apply` confirms at both, reports each one's delay, and records
the change as confirmed only then. A secondary that lags (frozen: it answers
from its old copy) or is down stops the run without committing; a rerun once
it is back confirms the same ids.
"""

from __future__ import annotations

import dataclasses
import io
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import pytest
from support.applyenv import (
    ID_ZONE,
    FakeClock,
    InProcessServer,
    Provider,
    environment,
    make_provider,
    published_id,
    tenant_text,
)
from support.dnsservers import TsigKey
from support.fixtures_dns import default_dns_zones, require_dns_binaries
from support.procs import LOOPBACK
from support.secondary import KnotSecondary, NotifyingKnot, knot_at_serial, primary_and_secondary

from policy_host.authdns import Nameserver, configured_servers, ns_servers, serial_behind
from policy_host.cli.apply import print_report
from policy_host.cli.main import main
from policy_host.publish.apply import run
from policy_host.publish.environment import Environment
from policy_host.publish.report import Report
from policy_host.publish.steps import COMMIT, CONFIRM, TLSRPT
from policy_host.read.config import ProviderConfig
from policy_host.state import ACTIVE, WITHDRAWING, hosted_tlsrpt, published_ids, read_records

CUSTOMER = "customer.example"
SECOND = "second.example"
ZONE = "provider.example."
WAIT = 2
TLSRPT_ZONE = "_smtp._tls.provider.example"


@dataclass
class Pair:
    primary: NotifyingKnot
    secondary: KnotSecondary
    provider: Provider
    config: ProviderConfig
    env: Environment

    def apply(self) -> Report:
        return run(self.config, self.env)

    def secondary_id(self, domain: str) -> str | None:
        response = self.secondary.query(f"{domain}.{ID_ZONE}.", "TXT")
        values = [b"".join(r.strings) for rrset in response.answer for r in rrset]
        assert len(values) <= 1, values
        return values[0].decode().removeprefix("v=STSv1; id=").removesuffix(";") if values else None


def authoritative_section(*servers: str, wait: int = WAIT) -> str:
    listed = ", ".join(f'"{s}"' for s in servers)
    return f"authoritative:\n  servers: [{listed}]\n  wait: {wait}\n"


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    require_dns_binaries(("knotd", "knotc"))
    key = TsigKey.generate()
    with primary_and_secondary(default_dns_zones(), key) as (primary, secondary):
        extra = authoritative_section(f"{LOOPBACK}:{secondary.port}")
        extra += f"tlsrpt:\n  rua: mailto:tlsrpt@provider.example\n  zone: {TLSRPT_ZONE}\n"
        provider = make_provider(tmp_path / "p", primary_port=primary.port, key=key, extra=extra)
        config = provider.config()
        env = environment(config, InProcessServer(config), FakeClock())
        env = dataclasses.replace(env, authorities=configured_servers(config))
        yield Pair(primary, secondary, provider, config, env)


def failed(report: Report, step: str) -> str:
    assert report.failure is not None, "the run should have stopped"
    assert report.failure.step == step, report.failure
    return report.failure.reason


def test_apply_confirms_at_the_secondary_and_reports_each_delay(pair: Pair) -> None:
    pair.provider.write(CUSTOMER, tenant_text("mx.customer.example"))
    report = pair.apply()
    assert report.failure is None, report.failure
    new_id = report.plan.changes[0].new_id
    assert pair.secondary_id(CUSTOMER) == new_id == published_id(pair.primary, CUSTOMER)
    assert published_ids(pair.config) == {CUSTOMER: new_id}
    ids = [a for a in report.propagation if a.step == CONFIRM]
    assert {a.zone for a in ids} == {ZONE}
    assert [a.step for a in report.propagation if a.step != CONFIRM] == [TLSRPT, TLSRPT]
    labels = [a.server for a in ids]
    assert labels == [
        f"primary {LOOPBACK}:{pair.primary.port}",
        f"{LOOPBACK}:{pair.secondary.port}",
    ]
    primary_serial = pair.primary.serial(ZONE)
    for arrival in ids:
        assert arrival.caught_up and arrival.delay is not None and 0 <= arrival.delay < WAIT
        assert arrival.serial is not None and arrival.primary_serial is not None
        assert not serial_behind(arrival.serial, arrival.primary_serial)
        assert arrival.primary_serial <= (primary_serial or 0)
    as_json = json.loads(json.dumps(report.as_dict()))
    shown = {p["server"]: p for p in as_json["propagation"] if p["step"] == CONFIRM}
    assert shown[labels[1]]["confirmed"] is True
    assert isinstance(shown[labels[1]]["delay_seconds"], float)
    out = io.StringIO()
    print_report(report, pair.config, out)
    assert f"authoritative servers of {ZONE}, ids (delay since the UPDATE):" in out.getvalue()
    assert f"    {labels[1]}: serial {ids[1].serial}, after " in out.getvalue()


def test_a_lagging_secondary_stops_apply_and_the_rerun_confirms_the_same_id(
    pair: Pair,
) -> None:
    pair.provider.write(CUSTOMER, tenant_text("mx.customer.example"))
    first = pair.apply()
    assert first.failure is None, first.failure
    old_id = first.plan.changes[0].new_id
    pair.secondary.freeze()
    pair.provider.write(CUSTOMER, tenant_text("mx.customer.example", "mx2.customer.example"))
    started = time.monotonic()
    report = pair.apply()
    elapsed = time.monotonic() - started
    reason = failed(report, CONFIRM)
    new_id = report.plan.changes[0].new_id
    assert WAIT <= elapsed < WAIT + 5
    primary_serial = pair.primary.serial(ZONE)
    lagging = pair.secondary.serial(ZONE)
    assert primary_serial is not None and lagging is not None
    assert serial_behind(lagging, primary_serial)
    label = f"{LOOPBACK}:{pair.secondary.port}"
    assert f"{label}: serial {lagging} is behind the primary's {primary_serial}" in reason
    behind = [a for a in report.propagation if a.server == label]
    assert len(behind) == 1 and not behind[0].caught_up and behind[0].serial == lagging
    # Published at the primary, not recorded as confirmed.
    assert published_id(pair.primary, CUSTOMER) == new_id
    assert pair.secondary_id(CUSTOMER) == old_id
    assert published_ids(pair.config) == {CUSTOMER: old_id}
    pending = read_records(pair.config.state_db)[CUSTOMER].pending
    assert pending is not None and pending.policy_id == new_id

    pair.secondary.thaw()
    again = pair.apply()
    assert again.failure is None, again.failure
    change = again.plan.changes[0]
    assert change.resumed and change.new_id == new_id
    assert pair.secondary_id(CUSTOMER) == new_id
    assert published_ids(pair.config) == {CUSTOMER: new_id}


def test_a_stopped_secondary_stops_apply_and_the_rerun_after_its_return_converges(
    pair: Pair,
) -> None:
    pair.secondary.stop()
    pair.provider.write(SECOND, tenant_text("mx.second.example"))
    report = pair.apply()
    reason = failed(report, CONFIRM)
    new_id = report.plan.changes[0].new_id
    assert f"{LOOPBACK}:{pair.secondary.port}: no answer to {ZONE} SOA" in reason
    assert published_ids(pair.config) == {}

    pair.secondary.start()
    again = pair.apply()
    assert again.failure is None, again.failure
    assert again.plan.changes[0].new_id == new_id
    assert pair.secondary_id(SECOND) == new_id
    assert published_ids(pair.config) == {SECOND: new_id}


def test_withdrawal_and_tlsrpt_records_wait_for_the_secondary_too(pair: Pair) -> None:
    pair.provider.write(CUSTOMER, tenant_text("mx.customer.example"))
    assert pair.apply().failure is None
    tlsrpt_name = f"{CUSTOMER}.{TLSRPT_ZONE}."
    assert hosted_tlsrpt(pair.config.state_db)
    pair.secondary.freeze()
    pair.provider.remove(CUSTOMER)
    report = pair.apply()
    failed(report, CONFIRM)
    withdraw_id = report.plan.changes[0].new_id
    assert read_records(pair.config.state_db)[CUSTOMER].status == ACTIVE

    # The ids go through with the secondary back; it lags again for the
    # hosted TLS-RPT record's deletion, which comes after them.
    pair.secondary.thaw()

    def lag_after_commit(step: str) -> None:
        if step == COMMIT:
            pair.secondary.freeze()

    second = run(pair.config, dataclasses.replace(pair.env, hook=lag_after_commit))
    assert second.plan.changes[0].new_id == withdraw_id
    assert pair.secondary_id(CUSTOMER) == withdraw_id
    assert read_records(pair.config.state_db)[CUSTOMER].status == WITHDRAWING
    assert f"{LOOPBACK}:{pair.secondary.port}: serial" in failed(second, TLSRPT)
    assert hosted_tlsrpt(pair.config.state_db), "recorded before the secondary shows it"
    assert pair.secondary.query(tlsrpt_name, "TXT").answer
    pair.secondary.thaw()
    third = pair.apply()
    assert third.failure is None, third.failure
    assert not hosted_tlsrpt(pair.config.state_db)
    assert not pair.secondary.query(tlsrpt_name, "TXT").answer


# -- check and zone --servers ---------------------------------------------------


def _txt(value: bytes) -> dns.rdtypes.ANY.TXT.TXT:
    return dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT, [value])


def test_zone_servers_and_check_report_a_lagging_and_a_disagreeing_server(
    pair: Pair, capsys: pytest.CaptureFixture[str]
) -> None:
    pair.provider.write(CUSTOMER, tenant_text("mx.customer.example"))
    assert pair.apply().failure is None
    config = str(pair.provider.config_path)
    capsys.readouterr()
    assert main(["--config", config, "zone", "--servers", "--json"]) == 0
    in_sync = json.loads(capsys.readouterr().out)
    assert in_sync["ok"] is True
    assert [s["status"] for s in in_sync["servers"]] == ["ok", "ok"]

    # The primary moves on; the frozen secondary keeps its copy.
    pair.secondary.freeze()
    name = f"{CUSTOMER}.{ID_ZONE}."
    update = pair.primary.update(ZONE)
    update.replace(name, 60, _txt(b"v=STSv1; id=elsewhere;"))
    assert pair.primary.send_update(update).rcode() == 0
    primary_serial = pair.primary.serial(ZONE)
    assert primary_serial is not None
    # A server that is no secondary at all: the zone at the primary's
    # serial, with another TXT record.
    zones = [z for z in default_dns_zones() if z.origin == ZONE]
    with knot_at_serial(zones, primary_serial) as rogue:
        servers = [f"{LOOPBACK}:{pair.secondary.port}", f"{LOOPBACK}:{rogue.port}"]
        text = pair.provider.config_path.read_text()
        head = text[: text.index("authoritative:")]
        tail = text[text.index("tlsrpt:") :]
        pair.provider.config_path.write_text(head + authoritative_section(*servers) + tail)

        assert main(["--config", config, "zone", "--servers", "--json"]) == 1
        found = json.loads(capsys.readouterr().out)
        by_server = {s["server"].split(" ")[-1]: s for s in found["servers"]}
        lag = by_server[servers[0]]
        assert lag["status"] == "lagging" and lag["primary_serial"] == primary_serial
        assert lag["serial"] < primary_serial and lag["disagree"] == [name]
        other = by_server[servers[1]]
        assert other["status"] == "disagrees" and other["serial"] == primary_serial
        assert other["disagree"] == [name]

        assert main(["--config", config, "zone", "--servers"]) == 1
        shown = capsys.readouterr().out
        assert f"fail  lagging      {servers[0]}: serial {lag['serial']}, behind" in shown
        assert f"fail  disagrees    {servers[1]}: serial {primary_serial}; other TXT" in shown

        argv = ["--config", config, "check", "--nameserver", f"{LOOPBACK}:{pair.primary.port}"]
        assert main([*argv, "--timeout", "0.5", "--json", "--no-apply"]) == 1
        checked = json.loads(capsys.readouterr().out)["authoritative"]
        assert checked["ok"] is False
        statuses = {s["server"].split(" ")[-1]: s["status"] for s in checked["servers"]}
        assert statuses == {
            f"{LOOPBACK}:{pair.primary.port}": "ok",
            servers[0]: "lagging",
            servers[1]: "disagrees",
        }


def test_the_ns_set_gives_the_servers_to_confirm_at(pair: Pair) -> None:
    # The harness zones name ns.dns-harness.invalid. (A 127.0.0.1, in the
    # root zone the primary serves) as their one NS; the secondary listens
    # on another port of that address.
    primary = Nameserver((LOOPBACK, pair.primary.port), 2.0, primary=True)
    found = ns_servers(primary, ZONE, lambda name: [], port=pair.secondary.port)
    assert [(s.name, s.server) for s in found] == [
        ("ns.dns-harness.invalid", (LOOPBACK, pair.secondary.port))
    ]
    assert found[0].serial(ZONE) == pair.primary.serial(ZONE)


@pytest.mark.parametrize(
    ("serial", "reference", "behind"),
    [(1, 2, True), (2, 2, False), (3, 2, False), (2**32 - 1, 5, True), (5, 2**32 - 1, False)],
)
def test_serials_are_compared_in_rfc_1982_order(serial: int, reference: int, behind: bool) -> None:
    assert serial_behind(serial, reference) is behind
