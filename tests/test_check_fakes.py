"""`check` with its resolver and fetcher replaced by fakes: the injection
points work, and the cases a shared test zone cannot play are covered."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import dns.rdata
import pytest

from policy_host.check.checks import check_tenant
from policy_host.check.context import CheckContext
from policy_host.check.dnsclient import NODATA, NXDOMAIN, OK, DnsAnswer
from policy_host.fetch import FetchResult
from policy_host.model import Policy, Tenant
from policy_host.read.config import ProviderConfig, load_config
from policy_host.render import render

POLICY = Policy("enforce", ("mx1.customer.example",), 604800)
TENANT = Tenant("customer.example", POLICY, source="test")
CNAME = "customer.example._mta-sts.provider.example"


@pytest.fixture
def config(tmp_path: Path) -> ProviderConfig:
    (tmp_path / "tenants").mkdir()
    (tmp_path / "config.yaml").write_text(
        "tenants_dir: tenants\npolicy_host: mta-sts.provider.example\n"
        "id_zone: _mta-sts.provider.example\n"
    )
    return load_config(tmp_path / "config.yaml")


def rdata(rdtype: str, *texts: str) -> tuple[dns.rdata.Rdata, ...]:
    return tuple(dns.rdata.from_text("IN", rdtype, text) for text in texts)


class FakeDns:
    """Answers from a table; anything not in it is NXDOMAIN."""

    def __init__(self, answers: dict[tuple[str, str], DnsAnswer]) -> None:
        self.answers = answers
        self.asked: list[tuple[str, str]] = []

    async def lookup(self, name: str, rdtype: str) -> DnsAnswer:
        self.asked.append((name, rdtype))
        return self.answers.get((name, rdtype), DnsAnswer(name, rdtype, NXDOMAIN))


def healthy(**changes: DnsAnswer) -> FakeDns:
    answers = {
        ("mta-sts.customer.example", "A"): DnsAnswer(
            "mta-sts.customer.example",
            "A",
            OK,
            ("mta-sts.provider.example",),
            rdata("A", "192.0.2.1", "192.0.2.2"),
        ),
        ("_mta-sts.customer.example", "TXT"): DnsAnswer(
            "_mta-sts.customer.example", "TXT", OK, (CNAME,), rdata("TXT", '"v=STSv1; id=1;"')
        ),
        ("customer.example", "MX"): DnsAnswer(
            "customer.example", "MX", OK, (), rdata("MX", "10 mx1.customer.example.")
        ),
        ("_smtp._tls.customer.example", "TXT"): DnsAnswer(
            "_smtp._tls.customer.example",
            "TXT",
            OK,
            (),
            rdata("TXT", '"v=TLSRPTv1; rua=mailto:t@customer.example"'),
        ),
    }
    for answer in changes.values():
        answers[(answer.name, answer.rdtype)] = answer
    return FakeDns(answers)


class RecordingFetcher:
    connect: tuple[str, int] | None = None

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.calls: list[tuple[str, list[str]]] = []

    async def fetch(self, host: str, addresses: Sequence[str]) -> FetchResult:
        self.calls.append((host, list(addresses)))
        return FetchResult(host, addresses[0], 443, 200, "text/plain", body=self.body)


def test_https_goes_to_the_addresses_dns_gave(config: ProviderConfig) -> None:
    fetcher = RecordingFetcher(render(POLICY))
    ctx = CheckContext(
        config=config, lookup=healthy(), expected_ids={"customer.example": "1"}, fetcher=fetcher
    )
    report = asyncio.run(check_tenant(ctx, TENANT))
    assert report.reasons == []
    assert fetcher.calls == [("mta-sts.customer.example", ["192.0.2.1", "192.0.2.2"])]


def test_no_fetch_when_the_policy_host_is_wrong(config: ProviderConfig) -> None:
    fetcher = RecordingFetcher(render(POLICY))
    missing = DnsAnswer("mta-sts.customer.example", "A", NXDOMAIN)
    ctx = CheckContext(
        config=config,
        lookup=healthy(host=missing),
        expected_ids={"customer.example": "1"},
        fetcher=fetcher,
    )
    report = asyncio.run(check_tenant(ctx, TENANT))
    assert report.codes == ["policy_host_nxdomain"]
    assert fetcher.calls == []


def test_our_policy_host_without_address(config: ProviderConfig) -> None:
    """The customer's CNAME is right but the provider's own name has no A:
    a provider problem, said as such."""
    no_address = DnsAnswer("mta-sts.customer.example", "A", NODATA, ("mta-sts.provider.example",))
    ctx = CheckContext(
        config=config, lookup=healthy(host=no_address), expected_ids={"customer.example": "1"}
    )
    report = asyncio.run(check_tenant(ctx, TENANT))
    assert report.codes == ["policy_host_no_address"]
    assert "a provider problem" in report.reasons[0].message


def test_a_chain_through_the_policy_host_is_accepted(config: ProviderConfig) -> None:
    via = DnsAnswer(
        "mta-sts.customer.example",
        "A",
        OK,
        ("cdn.customer.example", "mta-sts.provider.example"),
        rdata("A", "192.0.2.1"),
    )
    ctx = CheckContext(config=config, lookup=healthy(host=via), expected_ids={})
    report = asyncio.run(check_tenant(ctx, TENANT))
    assert report.codes == ["txt_unpublished"]


def test_mode_none_skips_the_mx_lookup(config: ProviderConfig) -> None:
    lookup = healthy()
    tenant = Tenant("customer.example", Policy("none", (), 86400), source="test")
    ctx = CheckContext(config=config, lookup=lookup, expected_ids={"customer.example": "1"})
    report = asyncio.run(check_tenant(ctx, tenant))
    assert report.reasons == []
    assert ("customer.example", "MX") not in lookup.asked


# -- TLS-RPT: hosted by CNAME, or the customer's own record -------------------

OURS = "mailto:tlsrpt@provider.example"
HOSTED = "customer.example._smtp._tls.provider.example"


@pytest.fixture
def reporting_config(tmp_path: Path) -> ProviderConfig:
    (tmp_path / "tenants").mkdir()
    (tmp_path / "config.yaml").write_text(
        "tenants_dir: tenants\npolicy_host: mta-sts.provider.example\n"
        "id_zone: _mta-sts.provider.example\n"
        f"tlsrpt:\n  rua: {OURS}\n  zone: _smtp._tls.provider.example\n"
    )
    return load_config(tmp_path / "config.yaml")


def tlsrpt_answer(chain: tuple[str, ...], *texts: str) -> DnsAnswer:
    records = rdata("TXT", *texts) if texts else ()
    return DnsAnswer("_smtp._tls.customer.example", "TXT", OK if texts else NODATA, chain, records)


@pytest.mark.parametrize(
    ("answer", "tenant_rua", "codes"),
    [
        # The CNAME reaches our record and it says what tlsrpt.rua says.
        (tlsrpt_answer((HOSTED,), f'"v=TLSRPTv1; rua={OURS}"'), (), []),
        # The CNAME reaches our record, which holds an older rua.
        (
            tlsrpt_answer((HOSTED,), '"v=TLSRPTv1; rua=mailto:old@provider.example"'),
            (),
            ["tlsrpt_hosted_stale"],
        ),
        # The CNAME reaches our name, where apply has published nothing yet.
        (tlsrpt_answer((HOSTED,)), (), ["tlsrpt_missing"]),
        # The customer's own record lists our rua among others: fine.
        (tlsrpt_answer((), f'"v=TLSRPTv1; rua=mailto:t@customer.example,{OURS}"'), (), []),
        # The customer's own record does not reach us.
        (tlsrpt_answer((), '"v=TLSRPTv1; rua=mailto:t@customer.example"'), (), ["tlsrpt_not_ours"]),
        # ...which is what a tenant naming only its own destinations wants.
        (
            tlsrpt_answer((), '"v=TLSRPTv1; rua=mailto:t@customer.example"'),
            ("mailto:t@customer.example",),
            [],
        ),
    ],
)
def test_tlsrpt_hosted_or_own_record(
    reporting_config: ProviderConfig,
    answer: DnsAnswer,
    tenant_rua: tuple[str, ...],
    codes: list[str],
) -> None:
    tenant = Tenant("customer.example", POLICY, source="test", tlsrpt_rua=tenant_rua)
    ctx = CheckContext(
        config=reporting_config,
        lookup=healthy(tlsrpt=answer),
        expected_ids={"customer.example": "1"},
    )
    report = asyncio.run(check_tenant(ctx, tenant))
    assert report.codes == codes
    assert report.observed["tlsrpt"]["hosted"] == bool(answer.chain)


def test_tlsrpt_missing_names_both_ways(reporting_config: ProviderConfig) -> None:
    ctx = CheckContext(
        config=reporting_config,
        lookup=healthy(tlsrpt=tlsrpt_answer(())),
        expected_ids={"customer.example": "1"},
    )
    report = asyncio.run(check_tenant(ctx, TENANT))
    assert report.codes == ["tlsrpt_missing"]
    message = report.reasons[0].message
    assert f"CNAME {HOSTED}." in message
    assert f'TXT "v=TLSRPTv1; rua={OURS}"' in message
