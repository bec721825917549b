"""Hosted TLS-RPT records (RFC 8460 section 3): `apply` publishes
``<domain>.<tlsrpt.zone>`` TXT by TSIG-signed UPDATE to a real knotd,
rewrites every one when ``tlsrpt.rua`` changes, deletes it on withdrawal;
`zone` and `show` print it; `check` through unbound judges the CNAME."""

from __future__ import annotations

import json
from pathlib import Path

import dns.rdatatype
import pytest
from support.dnsservers import DnsWorld, KnotServer, Zone, query
from support.fixtures_dns import default_dns_zones
from test_apply_dns import CUSTOMER, CUSTOMER_POLICY, SECOND, SECOND_POLICY, World, make_world

from policy_host.cli.main import main
from policy_host.publish.apply import run
from policy_host.state import hosted_tlsrpt

RUA = ("mailto:tlsrpt@provider.example", "https://tlsrpt.provider.example/v1/report")
ZONE = "_smtp._tls.provider.example"
# The record holds "; " (zone-file text would cut it there).
VALUE = b"v=TLSRPTv1; rua=mailto:tlsrpt@provider.example,https://tlsrpt.provider.example/v1/report"


def tlsrpt_section(rua: tuple[str, ...] = RUA) -> str:
    lines = "".join(f"    - {uri}\n" for uri in rua)
    return f"tlsrpt:\n  rua:\n{lines}  zone: {ZONE}\n"


def hosted_txt(knot: KnotServer, domain: str) -> list[bytes]:
    """The TXT values at ``<domain>.<tlsrpt zone>``, straight from knotd."""
    response = query(knot.port, f"{domain}.{ZONE}.", "TXT", recursion=False)
    return [
        b"".join(rdata.strings)
        for rrset in response.answer
        if rrset.rdtype == dns.rdatatype.TXT
        for rdata in rrset
    ]


@pytest.fixture
def dns_zones() -> list[Zone]:
    # The customer chose the third CNAME; SECOND keeps its own record.
    zones = default_dns_zones()
    customer = zones[0]
    zones[0] = customer.with_records(
        *customer.records, f"_smtp._tls CNAME customer.example.{ZONE}."
    )
    zones.append(
        Zone(
            "second.example",
            [
                "_mta-sts CNAME second.example._mta-sts.provider.example.",
                "mta-sts CNAME mta-sts.provider.example.",
                "@ MX 10 mx1.second.example.",
                "mx1 A 127.0.0.1",
                '_smtp._tls TXT "v=TLSRPTv1; rua=mailto:reports@second.example"',
            ],
        )
    )
    return zones


@pytest.fixture
def world(dns_world: DnsWorld, tmp_path: Path) -> World:
    return make_world(dns_world, tmp_path / "provider", extra=tlsrpt_section())


def set_rua(world: World, rua: tuple[str, ...]) -> None:
    text = world.provider.config_path.read_text()
    head = text[: text.index("tlsrpt:")]
    world.provider.config_path.write_text(head + tlsrpt_section(rua))
    world.config = world.provider.config()


def test_apply_publishes_a_hosted_record_per_tenant_with_its_semicolon(world: World) -> None:
    world.provider.write(CUSTOMER, CUSTOMER_POLICY)
    world.provider.write(SECOND, SECOND_POLICY)
    report = world.ok()

    assert report.steps[-2:] == ["commit", "tlsrpt"]
    assert [(c.domain, c.value) for c in report.tlsrpt] == [(CUSTOMER, VALUE), (SECOND, VALUE)]
    for domain in (CUSTOMER, SECOND):
        assert hosted_txt(world.dns.knot, domain) == [VALUE]
    assert hosted_tlsrpt(world.config.state_db) == {CUSTOMER: VALUE, SECOND: VALUE}
    # The ids' UPDATE, then one for the hosted records, TSIG-signed.
    assert len(report.updates) == 2
    assert f"update add {CUSTOMER}.{ZONE}. 60 TXT" in report.updates[1]
    assert "<secret not shown>" in report.updates[1]

    again = world.ok()
    assert again.tlsrpt == () and "tlsrpt" not in again.steps and again.updates == []


def test_a_new_rua_rewrites_every_hosted_record_in_one_update(world: World) -> None:
    world.provider.write(CUSTOMER, CUSTOMER_POLICY)
    world.provider.write(SECOND, SECOND_POLICY)
    world.ok()
    set_rua(world, ("mailto:reports@provider.example",))
    report = run(world.config, world.env)
    assert report.failure is None, report.failure

    new = b"v=TLSRPTv1; rua=mailto:reports@provider.example"
    assert report.plan.changes == ()  # no policy changed: only the hosted records
    assert [c.domain for c in report.tlsrpt] == [CUSTOMER, SECOND]
    assert len(report.updates) == 1
    for domain in (CUSTOMER, SECOND):
        assert hosted_txt(world.dns.knot, domain) == [new]


