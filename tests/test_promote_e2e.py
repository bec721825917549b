"""Promotion end to end in the miniature internet (``support.stack``: knot,
unbound, pebble, nginx, gunicorn in a namespace). Two opted-in tenants in
testing, with certificates, a clean `check` and TLS reports POSTed to the
app's own report route: one becomes ready and the promote unit's command
(`promote --write --auto --apply`) edits only its mode line and applies it,
so the real postfix-mta-sts-resolver fetches `enforce` under a new id; the
other, whose reports show failures about the policy host, stays in testing.
"""

from __future__ import annotations

import configparser
import http.client
import json
import shlex
import socket
import time
from collections.abc import Iterator

import pytest
from support.layout import ROOT
from support.procs import wait_until
from support.promoteenv import report_json
from support.stack import Customer, MiniInternet
from test_e2e import _handshakes, ok, sender
from test_stack_certs import require_stack

from policy_host.read.config import load_config
from policy_host.results import PROMOTED, read_events
from policy_host.state import published_ids

# max_age 1: in testing "at least max_age" passes within the test
# (RFC 8461 section 5); min_testing_days 0 below.
RIPE = Customer(
    "ripe.example",
    mode="testing",
    mx=("mx.ripe.example",),
    max_age=1,
    mx_hosts=("mx.ripe.example",),
)
SHAKY = Customer(
    "shaky.example",
    mode="testing",
    mx=("mx.shaky.example",),
    max_age=1,
    mx_hosts=("mx.shaky.example",),
)
OPT_IN = "promote:\n  auto: true\n"
REPORT_HOST = "tlsrpt.provider.example"
REPORT_PATH = "/v1/report"
EXTRA = f"""\
tlsrpt:
  rua: [https://{REPORT_HOST}{REPORT_PATH}]
promote:
  min_testing_days: 0
  min_sessions: 100
  min_organizations: 2
  max_failure_rate: 0.01
"""


def promote_unit_args() -> list[str]:
    """The arguments of the promote unit's ExecStart."""
    parser = configparser.RawConfigParser(strict=False, delimiters=("=",))
    parser.read(ROOT / "deploy" / "policy-host-promote.service")
    argv = shlex.split(parser["Service"]["ExecStart"])
    assert argv[0] == "/opt/policy-host/.venv/bin/policy-host"
    return argv[1:]


def post_report(world: MiniInternet, report: dict[str, object]) -> None:
    """A report over the app's report route, as nginx would proxy it."""
    conn = http.client.HTTPConnection("localhost", timeout=10)
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(10)
    sock.connect(str(world.socket_path))
    conn.sock = sock
    try:
        conn.request(
            "POST",
            REPORT_PATH,
            body=json.dumps(report).encode(),
            headers={
                "Host": REPORT_HOST,
                "Content-Type": "application/tlsrpt+json",
                "X-Real-IP": "127.0.0.1",
            },
        )
        response = conn.getresponse()
        assert 200 <= response.status < 300, (response.status, response.read())
        response.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MiniInternet]:
    require_stack()
    with MiniInternet(tmp_path_factory.mktemp("promote"), (RIPE, SHAKY), extra_config=EXTRA) as net:
        for customer in (RIPE, SHAKY):
            (net.tenants_dir / f"{customer.domain}.yaml").write_text(
                customer.tenant_yaml() + OPT_IN
            )
        yield net


def test_a_ready_tenant_is_promoted_and_seen_enforcing_one_held_back_stays(
    world: MiniInternet,
) -> None:
    config = load_config(world.config_path)
    ok(world.policy_host("certs"))
    ok(world.policy_host("apply"))
    assert world.pebble is not None
    root = world.pebble.issuing_root()
    wait_until(
        lambda: _handshakes(world, "mta-sts.ripe.example", root),
        10,
        what="nginx to serve the new certificate",
    )
    old = published_ids(config)
    first = sender(world, root, "ripe.example")["ripe.example"]
    assert first["result"] == "VALID", first
    assert first["policy"]["mode"] == "testing"

    # Yesterday's reports from two organisations; shaky's show that
    # senders could not fetch its policy (an sts-* failure: ours).
    yesterday = time.time() - 86_400
    fetch_error = {
        "result-type": "sts-policy-fetch-error",
        "receiving-mx-hostname": "mx.shaky.example",
        "failed-session-count": 1,
    }
    for domain, org, success, failure, details in (
        ("ripe.example", "Google", 400, 0, []),
        ("ripe.example", "Microsoft", 300, 1, []),
        ("shaky.example", "Google", 400, 0, []),
        ("shaky.example", "Microsoft", 300, 1, [fetch_error]),
    ):
        post_report(
            world,
            report_json(domain, org, yesterday, success, failure, [f"mx.{domain}"], details),
        )
    check = world.policy_host("check", "--json")
    assert check.returncode == 0, check.stdout + check.stderr
    time.sleep(1.5)  # past max_age since the testing policy was published

    judging = world.policy_host("promote", "--json")
    assert judging.returncode == 0, judging.stderr
    judged = json.loads(judging.stdout)
    tenants = {t["domain"]: t for t in judged["tenants"]}
    assert tenants["ripe.example"]["ready"] is True, tenants["ripe.example"]
    assert [h["code"] for h in tenants["shaky.example"]["holds"]] == [
        "reports_policy_host_failures"
    ]

    ripe_file = world.tenants_dir / "ripe.example.yaml"
    shaky_file = world.tenants_dir / "shaky.example.yaml"
    before, shaky_before = ripe_file.read_text(), shaky_file.read_text()
    done = world.policy_host(*promote_unit_args())
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ready  ripe.example" in done.stdout
    assert "held   shaky.example" in done.stdout
    assert "running apply" in done.stderr

    # Only the mode line changed, with a note of when.
    after = ripe_file.read_text()
    changed = [
        (a, b) for a, b in zip(before.splitlines(), after.splitlines(), strict=True) if a != b
    ]
    assert len(changed) == 1
    assert changed[0][0] == "mode: testing"
    assert changed[0][1].startswith("mode: enforce  # promoted to enforce by policy-host ")
    assert shaky_file.read_text() == shaky_before

    # Served and published under a new id; the sender that knew the old id
    # fetches the enforce policy. shaky keeps its id.
    new = published_ids(config)
    assert new["ripe.example"] != old["ripe.example"]
    assert new["shaky.example"] == old["shaky.example"]
    seen = sender(world, root, f"ripe.example={old['ripe.example']}", "shaky.example")
    assert seen["ripe.example"]["result"] == "VALID", seen
    assert seen["ripe.example"]["id"] == new["ripe.example"]
    assert seen["ripe.example"]["policy"]["mode"] == "enforce"
    assert seen["shaky.example"]["policy"]["mode"] == "testing"
    kinds = [e.kind for e in read_events(config.results_db, "ripe.example")]
    assert kinds == [PROMOTED]
    assert read_events(config.results_db, "shaky.example") == []
