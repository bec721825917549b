"""The guard against MX drift, end to end in the miniature internet
(``support.stack``: knot, unbound, pebble, nginx, gunicorn in a namespace):
a customer moves its mail; one `check` run alerts, steps the opted-in
tenant down to testing (one line of its file) and applies it, so the real
postfix-mta-sts-resolver sees the testing policy under a new id.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from support.applyenv import CLI
from support.browser import chromium, dump_dom
from support.procs import LOOPBACK, Daemon, free_port, port_open, wait_until
from support.stack import Customer, MiniInternet
from test_e2e import _handshakes, ok, sender
from test_stack_certs import require_stack

from policy_host.certs.attempts import recorded_certificates
from policy_host.read.config import ProviderConfig, load_config
from policy_host.results import GUARD_ALERT, STEPPED_DOWN, read_events
from policy_host.state import published_ids

# The policy still lists the old MX; the customer's zone has the new one.
MOVED = Customer("moved.example", mx=("mx1.moved.example",), mx_hosts=("mx2.moved.example",))
# The same drift, but this tenant opted out of the step down.
KEPT = Customer("kept.example", mx=("mx.kept.example",), mx_hosts=("other.kept.example",))
FINE = Customer("fine.example", mx=("mx.fine.example",), mx_hosts=("mx.fine.example",))
OPT_OUT = "promote:\n  step_down: false\n"


def dump_dom_of(config: ProviderConfig, path: str) -> str:
    """The page as headless Chromium renders it from `policy-host status`."""
    chromium()
    port = free_port("tcp")
    with Daemon(
        [*CLI, "--config", str(config.path), "status", "--bind", f"{LOOPBACK}:{port}"],
        name="status",
        workdir=config.state_dir / "status-run",
        ready=lambda: port_open(LOOPBACK, port),
    ):
        return dump_dom(f"http://{LOOPBACK}:{port}{path}")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MiniInternet]:
    require_stack()
    with MiniInternet(
        tmp_path_factory.mktemp("guard"),
        (MOVED, KEPT, FINE),
        extra_config="promote:\n  step_down: true\n",
    ) as net:
        yield net


def test_a_guard_step_down_is_seen_by_a_real_sender_within_one_check(
    world: MiniInternet,
) -> None:
    config = load_config(world.config_path)
    kept_file = world.tenants_dir / "kept.example.yaml"
    kept_file.write_text(KEPT.tenant_yaml() + OPT_OUT)
    moved_file = world.tenants_dir / "moved.example.yaml"
    before = moved_file.read_text()
    # Certificates first: apply holds a new tenant's id until its name has one.
    ok(world.policy_host("certs"))
    ok(world.policy_host("apply"))
    # certs keeps each policy name's expiry for promote and the status page.
    expiry = recorded_certificates(config.certs_db)
    assert set(expiry) == {f"mta-sts.{c.domain}" for c in (MOVED, KEPT, FINE)}
    assert all(t > time.time() + 86_400 for t in expiry.values())
    assert world.pebble is not None
    root = world.pebble.issuing_root()
    wait_until(
        lambda: _handshakes(world, "mta-sts.moved.example", root),
        10,
        what="nginx to serve the new certificate",
    )
    old = published_ids(config)
    seen = sender(world, root, "moved.example")["moved.example"]
    assert seen["policy"]["mode"] == "enforce"

    started = time.time()
    done = world.policy_host("check", "--json")
    assert done.returncode == 1, done.stdout + done.stderr
    guard = json.loads(done.stdout)["guard"]
    alerts = {a["domain"]: a for a in guard["alerts"]}
    assert set(alerts) == {"moved.example", "kept.example"}
    assert alerts["moved.example"]["kind"] == "mx_drift"
    assert alerts["moved.example"]["evidence"]["unmatched"] == ["mx2.moved.example"]
    assert "add under mx:\n  - 'mx2.moved.example'" in alerts["moved.example"]["change"]
    assert guard["stepped_down"] == ["moved.example"]
    assert guard["apply"]["ok"] is True, guard["apply"]

    # The tenant file: that one line, with when and why.
    after = moved_file.read_text()
    changed = [
        (a, b) for a, b in zip(before.splitlines(), after.splitlines(), strict=True) if a != b
    ]
    assert len(changed) == 1
    assert changed[0][1].startswith("mode: testing  # stepped down to testing by policy-host ")
    assert "mx2.moved.example match no policy mx pattern" in changed[0][1]
    assert kept_file.read_text() == KEPT.tenant_yaml() + OPT_OUT

    # A new id at once, and the sender that knew the old one fetches testing.
    new = published_ids(config)
    assert new["moved.example"] != old["moved.example"]
    assert new["kept.example"] == old["kept.example"]
    seen = sender(world, root, f"moved.example={old['moved.example']}")["moved.example"]
    assert seen["result"] == "VALID", seen
    assert seen["id"] == new["moved.example"]
    assert seen["policy"]["mode"] == "testing"
    assert seen["policy"]["mx"] == ["mx1.moved.example"]

    # Evidence kept; `show` says the guard acted.
    kinds = [e.kind for e in read_events(config.results_db, "moved.example")]
    assert kinds == [STEPPED_DOWN, GUARD_ALERT]
    assert [e.kind for e in read_events(config.results_db, "kept.example")] == [GUARD_ALERT]
    assert read_events(config.results_db, "moved.example")[0].at >= started
    shown = ok(world.policy_host("show", "moved.example"))
    assert "; stepped-down at " in shown
    assert "mx2.moved.example" in shown

    # The status page (outside the namespace, reading the same stores) shows it.
    from policy_host.status.app import create_app

    page = create_app(config).test_client().get("/tenant/moved.example").get_data(as_text=True)
    assert '<dd id="mode">testing</dd>' in page
    assert f'<code id="policy-id">{new["moved.example"]}</code>' in page
    assert "stepped down to testing by policy-host" in page
    dom = dump_dom_of(config, "/?filter=problems")
    assert 'data-domain="kept.example"' in dom
    assert "stepped-down" in dom.split('data-domain="moved.example"')[1].split("</tr>")[0]

    # The next check: moved is in testing (a warning), kept is still alerted once.
    again = world.policy_host("check", "--json")
    guard = json.loads(again.stdout)["guard"]
    assert [a["domain"] for a in guard["alerts"]] == ["kept.example"]
    assert guard["stepped_down"] == []
    assert [e.kind for e in read_events(config.results_db, "kept.example")] == [GUARD_ALERT]
