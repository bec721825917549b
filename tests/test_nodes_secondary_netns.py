"""Serving nodes and a DNS secondary in one run, against the real parts.

The topology of tests/test_nodes_netns.py (the control node and two
serving nodes, each in a network namespace) with a knot secondary of the
provider zone that the primary NOTIFYs and that transfers each change
(``support.nodes_dns``), and ``authoritative: servers: ns``: the zone's NS
set names the primary (ns1) and the secondary (ns2) at their addresses in
the control node's namespace, port 53. Then:

1. a one-tenant change goes, in this order, as an observer beside the run
   sees it: pushed to both nodes, served by both over HTTPS with SNI (and
   fetched so by `apply` itself), published at the primary, transferred
   to the secondary; `apply` confirms it at every server of the NS set
   before it commits (RFC 8461 section 8);
2. node b takes the push and then loses its nginx, while `apply` waits in
   its nodes step: the run stops naming node b, nothing is published (the
   TXT at the primary and the secondary, the state); once nginx is back a
   rerun publishes the same id and confirms it at the secondary;
3. the secondary frozen (it answers from its old copy): both nodes serve
   the change and the primary has it, but `apply` waits, names the lagging
   server and commits nothing; thawed, a rerun confirms the same id.

Needs root and what tests/test_nodes_netns.py needs (scripts/setup --test):
without it the module is skipped, except under CI=true, where it fails.
"""

from __future__ import annotations

import dataclasses
import functools
import http.client
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dns.exception
import pytest
from support.nodes import ServingNode
from support.nodes_dns import (
    AUTHORITATIVE_WAIT,
    NS_ADDRESSES,
    VERIFY_TIMEOUT,
    NodesWithSecondary,
    arm_node_failure,
)
from support.procs import wait_until
from support.stack import ID_ZONE, PROVIDER_ZONE
from test_nodes_netns import (
    ALPHA,
    BETA,
    ok,
    output,
    policy_bytes,
    require_node_binaries,
    served,
    txt_at_primary,
)
from test_stack_certs import require_stack

from policy_host.authdns import configured_servers
from policy_host.fetch import VERIFY_USER_AGENT, client_context
from policy_host.read.config import load_config
from policy_host.state import published_ids, read_records

# The whole module must stay well inside this (seconds; about 55 on an idle
# machine, twice that under the full suite on 2 shared cores).
BUDGET = 150
# The observer's own User-Agent, to tell its fetches from apply's in the logs.
OBSERVER = "order-observer"
# The User-Agent of apply's fetches, as nginx logs it.
APPLY_AGENT = VERIFY_USER_AGENT
ROUND_PAUSE = 0.01


@pytest.fixture(scope="module")
def started() -> float:
    return time.monotonic()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, started: float) -> Iterator[NodesWithSecondary]:
    require_stack()
    require_node_binaries()
    root = tmp_path_factory.mktemp("nodes-dns")
    with NodesWithSecondary(root, (ALPHA, BETA), ("a", "b")) as net:
        yield net


@pytest.fixture(scope="module")
def root(world: NodesWithSecondary) -> Path:
    """Certificates, the first push, the nodes' apps and the first ids."""
    ok(world.policy_host("certs"))
    assert world.pebble is not None
    # Written where the config's nodes.ca_file says, for apply's fetches.
    assert world.pebble.issuing_root() == world.ca_file
    pushed = world.policy_host("nodes", "--push", "all")
    assert pushed.returncode == 1, output(pushed)  # pushed; no app runs yet
    for node in world.nodes:
        node.start_app()
    ok(world.policy_host("apply"))
    return world.ca_file


def txt_at_secondary(world: NodesWithSecondary, domain: str) -> bytes:
    assert world.secondary is not None
    answer = world.secondary.query(f"{domain}.{ID_ZONE}", "TXT")
    return b"".join(b"".join(r.strings) for rrset in answer.answer for r in rrset)


def observed_body(node: ServingNode, domain: str, context: ssl.SSLContext) -> bytes | None:
    """A sender's fetch from ``node`` (SNI, certificate checked), under the
    observer's own User-Agent; None when it fails."""
    host = f"mta-sts.{domain}"
    conn = http.client.HTTPSConnection(host, 443, timeout=2)
    try:
        raw = socket.create_connection((node.address, 443), timeout=2)
        conn.sock = context.wrap_socket(raw, server_hostname=host)
        conn.request("GET", "/.well-known/mta-sts.txt", headers={"User-Agent": OBSERVER})
        response = conn.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()
    return body if response.status == 200 else None


