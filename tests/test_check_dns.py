"""`check` against real DNS: knotd serving one customer zone per reason, unbound
in front (it chases the CNAMEs into the provider zone, as a sender's resolver
does).

All scenarios are checked in one run (as `policy-host check` would over many
tenants); each test then reads its own tenant's report.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from support.dnsservers import UnboundResolver, Zone, start_dns
from support.fixtures_dns import require_dns_binaries

from policy_host.check import parallel
from policy_host.check.checks import check_all
from policy_host.check.context import CheckContext
from policy_host.check.dnsclient import DnsAnswer, DnsClient
from policy_host.check.parallel import run_checks
from policy_host.check.reasons import TenantReport
from policy_host.model import Policy, Tenant
from policy_host.read.config import ProviderConfig, load_config

PROVIDER = "provider.example"
POLICY_HOST = f"mta-sts.{PROVIDER}"
ID_ZONE = f"_mta-sts.{PROVIDER}"
PUBLISHED = "20260101T000000"

CONFIG = f"""\
tenants_dir: tenants
state_dir: var
policy_host: {POLICY_HOST}
id_zone: {ID_ZONE}
check:
  caa_issuers: [letsencrypt.org]
"""


def provider_config(root: Path) -> ProviderConfig:
    (root / "tenants").mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(CONFIG)
    return load_config(root / "config.yaml")


@dataclass(frozen=True)
class Case:
    """One tenant: its policy, its zone, its TXT in the provider zone, and
    the reasons (code, severity) the check must find."""

    domain: str
    expect: tuple[tuple[str, str], ...] = ()
    mode: str = "enforce"
    mx: tuple[str, ...] = ("mx1.{d}",)
    tlsrpt_rua: tuple[str, ...] = ()
    # Customer zone: None means "no zone at all" (the domain does not exist).
    records: tuple[str, ...] | None = field(default=None)
    # Records under the provider zone (owner names relative to it).
    provider: tuple[str, ...] | None = None
    published: str | None = PUBLISHED

    @property
    def status(self) -> str:
        severities = {severity for _, severity in self.expect}
        return "fail" if "fail" in severities else ("warn" if severities else "ok")

    def tenant(self) -> Tenant:
        mx = tuple(p.format(d=self.domain) for p in self.mx) if self.mode != "none" else ()
        return Tenant(
            domain=self.domain,
            policy=Policy(mode=self.mode, mx=mx, max_age=604800),
            source=f"tenants/{self.domain}.yaml",
            tlsrpt_rua=self.tlsrpt_rua,
        )


def good(
    *,
    host: Sequence[str] = ("mta-sts CNAME mta-sts.provider.example.",),
    txt: Sequence[str] = ("_mta-sts CNAME {d}._mta-sts.provider.example.",),
    mx: Sequence[str] = ("@ MX 10 mx1.{d}.", "mx1 A 127.0.0.1"),
    tlsrpt: Sequence[str] = ('_smtp._tls TXT "v=TLSRPTv1; rua=mailto:tls@{d}"',),
    extra: Sequence[str] = (),
) -> tuple[str, ...]:
    """A correctly set-up customer zone, with the parts given replaced."""
    return (*host, *txt, *mx, *tlsrpt, *extra)


def sts(value: str = f"v=STSv1; id={PUBLISHED};") -> tuple[str, ...]:
    return (f'{{d}}._mta-sts TXT "{value}"',)


CASES = [
    Case("happy.example", records=good(), provider=sts()),
    # Several strings are joined with nothing between (RFC 8461 section 3.1).
    Case(
        "multistring.example",
        records=good(),
        provider=(f'{{d}}._mta-sts TXT "v=STSv1; " "id={PUBLISHED[:8]}" "{PUBLISHED[8:]};"',),
    ),
    # A value with "; " inside and an extension field; two rua URIs, in
    # another order than the tenant file.
    Case(
        "semicolon.example",
        records=good(
            tlsrpt=(
                '_smtp._tls TXT "v=TLSRPTv1; rua=https://r.semicolon.example/tls, '
                'mailto:tls@semicolon.example;"',
            )
        ),
        provider=sts(f"v=STSv1; id={PUBLISHED}; x-note=a.b;"),
        tlsrpt_rua=("mailto:tls@semicolon.example", "https://r.semicolon.example/tls"),
    ),
    Case("mode-none.example", mode="none", records=good(mx=()), provider=sts()),
    # 1. mta-sts.<domain>
    Case(
        "host-nxdomain.example",
        records=good(host=()),
        provider=sts(),
        expect=(("policy_host_nxdomain", "fail"),),
    ),
    Case(
        "host-nodata.example",
        records=good(host=('mta-sts TXT "not an address"',)),
        provider=sts(),
        expect=(("policy_host_cname_missing", "fail"),),
    ),
    Case(
        "host-a-elsewhere.example",
        records=good(host=("mta-sts A 192.0.2.10",)),
        provider=sts(),
        expect=(("policy_host_a_record", "fail"),),
    ),
    Case(
        "host-a-ours.example",
        records=good(host=("mta-sts A 127.0.0.1",)),
        provider=sts(),
        expect=(("policy_host_a_record", "warn"),),
    ),
    Case(
        "host-elsewhere.example",
        records=good(host=("mta-sts CNAME mta-sts.old-provider.example.",)),
        provider=sts(),
        expect=(("policy_host_cname_elsewhere", "fail"),),
    ),
    Case(
        "host-loop.example",
        records=good(host=("mta-sts CNAME loop.{d}.", "loop CNAME mta-sts.{d}.")),
        provider=sts(),
        expect=(("dns_cname_loop", "fail"),),
    ),
    Case(
        # A delegation to a server that has no address: unbound answers SERVFAIL.
        "host-servfail.example",
        records=good(host=("mta-sts NS ns.nowhere.invalid.",)),
        provider=sts(),
        expect=(("dns_servfail", "fail"),),
    ),
    # 2. _mta-sts.<domain> and the TXT behind it
    Case(
        "txt-nocname.example",
        records=good(txt=()),
        provider=sts(),
        expect=(("txt_cname_missing", "fail"),),
    ),
    Case(
        "txt-own.example",
        records=good(txt=(f'_mta-sts TXT "v=STSv1; id={PUBLISHED};"',)),
        provider=sts(),
        expect=(("txt_cname_missing", "fail"),),
    ),
    Case(
        "txt-elsewhere.example",
        records=good(txt=("_mta-sts CNAME {d}._mta-sts.old-provider.example.",)),
        provider=sts(),
        expect=(("txt_cname_elsewhere", "fail"),),
    ),
    Case(
        "txt-absent.example",
        records=good(),
        provider=(),
        expect=(("txt_missing", "fail"),),
    ),
    Case(
        "txt-other.example",
        records=good(),
        provider=('{d}._mta-sts TXT "google-site-verification=abc"',),
        expect=(("txt_missing", "fail"),),
    ),
    Case(
        "txt-two.example",
        records=good(),
        provider=(*sts(), '{d}._mta-sts TXT "v=STSv1; id=older1;"'),
        expect=(("txt_multiple", "fail"),),
    ),
    Case(
        # RFC 8461 section 3.1: a record not beginning "v=STSv1;" is
        # discarded before counting, so the valid one stands alone.
        "txt-sts10.example",
        records=good(),
        provider=(*sts(), '{d}._mta-sts TXT "v=STSv10; id=future1;"'),
        expect=(),
    ),
    Case(
        "txt-invalid.example",
        records=good(),
        provider=sts(f"v=STSv1; id={PUBLISHED}; not a field"),
        expect=(("txt_invalid", "fail"),),
    ),
    Case(
        "txt-noid.example",
        records=good(),
        provider=sts("v=STSv1;"),
        expect=(("txt_invalid", "fail"),),
    ),
    Case(
        "txt-badid.example",
        records=good(),
        provider=sts("v=STSv1; id=2026-01-01;"),
        expect=(("txt_bad_id", "fail"),),
    ),
    Case(
        "txt-longid.example",
        records=good(),
        provider=sts(f"v=STSv1; id={'a' * 33};"),
        expect=(("txt_bad_id", "fail"),),
    ),
    Case(
        "txt-stale.example",
        records=good(),
        provider=sts("v=STSv1; id=20250101T000000;"),
        expect=(("txt_stale_id", "fail"),),
    ),
    Case(
        "txt-unpublished.example",
        records=good(),
        provider=sts(),
        published=None,
        expect=(("txt_unpublished", "warn"),),
    ),
    # 3. MX hosts against the policy
    Case(
        "mx-enforce.example",
        records=good(mx=("@ MX 10 mx1.{d}.", "@ MX 20 backup.elsewhere.example.")),
        provider=sts(),
        expect=(("mx_mismatch", "fail"),),
    ),
    Case(
        "mx-testing.example",
        mode="testing",
        records=good(mx=("@ MX 10 mail.{d}.",)),
        provider=sts(),
        expect=(("mx_mismatch", "warn"),),
    ),
    Case(
        "mx-suffix.example",
        # Whole-label matching: mx1.<domain>.evil.example is not mx1.<domain>.
        records=good(mx=("@ MX 10 mx1.mx-suffix.example.evil.example.",)),
        provider=sts(),
        expect=(("mx_mismatch", "fail"),),
    ),
    Case(
        "mx-wildcard.example",
        mx=("*.{d}",),
        records=good(mx=("@ MX 10 a.{d}.", "@ MX 20 B.{d}.")),
        provider=sts(),
    ),
    Case(
        "mx-wildcard-deep.example",
        mx=("*.{d}",),
        records=good(mx=("@ MX 10 a.b.{d}.",)),
        provider=sts(),
        expect=(("mx_mismatch", "fail"),),
    ),
    Case(
        "mx-microsoft.example",
        mx=("*.mx.microsoft",),
        records=good(mx=("@ MX 0 mx-microsoft-example.a-v1.mx.microsoft.",)),
        provider=sts(),
        expect=(("mx_mismatch_microsoft", "fail"),),
    ),
    Case(
        "mx-microsoft-ok.example",
        mx=("*.a-v1.mx.microsoft", "*.mail.protection.outlook.com"),
        records=good(
            mx=(
                "@ MX 0 mx-microsoft-ok-example.a-v1.mx.microsoft.",
                "@ MX 10 mx-microsoft-ok-example.mail.protection.outlook.com.",
            )
        ),
        provider=sts(),
    ),
    Case(
        "mx-none.example",
        records=good(mx=()),
        provider=sts(),
        expect=(("mx_missing", "fail"),),
    ),
    Case(
        "mx-null.example",
        records=good(mx=("@ MX 0 .",)),
        provider=sts(),
        expect=(("mx_null", "warn"),),
    ),
    Case(
        "absent.example",
        records=None,
        provider=sts(),
        expect=(
            ("policy_host_nxdomain", "fail"),
            ("txt_cname_missing", "fail"),
            ("domain_nxdomain", "fail"),
            ("tlsrpt_missing", "warn"),
        ),
    ),
    # 4. TLS-RPT
    Case(
        "tlsrpt-absent.example",
        records=good(tlsrpt=()),
        provider=sts(),
        tlsrpt_rua=("mailto:tls@tlsrpt-absent.example",),
        expect=(("tlsrpt_missing", "warn"),),
    ),
    Case(
        "tlsrpt-two.example",
        records=good(
            tlsrpt=(
                '_smtp._tls TXT "v=TLSRPTv1; rua=mailto:a@{d}"',
                '_smtp._tls TXT "v=TLSRPTv1; rua=mailto:b@{d}"',
            )
        ),
        provider=sts(),
        expect=(("tlsrpt_multiple", "warn"),),
    ),
    Case(
        "tlsrpt-invalid.example",
        records=good(tlsrpt=('_smtp._tls TXT "v=TLSRPTv1; rua=http://reports.example/"',)),
        provider=sts(),
        expect=(("tlsrpt_invalid", "warn"),),
    ),
    Case(
        "tlsrpt-other.example",
        records=good(),
        provider=sts(),
        tlsrpt_rua=("mailto:reports@provider.example",),
        expect=(("tlsrpt_rua_mismatch", "warn"),),
    ),
    # 5. CAA, climbing from mta-sts.<domain>
    Case(
        "caa-other.example",
        records=good(extra=('@ CAA 0 issue "other-ca.example"',)),
        provider=sts(),
        expect=(("caa_forbids_ca", "warn"),),
    ),
    Case(
        "caa-nobody.example",
        records=good(extra=('@ CAA 0 issue ";"',)),
        provider=sts(),
        expect=(("caa_forbids_ca", "warn"),),
    ),
    Case(
        "caa-ours.example",
        records=good(
            extra=(
                '@ CAA 0 issue "other-ca.example"',
                '@ CAA 0 issue "letsencrypt.org; validationmethods=http-01"',
                '@ CAA 0 issuewild ";"',
            )
        ),
        provider=sts(),
    ),
    Case(
        "caa-critical.example",
        records=good(extra=('@ CAA 128 tbs "unknown"',)),
        provider=sts(),
        expect=(("caa_forbids_ca", "warn"),),
    ),
]


def customer_zones(cases: Sequence[Case]) -> list[Zone]:
    zones = []
    provider: list[str] = ["mta-sts A 127.0.0.1"]
    for case in cases:
        if case.records is not None:
            zones.append(Zone(case.domain, [r.format(d=case.domain) for r in case.records]))
        provider += [r.format(d=case.domain) for r in case.provider or ()]
    zones.append(Zone(PROVIDER, provider))
    # Other providers' zones: CNAMEs pointing there resolve.
    zones.append(
        Zone(
            "old-provider.example",
            [
                "mta-sts A 192.0.2.20",
                'txt-elsewhere.example._mta-sts TXT "v=STSv1; id=theirs;"',
            ],
        )
    )
    return zones


def run(
    config: ProviderConfig,
    unbound: UnboundResolver,
    cases: Sequence[Case],
    *,
    concurrency: int = 16,
) -> dict[str, TenantReport]:
    client = DnsClient([(unbound.address, unbound.port)], timeout=3.0, concurrency=concurrency)
    expected = {c.domain: c.published for c in cases if c.published is not None}
    ctx = CheckContext(config=config, lookup=client, expected_ids=expected)
    reports = asyncio.run(check_all(ctx, [c.tenant() for c in cases], workers=concurrency))
    return {r.domain: r for r in reports}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UnboundResolver]:
    require_dns_binaries()
    with start_dns(customer_zones(CASES)) as (_knot, unbound):
        yield unbound


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> ProviderConfig:
    return provider_config(tmp_path_factory.mktemp("check-provider"))


@pytest.fixture(scope="module")
def reports(world: UnboundResolver, config: ProviderConfig) -> dict[str, TenantReport]:
    return run(config, world, CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.domain)
def test_each_zone_gives_its_reason(case: Case, reports: dict[str, TenantReport]) -> None:
    report = reports[case.domain]
    found = tuple((r.code, r.label) for r in report.reasons)
    assert found == case.expect, [r.message for r in report.reasons]
    assert report.status == case.status


def wait_for_single_thread(timeout: float) -> list[str]:
    """Wait (bounded) until this is the process's only thread; the names of
    the others still running at the end."""
    deadline = time.monotonic() + timeout
    while threading.active_count() > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    return [t.name for t in threading.enumerate() if t is not threading.current_thread()]


def test_checks_shared_over_processes_give_the_same_reports(
    world: UnboundResolver,
    config: ProviderConfig,
    reports: dict[str, TenantReport],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    forked: list[int] = []
    real = parallel._run_forked

    def spy(*args: Any) -> list[TenantReport]:
        forked.append(args[-1])
        return real(*args)

    monkeypatch.setattr(parallel, "PARALLEL_MIN_TENANTS", 1)
    monkeypatch.setattr(parallel, "_run_forked", spy)
    client = DnsClient([(world.address, world.port)], timeout=3.0, concurrency=16)
    expected = {c.domain: c.published for c in CASES if c.published is not None}
    ctx = CheckContext(config=config, lookup=client, expected_ids=expected)
    progress: list[tuple[int, int]] = []
    # run_checks never forks beside other threads; one an earlier test left
    # finishing (a server's watcher, a pool shutting down) must end first.
    threads = wait_for_single_thread(timeout=10.0)
    shared = run_checks(
        ctx,
        [c.tenant() for c in CASES],
        workers=16,
        processes=3,
        progress=lambda done, total: progress.append((done, total)),
    )
    assert forked == [3], f"the run was not shared over processes: {threads}"
    assert [r.as_dict() for r in shared] == [reports[c.domain].as_dict() for c in CASES]
    assert client.queries >= 5 * len(CASES)  # the children's queries are counted
    assert progress[-1] == (len(CASES), len(CASES))


def test_a_check_process_that_fails_is_an_error_not_missing_reports(
    config: ProviderConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Broken:
        async def lookup(self, name: str, rdtype: str) -> DnsAnswer:
            raise RuntimeError("a bug in a lookup")

    monkeypatch.setattr(parallel, "PARALLEL_MIN_TENANTS", 1)
    ctx = CheckContext(config=config, lookup=Broken(), expected_ids={})
    with pytest.raises(RuntimeError, match="a bug in a lookup"):
        run_checks(ctx, [c.tenant() for c in CASES[:4]], workers=4, processes=2)


def test_every_tenant_gets_a_report_in_order(reports: dict[str, TenantReport]) -> None:
    assert list(reports) == [c.domain for c in CASES]


def test_reasons_name_the_fix(reports: dict[str, TenantReport]) -> None:
    def said(domain: str) -> str:
        (reason,) = reports[domain].reasons
        return reason.message

    assert said("host-nxdomain.example") == (
        "mta-sts.host-nxdomain.example does not exist; the customer should set "
        "'mta-sts.host-nxdomain.example. CNAME mta-sts.provider.example.'"
    )
    assert "mta-sts.old-provider.example, not to mta-sts.provider.example" in (
        said("host-elsewhere.example")
    )
    assert said("txt-stale.example") == (
        "txt-stale.example._mta-sts.provider.example says id=20250101T000000 but the "
        f"provider last published id={PUBLISHED}; senders will not fetch the current policy"
    )
    microsoft = said("mx-microsoft.example")
    assert "MX host mx-microsoft-example.a-v1.mx.microsoft (Microsoft 365)" in microsoft
    assert "add 'mx: \"*.a-v1.mx.microsoft\"'" in microsoft
    assert "MX host backup.elsewhere.example matches no mx pattern" in said("mx-enforce.example")
    assert "will bounce" in said("mx-enforce.example")
    assert "will bounce" not in said("mx-testing.example")
    assert "CNAME loop: mta-sts.host-loop.example -> loop.host-loop.example -> " in (
        said("host-loop.example")
    )
    assert "allows other-ca.example, not letsencrypt.org" in said("caa-other.example")
    assert "allows no CA at all" in said("caa-nobody.example")
    assert "has its own TXT record" in said("txt-own.example")


def test_observed_records_show_the_chain(reports: dict[str, TenantReport]) -> None:
    txt = reports["multistring.example"].observed["txt"]
    assert txt["chain"] == ["multistring.example._mta-sts.provider.example"]
    assert txt["records"] == [f"v=STSv1; id={PUBLISHED};"]
    assert txt["id"] == PUBLISHED
    host = reports["happy.example"].observed["policy_host"]
    assert (host["chain"], host["records"]) == ([POLICY_HOST], ["127.0.0.1"])
    assert reports["semicolon.example"].observed["tlsrpt"]["rua"] == [
        "https://r.semicolon.example/tls",
        "mailto:tls@semicolon.example",
    ]


def test_caa_at_the_policy_host_counts_through_the_cname(tmp_path: Path) -> None:
    """RFC 8659: the CAA lookup at mta-sts.<domain> follows its CNAME, so a
    CAA set at the provider's policy host is the relevant one even when the
    customer's own zone would allow our CA."""
    require_dns_binaries()
    case = Case(
        "caa-cname.example",
        records=good(extra=('@ CAA 0 issue "letsencrypt.org"',)),
        provider=sts(),
    )
    zones = customer_zones([case])
    provider = zones[1]
    zones[1] = provider.with_records(*provider.records, 'mta-sts CAA 0 issue "other-ca.example"')
    with start_dns(zones) as (_knot, unbound):
        report = run(provider_config(tmp_path), unbound, [case])[case.domain]
    assert [(r.code, r.label) for r in report.reasons] == [("caa_forbids_ca", "warn")]
    assert "CAA at mta-sts.caa-cname.example (via mta-sts.provider.example)" in (
        report.reasons[0].message
    )
