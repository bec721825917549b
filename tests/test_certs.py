"""`policy-host certs` decisions: CNAME and CAA through a real resolver
(knot + unbound), backoff and pacing with a recorded certbot.

certbot itself is replaced here by a recorder that either "issues" (writes a
real certificate from a throw-away CA where certbot would) or fails; the
real certbot against pebble runs in tests/test_stack_certs.py.
"""

from __future__ import annotations

import asyncio
import io
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytest
from support.dnsservers import DnsWorld, Zone
from support.procs import require_binary
from support.tls import TestCA, make_ca

from policy_host.certs.attempts import AttemptLog, recorded_until
from policy_host.certs.precheck import caa_problem, host_problem
from policy_host.certs.run import certbot_command, run_certs
from policy_host.check.dnsclient import DnsClient
from policy_host.read.config import ProviderConfig, load_config
from policy_host.records import AcmeIdentity
from policy_host.runner import DEFAULT_TIMEOUT, Result, run

POLICY_HOST = "mta-sts.provider.example"


def lookup(dns_world: DnsWorld) -> DnsClient:
    """A client of the unbound in front of knot, as `certs` makes one."""
    return DnsClient([(dns_world.unbound.address, dns_world.unbound.port)], timeout=2.0)


def customer(domain: str, *records: str, cname: str | None = POLICY_HOST) -> Zone:
    lines = [f"mta-sts CNAME {cname}."] if cname else []
    return Zone(domain, [*lines, "@ MX 10 mx.example.net.", *records])


@pytest.fixture
def dns_zones() -> list[Zone]:
    return [
        Zone("provider.example", ["mta-sts A 127.0.0.1"]),
        customer("good.example"),
        customer("second.example"),
        customer("missing.example", cname=None),
        customer("elsewhere.example", cname="mta-sts.other.example"),
        Zone("arecord.example", ["mta-sts A 192.0.2.1"]),
        customer("le.example", '@ CAA 0 issue "letsencrypt.org"'),
        customer("otherca.example", '@ CAA 0 issue "other-ca.example"'),
        customer("nobody.example", '@ CAA 0 issue ";"'),
        customer("critical.example", '@ CAA 128 future "x"'),
        customer("wildonly.example", '@ CAA 0 issuewild "other-ca.example"'),
    ]


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        ("good.example", None),
        ("missing.example", "mta-sts.missing.example does not exist (NXDOMAIN)"),
        ("elsewhere.example", "is a CNAME to mta-sts.other.example, not to " + POLICY_HOST),
        ("arecord.example", "is not a CNAME (expected one to " + POLICY_HOST),
    ],
)
def test_cname_check_names_what_the_customer_has(
    dns_world: DnsWorld, domain: str, expected: str | None
) -> None:
    problem = asyncio.run(host_problem(lookup(dns_world), f"mta-sts.{domain}", POLICY_HOST))
    if expected is None:
        assert problem is None
    else:
        assert problem is not None and expected in problem


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        ("good.example", None),
        ("le.example", None),
        ("wildonly.example", None),
        ("otherca.example", "CAA at otherca.example allows only other-ca.example"),
        ("nobody.example", "CAA at nobody.example allows only nobody"),
        ("critical.example", "unknown critical property 'future'"),
    ],
)
def test_caa_check_follows_rfc_8659(dns_world: DnsWorld, domain: str, expected: str | None) -> None:
    us = AcmeIdentity(("letsencrypt.org",))
    problem = asyncio.run(caa_problem(lookup(dns_world), f"mta-sts.{domain}", us))
    if expected is None:
        assert problem is None
    else:
        assert problem is not None and expected in problem


def test_certbot_command_is_non_interactive_webroot_with_a_predictable_name(
    config: ProviderConfig,
) -> None:
    argv = certbot_command(config, "mta-sts.example.com")
    assert argv[:2] == ["certbot", "certonly"]
    for flag in ("--non-interactive", "--agree-tos", "--webroot", "--keep-until-expiring"):
        assert flag in argv
    assert argv[argv.index("--cert-name") + 1] == "mta-sts.example.com"
    assert argv[argv.index("--domain") + 1] == "mta-sts.example.com"
    assert argv[argv.index("--server") + 1] == config.acme.directory
    assert argv[argv.index("--webroot-path") + 1] == str(config.acme.webroot)
    assert "--register-unsafely-without-email" in argv  # the example sets no email