def test_withdrawal_removes_the_hosted_record(world: World) -> None:
    world.provider.write(CUSTOMER, CUSTOMER_POLICY)
    world.provider.write(SECOND, SECOND_POLICY)
    world.ok()
    world.provider.remove(SECOND)
    report = world.ok()

    assert [(c.domain, c.value) for c in report.tlsrpt] == [(SECOND, None)]
    assert hosted_txt(world.dns.knot, SECOND) == []
    assert hosted_txt(world.dns.knot, CUSTOMER) == [VALUE]
    assert hosted_tlsrpt(world.config.state_db) == {CUSTOMER: VALUE}


def test_dry_run_shows_the_hosted_update_and_changes_nothing(world: World) -> None:
    world.provider.write(CUSTOMER, CUSTOMER_POLICY)
    report = run(world.config, world.env, dry_run=True)

    assert [c.domain for c in report.tlsrpt] == [CUSTOMER]
    assert any(f"{CUSTOMER}.{ZONE}." in text for text in report.updates)
    assert hosted_txt(world.dns.knot, CUSTOMER) == []
    assert hosted_tlsrpt(world.config.state_db) == {}


def test_zone_and_show_print_the_hosted_record_and_both_ways(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    world.provider.write(CUSTOMER, CUSTOMER_POLICY)
    world.ok()
    capsys.readouterr()
    config = str(world.provider.config_path)

    assert main(["--config", config, "zone"]) == 0
    out = capsys.readouterr().out
    assert (
        f'{CUSTOMER}.{ZONE}. 60 IN TXT "v=TLSRPTv1; rua=mailto:tlsrpt@provider.example,'
        'https://tlsrpt.provider.example/v1/report"'
    ) in out

    assert main(["--config", config, "show", CUSTOMER]) == 0
    out = capsys.readouterr().out
    assert f"_smtp._tls.{CUSTOMER}.  3600  IN  CNAME  {CUSTOMER}.{ZONE}." in out
    assert f'_smtp._tls.{CUSTOMER}.  3600  IN  TXT  "{VALUE.decode()}"' in out
    assert f'{CUSTOMER}.{ZONE}.  60  IN  TXT  "{VALUE.decode()}"' in out

    assert main(["--config", config, "show", CUSTOMER, "--json"]) == 0
    ways = json.loads(capsys.readouterr().out)["tlsrpt"]
    assert ways["cname"] == f"{CUSTOMER}.{ZONE}."
    assert ways["published_value"] == ways["own_record"] == VALUE.decode()


def check_json(world: World, capsys: pytest.CaptureFixture[str]) -> dict[str, list[str]]:
    """`check --json` through unbound: each tenant's tlsrpt reason codes."""
    capsys.readouterr()
    main(
        [
            "--config",
            str(world.provider.config_path),
            "check",
            "--json",
            "--nameserver",
            f"127.0.0.1:{world.dns.unbound.port}",
        ]
    )
    data = json.loads(capsys.readouterr().out)
    return {
        tenant["domain"]: [r["code"] for r in tenant["reasons"] if r["code"].startswith("tlsrpt")]
        for tenant in data["tenants"]
    }


def test_check_judges_the_cname_to_us_and_the_customers_own_record(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    world.provider.write(CUSTOMER, CUSTOMER_POLICY)
    world.provider.write(SECOND, SECOND_POLICY)
    # Before apply the CNAME leads to a record not published yet.
    assert check_json(world, capsys)[CUSTOMER] == ["tlsrpt_missing"]
    world.ok()
    codes = check_json(world, capsys)
    # CUSTOMER's CNAME reaches our published record: nothing to say.
    assert codes[CUSTOMER] == []
    # SECOND's own record sends reports elsewhere: a warning, since it
    # expects reports (its file names no rua of its own).
    assert codes[SECOND] == ["tlsrpt_not_ours"]
    # A tenant file naming its own destinations expects none from us.
    world.provider.write(SECOND, SECOND_POLICY + "tlsrpt_rua: mailto:reports@second.example\n")
    assert check_json(world, capsys)[SECOND] == []
    # After a rua change not yet applied, the hosted record is stale.
    set_rua(world, ("mailto:reports@provider.example",))
    assert check_json(world, capsys)[CUSTOMER] == ["tlsrpt_hosted_stale"]
