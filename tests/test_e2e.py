"""End to end: the production stack in a miniature internet, seen by a real
sender-side MTA-STS implementation.

Inside a network namespace the test makes (``support.stack``): knot with
the customer zones and the provider zone (TSIG dynamic updates), unbound on
port 53, pebble validating HTTP-01 through nginx's port 80, nginx with this
project's config on 443, gunicorn with this project's app. Then:

1. ``policy-host apply`` publishes the ids; ``policy-host certs`` gets a
   real certificate per customer from pebble;
2. postfix-mta-sts-resolver (PyPI), through DNS and HTTPS, trusting only
   pebble's root, gets exactly each customer's mode, mx and max_age, under
   the id that was published;
3. a policy edit and ``apply``: it sees the new id and the new policy;
4. ``policy-host check --https`` says every customer is ok, and names the
   right reason for each broken one (CNAME missing, stale TXT, MX mismatch).

Needs root and Debian's knot, unbound, pebble, certbot, nginx, iproute2,
openssl: without them the test is skipped, except under CI=true, where it
fails. Everything is torn down at the end, whatever happened.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import pytest
from support.layout import ROOT
from support.procs import wait_until
from support.stack import ID_ZONE, Customer, MiniInternet
from test_stack_certs import require_stack

from policy_host.read.config import load_config
from policy_host.state import published_ids

SENDER = ROOT / "tests" / "support" / "sts_sender.py"
# The whole scenario must stay well inside this (seconds).
BUDGET = 120


def tlsrpt(domain: str) -> str:
    return f'_smtp._tls TXT "v=TLSRPTv1; rua=mailto:tlsrpt@{domain}"'


def good(domain: str, mode: str, mx: tuple[str, ...], hosts: tuple[str, ...]) -> Customer:
    return Customer(domain, mode=mode, mx=mx, mx_hosts=hosts, extra_records=(tlsrpt(domain),))


ALPHA = good("alpha.example", "enforce", ("mx1.alpha.example",), ("mx1.alpha.example",))
BETA = good("beta.example", "testing", ("*.beta.example",), ("mx.beta.example",))
GAMMA = Customer(
    "gamma.example",
    mode="enforce",
    mx=("mail.gamma.example", "*.mail.protection.outlook.com"),
    max_age=1209600,
    mx_hosts=("mail.gamma.example", "gamma-example.mail.protection.outlook.com"),
    extra_records=(tlsrpt("gamma.example"),),
)
GOOD = (ALPHA, BETA, GAMMA)
# Broken on purpose, each in one way.
NOCNAME = Customer(
    "nocname.example",
    mx=("mx.nocname.example",),
    mx_hosts=("mx.nocname.example",),
    cnames=False,
    extra_records=(tlsrpt("nocname.example"),),
)
STALE = good("stale.example", "enforce", ("mx.stale.example",), ("mx.stale.example",))
MXMISMATCH = good(
    "mxmismatch.example", "enforce", ("mx.mxmismatch.example",), ("other.mxmismatch.example",)
)
CUSTOMERS = (*GOOD, NOCNAME, STALE, MXMISMATCH)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MiniInternet]:
    require_stack()
    with MiniInternet(tmp_path_factory.mktemp("e2e"), CUSTOMERS) as net:
        yield net


def ok(done: Any) -> str:
    output = str(done.stdout) + str(done.stderr)
    assert done.returncode == 0, output
    return output


def waits(done: Any) -> str:
    """An apply that did everything but publish a new customer's id."""
    output = str(done.stdout) + str(done.stderr)
    assert done.returncode == 4, output
    return output


