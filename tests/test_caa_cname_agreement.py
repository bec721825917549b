"""`check` and `certs` judge CAA and the policy host's CNAME chain alike.

Every case runs through both callers against real DNS (knot + unbound):
`check`'s steps 1 and 5 (no reason means the name is fine) and `certs`'
pre-check (no reason to skip means it would order). Both must give the
expected verdict, so they can never disagree again.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.dnsservers import UnboundResolver, Zone, start_dns
from support.fixtures_dns import require_dns_binaries

from policy_host.certs.account import account_uris, accounts_dir
from policy_host.certs.precheck import order_problem
from policy_host.check.context import CheckContext
from policy_host.check.dnsclient import DnsClient
from policy_host.check.hosts import check_caa, check_policy_host
from policy_host.check.reasons import TenantReport
from policy_host.model import Policy, Tenant
from policy_host.read.config import ProviderConfig, load_config
from policy_host.records import AcmeIdentity

POLICY_HOST = "mta-sts.provider.example"
# A second policy host, reached through a CNAME to a name holding CAA.
POLICY_HOST_CAA = "mta-sts2.provider.example"
OUR_ACCOUNT = "https://acme.test/acme/acct/1"
OTHER_ACCOUNT = "https://acme.test/acme/acct/2"
TO_US = f"mta-sts CNAME {POLICY_HOST}."


@dataclass(frozen=True)
class Case:
    domain: str
    records: tuple[str, ...]
    allowed: bool
    target: str = POLICY_HOST
    # The zone holding the records, when the tenant's domain is below it.
    zone: str | None = None


def caa(*records: str) -> tuple[str, ...]:
    return (TO_US, *(f"@ CAA {r}" for r in records))


CASES = [
    Case("no-caa.example", caa(), True),
    Case("iodef-only.example", caa('0 iodef "mailto:security@iodef-only.example"'), True),
    Case("le.example", caa('0 issue "letsencrypt.org"'), True),
    Case("other-ca.example", caa('0 issue "other-ca.example"'), False),
    Case("nobody.example", caa('0 issue ";"'), False),
    Case("wild-only.example", caa('0 issuewild "other-ca.example"'), True),
    # An unknown property with the critical flag stops every CA (RFC 8659
    # section 4.1); without the flag it is ignored.
    Case("critical.example", caa('128 futuretag "x"', '0 issue "letsencrypt.org"'), False),
    Case("noncritical.example", caa('0 futuretag "x"', '0 issue "letsencrypt.org"'), True),
    # issuemail (RFC 9495) is a known property about S/MIME: even critical,
    # it does not stop a TLS certificate.
    Case("issuemail.example", caa('128 issuemail "ca.example"'), True),
    # RFC 8657: we validate by http-01 with our own account.
    Case("dns01.example", caa('0 issue "letsencrypt.org; validationmethods=dns-01"'), False),
    Case(
        "http01.example",
        caa('0 issue "letsencrypt.org; validationmethods=http-01,dns-01"'),
        True,
    ),
    Case("our-account.example", caa(f'0 issue "letsencrypt.org; accounturi={OUR_ACCOUNT}"'), True),
    Case(
        "other-account.example",
        caa(f'0 issue "letsencrypt.org; accounturi={OTHER_ACCOUNT}"'),
        False,
    ),
    # RFC 8659 section 3: the relevant set is found climbing to the parents.
    Case(
        "shop.parent.example",
        ('@ CAA 0 issue "other-ca.example"', f"mta-sts.shop CNAME {POLICY_HOST}."),
        False,
        zone="parent.example",
    ),
    # ... and the lookup at each name follows its CNAME chain.
    Case("caa-target.example", (f"mta-sts CNAME {POLICY_HOST_CAA}.",), False, POLICY_HOST_CAA),
    # The CNAME chain: any number of hops, as long as it reaches us.
    Case("one-hop.example", (TO_US,), True),
    Case(
        "two-hops.example", ("mta-sts CNAME a.two-hops.example.", f"a CNAME {POLICY_HOST}."), True
    ),
    Case(
        "three-hops.example",
        (
            "mta-sts CNAME a.three-hops.example.",
            "a CNAME b.three-hops.example.",
            f"b CNAME {POLICY_HOST}.",
        ),
        True,
    ),
    Case(
        "elsewhere.example",
        ("mta-sts CNAME a.elsewhere.example.", "a CNAME www.elsewhere.example.", "www A 192.0.2.1"),
        False,
    ),
    Case(
        "loop.example",
        ("mta-sts CNAME a.loop.example.", "a CNAME mta-sts.loop.example."),
        False,
    ),
    Case("no-cname.example", ("www A 192.0.2.1",), False),
    Case("a-record.example", ("mta-sts A 192.0.2.1",), False),
]


def zones() -> list[Zone]:
    provider = Zone(
        "provider.example",
        [
            "mta-sts A 127.0.0.1",
            "mta-sts2 CNAME lb.provider.example.",
            "lb A 127.0.0.1",
            'lb CAA 0 issue "other-ca.example"',
        ],
    )
    return [provider, *(Zone(c.zone or c.domain, c.records) for c in CASES)]


@pytest.fixture(scope="module")
def resolver() -> Iterator[UnboundResolver]:
    require_dns_binaries()
    with start_dns(zones()) as (_knot, unbound):
        yield unbound


def provider_config(root: Path, policy_host: str) -> ProviderConfig:
    """A provider whose certbot already holds OUR_ACCOUNT, as certbot keeps it."""
    (root / "tenants").mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(
        f"tenants_dir: tenants\nstate_dir: var\npolicy_host: {policy_host}\n"
        "id_zone: _mta-sts.provider.example\n"
        "acme:\n  directory: https://acme.test/dir\n  config_dir: le\n"
    )
    config = load_config(root / "config.yaml")
    account = accounts_dir(config.acme) / "0123abcd"
    account.mkdir(parents=True)
    (account / "regr.json").write_text(json.dumps({"body": {}, "uri": OUR_ACCOUNT}))
    return config


def check_says(ctx: CheckContext, domain: str) -> list[str]:
    tenant = Tenant(domain, Policy("testing", ("mx.example.net",), 86400), source="test")
    report = TenantReport(domain, "testing")

    async def steps() -> None:
        await check_policy_host(ctx, tenant, report)
        await check_caa(ctx, tenant, report)

    asyncio.run(steps())
    return [r.message for r in report.reasons]


@pytest.mark.parametrize("case", CASES, ids=[c.domain for c in CASES])
def test_check_and_certs_agree(case: Case, resolver: UnboundResolver, tmp_path: Path) -> None:
    config = provider_config(tmp_path, case.target)
    accounts = account_uris(config.acme)
    assert accounts == {OUR_ACCOUNT}
    client = DnsClient([(resolver.address, resolver.port)], timeout=3.0)
    ctx = CheckContext(config=config, lookup=client, expected_ids={}, acme_accounts=accounts)
    check_reasons = check_says(ctx, case.domain)
    us = AcmeIdentity(config.check.caa_issuers, accounts)
    certs_reason = order_problem(client, f"mta-sts.{case.domain}", case.target, us)
    assert (not check_reasons) is case.allowed, check_reasons
    assert (certs_reason is None) is case.allowed, certs_reason


def test_without_an_account_no_accounturi_is_ours(
    resolver: UnboundResolver, tmp_path: Path
) -> None:
    """Before the first order certbot has no account: an accounturi entry
    cannot name it, and both callers say so."""
    config = provider_config(tmp_path, POLICY_HOST)
    client = DnsClient([(resolver.address, resolver.port)], timeout=3.0)
    ctx = CheckContext(config=config, lookup=client, expected_ids={})
    (said,) = check_says(ctx, "our-account.example")
    assert f"for account {OUR_ACCOUNT} only" in said
    assert "with our ACME account (none registered yet)" in said
    us = AcmeIdentity(config.check.caa_issuers)
    skipped = order_problem(client, "mta-sts.our-account.example", POLICY_HOST, us)
    assert skipped is not None and "none registered yet" in skipped


def test_reasons_name_the_rfc_8657_restriction(resolver: UnboundResolver, tmp_path: Path) -> None:
    config = provider_config(tmp_path, POLICY_HOST)
    client = DnsClient([(resolver.address, resolver.port)], timeout=3.0)
    ctx = CheckContext(
        config=config, lookup=client, expected_ids={}, acme_accounts=account_uris(config.acme)
    )
    (said,) = check_says(ctx, "dns01.example")
    assert "allows letsencrypt.org for validationmethods=dns-01 only, not letsencrypt.org" in said
    assert "by http-01" in said
    us = AcmeIdentity(config.check.caa_issuers, account_uris(config.acme))
    skipped = order_problem(client, "mta-sts.other-account.example", POLICY_HOST, us)
    assert skipped == (
        f"CAA at other-account.example allows only letsencrypt.org for account "
        f"{OTHER_ACCOUNT} only, not letsencrypt.org with our ACME account ({OUR_ACCOUNT})"
    )