class Certbot:
    """Stands in for certbot (and nginx); openssl runs for real."""

    def __init__(self, ca: TestCA, config_dir: Path) -> None:
        self.ca = ca
        self.config_dir = config_dir
        self.calls: list[list[str]] = []
        # The environment each certbot run got (None: the caller's own).
        self.envs: list[Mapping[str, str] | None] = []
        self.fail: set[str] = set()

    def __call__(
        self,
        argv: Sequence[str],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        env: Mapping[str, str] | None = None,
    ) -> Result:
        if argv[0] == "openssl":
            return run(argv, timeout=timeout, env=env)
        self.calls.append(list(argv))
        if argv[0] != "certbot":
            return Result(tuple(argv), 0, "")  # nginx -t, reload
        self.envs.append(env)
        host = argv[argv.index("--cert-name") + 1]
        if argv[1] == "delete":
            return Result(tuple(argv), 0, "deleted")
        if host in self.fail:
            return Result(tuple(argv), 1, "Challenge failed for domain " + host)
        live = self.config_dir / "live" / host
        live.mkdir(parents=True, exist_ok=True)
        chain, key = self.ca.issue(host, [host])
        (live / "fullchain.pem").write_bytes(chain.read_bytes())
        (live / "privkey.pem").write_bytes(key.read_bytes())
        return Result(tuple(argv), 0, "Successfully received certificate.")

    def orders(self) -> list[str]:
        return [
            c[c.index("--cert-name") + 1] for c in self.calls if c[:2] == ["certbot", "certonly"]
        ]


@pytest.fixture
def provider(tmp_path: Path, dns_world: DnsWorld) -> Callable[..., ProviderConfig]:
    require_binary("openssl")

    def make(domains: Sequence[str], acme: str = "") -> ProviderConfig:
        root = tmp_path / "provider"
        (root / "tenants").mkdir(parents=True, exist_ok=True)
        for domain in domains:
            (root / "tenants" / f"{domain}.yaml").write_text(
                "mode: testing\nmx:\n  - mx.example.net\nmax_age: 86400\n"
            )
        (root / "config.yaml").write_text(
            f"""\
tenants_dir: tenants
state_dir: var
policy_host: {POLICY_HOST}
id_zone: _mta-sts.provider.example
dns:
  resolver: 127.0.0.1:{dns_world.unbound.port}
acme:
  config_dir: le
  work_dir: le-work
  logs_dir: le-logs
  webroot: webroot
{acme}
nginx:
  tenants_conf: nginx/tenants.conf
  snippet: /etc/nginx/snippets/policy-host-tenant.conf
  test_command: nginx-test
  reload_command: nginx-reload
"""
        )
        return load_config(root / "config.yaml")

    return make


@pytest.fixture
def certbot(tmp_path: Path) -> Certbot:
    return Certbot(make_ca(tmp_path / "ca"), tmp_path / "provider" / "le")


class Clock:
    def __init__(self) -> None:
        self.now = time.time()  # the test certificates are valid from now on

    def __call__(self) -> float:
        return self.now


def certs(
    config: ProviderConfig, certbot: Certbot, clock: Clock, dns_world: DnsWorld, *args: str
) -> tuple[int, str]:
    out = io.StringIO()
    status = run_certs(
        config,
        lookup=lookup(dns_world),
        runner=certbot,
        clock=clock,
        dry_run="--dry-run" in args,
        delete_removed="--delete-removed" in args,
        out=out,
    )
    return status, out.getvalue()


def test_orders_only_where_the_cname_points_at_us_then_keeps_valid_ones(
    provider: Callable[..., ProviderConfig], certbot: Certbot, dns_world: DnsWorld
) -> None:
    config = provider(["good.example", "missing.example", "otherca.example"])
    clock = Clock()
    status, out = certs(config, certbot, clock, dns_world)
    assert status == 0, out
    assert certbot.orders() == ["mta-sts.good.example"]
    assert "mta-sts.missing.example: skipped:" in out
    assert "mta-sts.otherca.example: skipped: CAA" in out
    conf = config.nginx.tenants_conf.read_text()
    assert "server_name mta-sts.good.example;" in conf
    assert "missing.example" not in conf
    assert ["nginx-test"] in certbot.calls and ["nginx-reload"] in certbot.calls
    certbot.calls.clear()
    status, out = certs(config, certbot, clock, dns_world)
    assert status == 0
    assert "mta-sts.good.example: valid: until" in out
    assert certbot.calls == []  # nothing ordered, nginx config unchanged: no reload