@dataclasses.dataclass
class Observer:
    """Watches, in rounds, each node's policy for ``domain`` and the TXT at
    the primary and the secondary; notes the round (and the time) at which
    each first shows the change. Within a round the nodes are asked before
    DNS, so a node counted in the round where DNS first shows the new id
    served the new bytes before that answer."""

    world: NodesWithSecondary
    domain: str
    new_body: bytes
    old_txt: bytes
    context: ssl.SSLContext
    first: dict[str, tuple[int, float]] = dataclasses.field(default_factory=dict)
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)

    def _note(self, what: str, round_: int, changed: Callable[[], bool]) -> None:
        if what in self.first:
            return
        try:
            if changed():
                self.first[what] = (round_, time.time())
        except (dns.exception.DNSException, OSError):
            pass  # a lost UDP answer on a busy machine: ask again next round

    def _serves_new(self, node: ServingNode) -> bool:
        return observed_body(node, self.domain, self.context) == self.new_body

    def run(self) -> None:
        round_ = 0
        with self.world.netns.entered():
            while not self.stop.is_set() and len(self.first) < len(self.world.nodes) + 2:
                round_ += 1
                for node in self.world.nodes:
                    self._note(node.name, round_, functools.partial(self._serves_new, node))
                self._note(
                    "primary",
                    round_,
                    lambda: txt_at_primary(self.world, self.domain) != self.old_txt,
                )
                self._note(
                    "secondary",
                    round_,
                    lambda: txt_at_secondary(self.world, self.domain) != self.old_txt,
                )
                time.sleep(ROUND_PAUSE)


def apply_report(done: Any) -> dict[str, Any]:
    text = str(done.stdout)
    report: dict[str, Any] = json.loads(text[: text.rindex("}") + 1])
    return report


def access_lines(node: ServingNode, domain: str, agent: str) -> list[str]:
    lines = node.access_log.read_text().splitlines() if node.access_log.exists() else []
    return [line for line in lines if f'sni="mta-sts.{domain}"' in line and f'"{agent}"' in line]


def logged_since(node: ServingNode, domain: str, count: int) -> bool:
    return len(access_lines(node, domain, APPLY_AGENT)) > count


def test_the_ns_set_names_the_primary_and_the_secondary(world: NodesWithSecondary) -> None:
    config = load_config(world.config_path)
    find = configured_servers(config)
    assert find is not None
    assert world.knot is not None and world.secondary is not None
    servers = find(PROVIDER_ZONE + ".")
    assert [s.label for s in servers] == [
        f"primary 127.0.0.1:{world.knot.port}",
        f"ns1.{PROVIDER_ZONE} ({NS_ADDRESSES['ns1']}:53)",
        f"ns2.{PROVIDER_ZONE} ({NS_ADDRESSES['ns2']}:53)",
    ]
    serials = {s.serial(PROVIDER_ZONE + ".") for s in servers}
    assert serials == {world.knot.serial(PROVIDER_ZONE + ".")}


def test_a_change_is_pushed_served_by_both_nodes_then_published_and_confirmed_at_the_secondary(
    world: NodesWithSecondary, root: Path
) -> None:
    config = load_config(world.config_path)
    before = published_ids(config)
    edited = dataclasses.replace(ALPHA, mx=("mx1.alpha.example", "mx3.alpha.example"))
    new_body = policy_bytes(edited)
    old_txt = txt_at_primary(world, ALPHA.domain)
    assert txt_at_secondary(world, ALPHA.domain) == old_txt
    logged = {node.name: len(access_lines(node, ALPHA.domain, APPLY_AGENT)) for node in world.nodes}
    observer = Observer(world, ALPHA.domain, new_body, old_txt, client_context(root))
    assert observer.first == {} and all(
        observed_body(node, ALPHA.domain, observer.context) == policy_bytes(ALPHA)
        for node in world.nodes
    )
    thread = threading.Thread(target=observer.run, daemon=True)
    thread.start()
    world.write_tenant(edited)
    began = time.time()
    try:
        done = world.policy_host("apply", "--json")
        ended = time.time()
        # Confirmed means: the secondary answers the new id when apply returns.
        at_secondary = txt_at_secondary(world, ALPHA.domain)
    finally:
        observer.stop.set()
        thread.join(timeout=10)
    report = apply_report(done)
    assert done.returncode == 0, output(done)
    new_id = published_ids(config)[ALPHA.domain]
    assert new_id != before[ALPHA.domain]
    assert f"id={new_id};".encode() in at_secondary
    assert report["steps_done"][-5:] == ["verify", "nodes", "publish", "confirm", "commit"]

    # The order, as seen from outside: both nodes served the new policy
    # before the new id appeared at the primary, and the secondary had it
    # only after the primary.
    first = observer.first
    assert set(first) == {"a", "b", "primary", "secondary"}, first
    assert first["a"][0] <= first["primary"][0] and first["b"][0] <= first["primary"][0], first
    assert first["primary"][0] <= first["secondary"][0], first
    # Pushed to each node (its release switched) before that, after the start.
    for node in world.nodes:
        activated = (node.receive_root / "current").lstat().st_mtime
        assert began <= activated <= first["primary"][1], (began, activated, first)
    # apply itself fetched the new policy from each node over HTTPS with SNI
    # (nginx writes its access log at most a second late).
    for node in world.nodes:
        wait_until(
            functools.partial(logged_since, node, ALPHA.domain, logged[node.name]),
            5,
            what=f"apply's fetch in node {node.name}'s access log",
        )
        fetched = access_lines(node, ALPHA.domain, APPLY_AGENT)[logged[node.name] :]
        assert any(f" 200 {len(new_body)} " in line for line in fetched), fetched
        assert all(line.startswith(f"{node.control_address} ") for line in fetched), fetched
    # Confirmed at every server of the NS set, each after the UPDATE.
    confirmed = [p for p in report["propagation"] if p["step"] == "confirm"]
    assert [p["server"].split(" ")[0] for p in confirmed] == [
        "primary",
        f"ns1.{PROVIDER_ZONE}",
        f"ns2.{PROVIDER_ZONE}",
    ]
    assert all(p["confirmed"] and p["delay_seconds"] >= 0 for p in confirmed), confirmed
    # Transferred as a change (IXFR, RFC 1995), not as the whole zone.
    assert world.secondary is not None
    last = world.secondary.transfers()[-1]
    assert "IXFR, incoming" in last and "finished" in last and "AXFR" not in last, last
    assert ended - began < 30
    assert read_records(config.state_db)[ALPHA.domain].pending is None