def sender(world: MiniInternet, root: Path, *args: str) -> dict[str, dict[str, Any]]:
    """What postfix-mta-sts-resolver finds for each ``DOMAIN[=KNOWN_ID]``."""
    env = world.env
    env["SSL_CERT_FILE"] = str(root)
    env.pop("SSL_CERT_DIR", None)
    done = world.run([sys.executable, str(SENDER), *args], env=env, resolv_conf=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    return {line["domain"]: line for line in lines}


def expected_policy(customer: Customer) -> dict[str, Any]:
    return {
        "version": "STSv1",
        "mode": customer.mode,
        "mx": list(customer.mx),
        "max_age": customer.max_age,
    }


def test_a_sender_sees_exactly_what_the_provider_configured(world: MiniInternet) -> None:
    started = time.monotonic()
    config = load_config(world.config_path)
    assert world.pebble is not None

    # 1. certs gets a certificate per customer through port 80; apply
    # publishes the ids (verifying through nginx's loopback port first) of
    # those with one, and holds back the customer without (RFC 8461
    # section 8: a sender that sees an id fetches over HTTPS at once).
    certs = ok(world.policy_host("certs"))
    for customer in (*GOOD, STALE, MXMISMATCH):
        assert f"mta-sts.{customer.domain}: ordered:" in certs
    assert "mta-sts.nocname.example: skipped:" in certs
    waiting = f"{NOCNAME.domain}: new: served, not published: waiting for a certificate"
    assert waiting in waits(world.policy_host("apply"))
    ids = published_ids(config)
    assert set(ids) == {c.domain for c in CUSTOMERS} - {NOCNAME.domain}
    root = world.pebble.issuing_root()
    # `nginx -s reload` returns before the new workers answer.
    wait_until(
        lambda: all(_handshakes(world, f"mta-sts.{c.domain}", root) for c in GOOD),
        10,
        what="nginx to serve the new certificates",
    )

    # 2. A real sender gets exactly the configured policy, under the id.
    seen = sender(world, root, *(c.domain for c in GOOD), NOCNAME.domain)
    for customer in GOOD:
        found = seen[customer.domain]
        assert found["result"] == "VALID", found
        assert found["id"] == ids[customer.domain]
        assert found["policy"] == expected_policy(customer)
    # No _mta-sts CNAME: no policy at all, as a sender must conclude.
    assert seen[NOCNAME.domain]["result"] == "NONE"

    # 3. An edit + apply: the sender sees a new id and the new policy.
    edited = dataclasses.replace(
        ALPHA, mx=("mx1.alpha.example", "mx2.alpha.example"), max_age=1209600
    )
    world.write_tenant(edited)
    assert waiting in waits(world.policy_host("apply"))
    new_ids = published_ids(config)
    assert new_ids["alpha.example"] != ids["alpha.example"]
    assert new_ids["beta.example"] == ids["beta.example"]
    seen = sender(
        world, root, f"alpha.example={ids['alpha.example']}", f"beta.example={ids['beta.example']}"
    )
    assert seen["alpha.example"]["result"] == "VALID"
    assert seen["alpha.example"]["id"] == new_ids["alpha.example"]
    assert seen["alpha.example"]["policy"] == expected_policy(edited)
    assert seen["beta.example"]["result"] == "NOT_CHANGED"

    # 4. check --https: the good customers are ok, each broken one has its reason.
    stale_txt(world, STALE.domain, "20200101stale")
    done = world.policy_host("check", "--https", "--ca-file", str(root), "--json")
    assert done.returncode == 1, done.stdout + done.stderr  # some customers fail
    report = {t["domain"]: t for t in json.loads(done.stdout)["tenants"]}
    for customer in GOOD:
        assert report[customer.domain]["status"] == "ok", report[customer.domain]
    assert codes(report, NOCNAME.domain) >= {"policy_host_nxdomain", "txt_cname_missing"}
    assert "txt_stale_id" in codes(report, STALE.domain)
    assert "mx_mismatch" in codes(report, MXMISMATCH.domain)
    for domain in (NOCNAME.domain, STALE.domain, MXMISMATCH.domain):
        assert report[domain]["status"] == "fail", report[domain]
    assert time.monotonic() - started < BUDGET


def _handshakes(world: MiniInternet, name: str, root: Path) -> bool:
    try:
        world.https(name, cafile=root)
    except OSError:
        return False
    return True


def codes(report: dict[str, Any], domain: str) -> set[str]:
    return {reason["code"] for reason in report[domain]["reasons"]}


def stale_txt(world: MiniInternet, domain: str, policy_id: str) -> None:
    """Overwrite the provider's TXT for ``domain`` behind apply's back."""
    assert world.knot is not None
    zone = ID_ZONE.split(".", 1)[1]
    update = world.knot.update(zone)
    name = f"{domain}.{ID_ZONE}."
    value = f"v=STSv1; id={policy_id};".encode("ascii")
    update.replace(name, 60, dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT, [value]))
    response = world.knot.send_update(update)
    assert response.rcode() == 0