def test_a_failed_order_backs_off_for_the_configured_period(
    provider: Callable[..., ProviderConfig], certbot: Certbot, dns_world: DnsWorld
) -> None:
    config = provider(["good.example"], "  backoff: 3600")
    clock = Clock()
    certbot.fail.add("mta-sts.good.example")
    status, out = certs(config, certbot, clock, dns_world)
    assert status == 1
    assert "mta-sts.good.example: failed: certbot exited with 1: Challenge failed" in out
    clock.now += 3599
    status, out = certs(config, certbot, clock, dns_world)
    assert status == 0
    assert "mta-sts.good.example: waiting: the order at" in out
    assert len(certbot.orders()) == 1
    clock.now += 1
    certbot.fail.clear()
    status, out = certs(config, certbot, clock, dns_world)
    assert status == 0
    assert "mta-sts.good.example: ordered:" in out
    assert len(certbot.orders()) == 2


def test_new_orders_are_paced_per_hour(
    provider: Callable[..., ProviderConfig], certbot: Certbot, dns_world: DnsWorld
) -> None:
    config = provider(["good.example", "second.example"], "  orders_per_hour: 1")
    clock = Clock()
    status, out = certs(config, certbot, clock, dns_world)
    assert status == 0
    assert certbot.orders() == ["mta-sts.good.example"]
    assert "mta-sts.second.example: deferred: 1 orders in the last hour" in out
    clock.now += 3601
    certs(config, certbot, clock, dns_world)
    assert certbot.orders() == ["mta-sts.good.example", "mta-sts.second.example"]


def test_dry_run_prints_certbot_commands_and_changes_nothing(
    provider: Callable[..., ProviderConfig], certbot: Certbot, dns_world: DnsWorld
) -> None:
    config = provider(["good.example", "second.example"])
    status, out = certs(config, certbot, Clock(), dns_world, "--dry-run")
    assert status == 0
    assert "mta-sts.good.example: would-order: certbot certonly --non-interactive" in out
    assert "--cert-name mta-sts.second.example" in out
    assert certbot.calls == []
    assert not config.state_dir.exists()
    assert not config.nginx.tenants_conf.exists()


def test_acme_ca_bundle_reaches_certbot_as_requests_ca_bundle(
    provider: Callable[..., ProviderConfig], certbot: Certbot, dns_world: DnsWorld
) -> None:
    config = provider(["good.example"], "  ca_bundle: acme-ca.pem")
    bundle = config.path.parent / "acme-ca.pem"
    status, out = certs(config, certbot, Clock(), dns_world, "--dry-run")
    assert status == 0
    assert f"would-order: REQUESTS_CA_BUNDLE={bundle} certbot certonly" in out
    status, out = certs(config, certbot, Clock(), dns_world)
    assert status == 0, out
    assert certbot.orders() == ["mta-sts.good.example"]
    [env] = certbot.envs
    # What apply reads when it cannot read certbot's files itself.
    assert (recorded_until(config.certs_db, "mta-sts.good.example") or 0) > time.time()
    assert env is not None and env["REQUESTS_CA_BUNDLE"] == str(bundle)
    assert env["PATH"] == os.environ["PATH"]  # certbot still finds its helpers


def test_without_acme_ca_bundle_certbot_gets_the_callers_environment(
    provider: Callable[..., ProviderConfig], certbot: Certbot, dns_world: DnsWorld
) -> None:
    config = provider(["good.example"])
    status, out = certs(config, certbot, Clock(), dns_world)
    assert status == 0, out
    assert certbot.envs == [None]


def test_certificates_of_removed_tenants_are_deleted_only_with_the_flag(
    provider: Callable[..., ProviderConfig], certbot: Certbot, dns_world: DnsWorld
) -> None:
    config = provider(["good.example", "second.example"])
    clock = Clock()
    certs(config, certbot, clock, dns_world)
    (config.tenants_dir / "second.example.yaml").unlink()
    status, out = certs(config, certbot, clock, dns_world)
    assert "mta-sts.second.example: kept: no longer hosted" in out
    assert "second.example" not in config.nginx.tenants_conf.read_text()
    status, out = certs(config, certbot, clock, dns_world, "--delete-removed")
    assert status == 0
    assert "mta-sts.second.example: removed:" in out
    deletes = [c for c in certbot.calls if c[:2] == ["certbot", "delete"]]
    assert [c[c.index("--cert-name") + 1] for c in deletes] == ["mta-sts.second.example"]


def test_attempt_log_counts_orders_in_a_window(tmp_path: Path) -> None:
    log = AttemptLog(tmp_path / "certs.sqlite3")
    log.ordering("a", 100.0)
    log.ordering("b", 200.0)
    log.record("a", 100.0, False, "boom")
    assert log.orders_since(150.0) == 1
    last = log.last("a")
    assert last is not None and not last.ok and last.message == "boom"
    log.close()