def test_a_node_that_goes_down_mid_apply_stops_it_before_anything_is_published(
    world: NodesWithSecondary, root: Path, started: float
) -> None:
    config = load_config(world.config_path)
    before = published_ids(config)
    txt_before = txt_at_primary(world, BETA.domain)
    assert txt_at_secondary(world, BETA.domain) == txt_before
    b = world.node("b")
    armed = arm_node_failure(b)
    edited = dataclasses.replace(BETA, max_age=1209600)
    world.write_tenant(edited)
    began = time.monotonic()
    done = world.policy_host("apply")
    elapsed = time.monotonic() - began
    assert done.returncode == 3, output(done)
    # The push reached node b (the wrapper ran after its activation), then
    # its nginx went down: apply waited in its nodes step, then stopped.
    assert not armed.exists()
    assert b.nginx is not None and not b.nginx.running()
    assert "apply stopped at step 'nodes' for beta.example" in output(done)
    assert f"node b (https://{b.address}" in output(done)
    assert "nothing was published" in output(done)
    assert VERIFY_TIMEOUT <= elapsed < VERIFY_TIMEOUT + 20
    assert txt_at_primary(world, BETA.domain) == txt_before
    assert txt_at_secondary(world, BETA.domain) == txt_before
    assert published_ids(config) == before
    pending = read_records(config.state_db)[BETA.domain].pending
    assert pending is not None
    # Node a took the push and serves the new policy; b's release is in place.
    assert served(world.node("a"), BETA.domain, root) == (200, policy_bytes(edited))

    b.start_nginx()
    ok(world.policy_host("apply"))
    after = published_ids(config)
    assert after[BETA.domain] == pending.policy_id != before[BETA.domain]
    for where in (txt_at_primary, txt_at_secondary):
        assert f"id={after[BETA.domain]};".encode() in where(world, BETA.domain)
    for node in world.nodes:
        assert served(node, BETA.domain, root) == (200, policy_bytes(edited))
    assert read_records(config.state_db)[BETA.domain].pending is None


def test_a_lagging_secondary_holds_the_commit_and_the_rerun_confirms_the_same_id(
    world: NodesWithSecondary, root: Path, started: float
) -> None:
    assert world.secondary is not None
    config = load_config(world.config_path)
    before = published_ids(config)
    world.secondary.freeze()
    edited = dataclasses.replace(ALPHA, max_age=2419200)
    world.write_tenant(edited)
    began = time.monotonic()
    done = world.policy_host("apply")
    elapsed = time.monotonic() - began
    assert done.returncode == 3, output(done)
    assert "apply stopped at step 'confirm' for alpha.example" in output(done)
    assert f"ns2.{PROVIDER_ZONE} ({NS_ADDRESSES['ns2']}:53): serial " in output(done)
    assert "is behind the primary's" in output(done)
    assert AUTHORITATIVE_WAIT <= elapsed < AUTHORITATIVE_WAIT + 20
    pending = read_records(config.state_db)[ALPHA.domain].pending
    assert pending is not None
    new_id = pending.policy_id
    # Served by both nodes and published at the primary, not confirmed.
    for node in world.nodes:
        assert served(node, ALPHA.domain, root) == (200, policy_bytes(edited))
    assert f"id={new_id};".encode() in txt_at_primary(world, ALPHA.domain)
    assert f"id={before[ALPHA.domain]};".encode() in txt_at_secondary(world, ALPHA.domain)
    assert published_ids(config) == before

    world.secondary.thaw()
    again = world.policy_host("apply", "--json")
    ok(again)
    report = apply_report(again)
    change = report["changes"][0]
    assert (change["domain"], change["new_id"]) == (ALPHA.domain, new_id)
    assert published_ids(config)[ALPHA.domain] == new_id
    assert f"id={new_id};".encode() in txt_at_secondary(world, ALPHA.domain)
    assert time.monotonic() - started < BUDGET
