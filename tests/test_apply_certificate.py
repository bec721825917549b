"""`apply` publishes a new tenant's first id only once its name has a valid
certificate (RFC 8461 section 8: serve, then publish; a sender that sees the
id fetches the policy over HTTPS at once).

Real knotd takes the UPDATEs; the server is the in-process stand-in; the
certificates are real files where certbot keeps them, from a throw-away CA.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from support.applyenv import (
    FakeClock,
    InProcessServer,
    Provider,
    environment,
    make_provider,
    published_id,
    tenant_text,
)
from support.dnsservers import DnsWorld
from support.procs import require_binary
from support.tls import TestCA, make_ca

from policy_host.certs.attempts import AttemptLog
from policy_host.certs.certificate import has_valid_certificate
from policy_host.cli.apply import print_report
from policy_host.publish.apply import run
from policy_host.publish.environment import certificate_check
from policy_host.read.config import ProviderConfig
from policy_host.state import read_records

OLD = "old.example"
NEW = "new.example"
DAY = 86400
ACME = "acme:\n  config_dir: le\n  work_dir: le-work\n  logs_dir: le-logs\n  webroot: webroot\n"


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    require_binary("openssl")
    return make_ca(tmp_path / "ca")


@pytest.fixture
def site(dns_world: DnsWorld, tmp_path: Path) -> Provider:
    return make_provider(
        tmp_path / "provider", primary_port=dns_world.knot.port, key=dns_world.key, extra=ACME
    )


def certify(
    config: ProviderConfig, ca: TestCA, domain: str, *, names: list[str] | None = None
) -> None:
    """A certificate where certbot keeps the one for mta-sts.<domain>."""
    host = f"mta-sts.{domain}"
    chain, key = ca.issue(domain, names or [host])
    live = config.acme.config_dir / "live" / host
    live.mkdir(parents=True, exist_ok=True)
    (live / "fullchain.pem").write_bytes(chain.read_bytes())
    (live / "privkey.pem").write_bytes(key.read_bytes())


def test_a_new_tenant_without_a_certificate_is_served_but_not_published(
    dns_world: DnsWorld, site: Provider, ca: TestCA
) -> None:
    config = site.config()
    assert config.acme.configured
    clock = FakeClock()
    server = InProcessServer(config)
    env = environment(config, server, clock)
    env.certified = certificate_check(config, clock)
    certify(config, ca, OLD)
    site.write(OLD, tenant_text("mx.old.example", max_age=DAY))
    first = run(config, env)
    assert first.failure is None, first.failure
    assert first.held == []
    old_id = published_id(dns_world.knot, OLD)
    assert old_id is not None

    # A new customer (no certificate yet) and a change to a published one
    # (never held).
    site.write(NEW, tenant_text("mx.new.example", max_age=DAY))
    site.write(OLD, tenant_text("mx2.old.example", max_age=DAY))
    held = run(config, env)
    assert held.failure is None, held.failure
    assert held.held == [NEW]
    assert [c.domain for c in held.plan.changes] == [OLD]
    assert published_id(dns_world.knot, OLD) not in (None, old_id)
    assert published_id(dns_world.knot, NEW) is None
    assert NEW not in read_records(config.state_db)
    assert server.body(NEW) is not None  # served (and verified), only not published
    out = io.StringIO()
    print_report(held, config, out)
    assert (
        f"{NEW}: new: served, not published: waiting for a certificate: run policy-host certs {NEW}"
    ) in out.getvalue()
    assert held.as_dict()["waiting_for_certificate"] == [NEW]

    # A certificate for another name, or one that has run out, is no
    # certificate for this one.
    certify(config, ca, NEW, names=["mta-sts.other.example"])
    assert run(config, env).held == [NEW]
    certify(config, ca, NEW)
    # (the test CA's certificates last two days)
    assert not has_valid_certificate(config, f"mta-sts.{NEW}", clock() + 3 * DAY)

    # Once `certs` got it, the next run publishes it.
    published = run(config, env)
    assert published.failure is None, published.failure
    assert published.held == []
    assert [c.domain for c in published.plan.changes] == [NEW]
    assert published_id(dns_world.knot, NEW) == read_records(config.state_db)[NEW].policy_id


def test_without_an_acme_section_new_tenants_are_published_at_once(
    dns_world: DnsWorld, tmp_path: Path
) -> None:
    site = make_provider(tmp_path / "p", primary_port=dns_world.knot.port, key=dns_world.key)
    config = site.config()
    assert not config.acme.configured
    site.write(NEW, tenant_text("mx.new.example", max_age=DAY))
    report = run(config, environment(config, InProcessServer(config), FakeClock()))
    assert report.failure is None, report.failure
    assert report.held == []
    assert published_id(dns_world.knot, NEW) is not None


def test_an_unreadable_certificate_falls_back_to_what_certs_recorded(
    site: Provider, ca: TestCA
) -> None:
    # certbot's live folder is root's (0700); apply runs as the server's
    # user and reads what `certs` (root) recorded. A certificate file that
    # cannot be parsed stands in for one that cannot be read.
    config = site.config()
    host = f"mta-sts.{NEW}"
    live = config.acme.config_dir / "live" / host
    live.mkdir(parents=True)
    (live / "fullchain.pem").write_text("not a certificate")
    (live / "privkey.pem").write_text("key")
    now = 1_000_000.0
    assert not has_valid_certificate(config, host, now)
    log = AttemptLog(config.certs_db)
    try:
        log.certificate(host, now + DAY)
    finally:
        log.close()
    assert has_valid_certificate(config, host, now)
    assert not has_valid_certificate(config, host, now + DAY)
