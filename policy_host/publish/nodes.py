"""`apply` with serving nodes: every node serves the new set before any id
is published (RFC 8461 section 8; DESIGN.md "Several nodes").

Senders fetch from whichever node DNS gives them, so after the control
node verified itself, `apply` pushes to every node that is not drained
(``nodes.push``), then polls each one the way a sender fetches (HTTPS to
the node's address, SNI ``mta-sts.<domain>``, the certificate checked)
for every policy about to be published, and asks its app which snapshot
its workers hold, until all agree or ``apply.verify_timeout`` runs out.
A node that cannot be reached stops the run, naming it: nothing is
published, and the next run pushes again and converges.
"""

from __future__ import annotations

import http.client
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from policy_host.errors import PolicyHostError
from policy_host.model import POLICY_HOST_PREFIX
from policy_host.publish.environment import Environment
from policy_host.publish.nodeview import NodeView
from policy_host.publish.steps import NODES, POLL_INTERVAL, ApplyError
from policy_host.read.config import ProviderConfig
from policy_host.read.nodes import Node

# nodes -> node name -> the release it now serves, or why not
Pusher = Callable[[Sequence[Node], str], Mapping[str, str | PolicyHostError]]


@dataclass(frozen=True)
class NodeOps:
    """What `apply` does to the serving nodes (``node_ops``; tests may
    pass their own)."""

    push: Pusher
    # (node, Host/SNI) -> (HTTP status, body), as a sender fetches
    fetch: Callable[[Node, str], tuple[int, bytes]]
    # (node, the snapshot wanted) -> what its workers hold
    view: Callable[[Node, str | None], NodeView]
    # The control node's snapshot id (what every node must serve).
    snapshot: Callable[[], str | None]


def node_ops(config: ProviderConfig) -> NodeOps:
    """The real thing: rsync over SSH, HTTPS, the nodes' app listeners."""
    from policy_host.nodes.push import push_all
    from policy_host.publish import nodeview
    from policy_host.serve.snapshot import snapshot_id

    context = nodeview.tls_context(config.nodes)

    def push(nodes: Sequence[Node], snapshot: str) -> Mapping[str, str | PolicyHostError]:
        return dict(push_all(config, nodes, snapshot))

    return NodeOps(
        push=push,
        fetch=lambda node, host: nodeview.fetch_policy(node, host, context),
        view=nodeview.view,
        snapshot=lambda: snapshot_id(config.snapshot_path),
    )


UNREACHABLE_HINT = (
    "nothing was published; bring the node back and run apply again, or mark it "
    "`drained: true` in the config once it is out of DNS"
)


def push_and_verify(
    config: ProviderConfig,
    ops: NodeOps,
    want: Mapping[str, bytes],
    domains: Sequence[str],
    *,
    sleep: Callable[[float], None] = time.sleep,
    progress: Callable[[str, int, int], None] | None = None,
) -> None:
    """Push to every active node, then wait until each serves ``want``
    (domain -> new policy bytes) over HTTPS and its workers hold the
    control node's snapshot. Raises ``ApplyError`` naming the node."""
    nodes = config.nodes.active
    if not nodes:
        return
    snapshot = ops.snapshot()
    if snapshot is None:
        # Nothing served yet (no tenant ever compiled): nothing to push,
        # and nothing can be published either.
        if want:
            raise ApplyError(NODES, domains, "the control node has no snapshot to push")
        return
    results = ops.push(nodes, snapshot)
    failed = [results[n.name] for n in nodes if not isinstance(results.get(n.name), str)]
    if failed:
        reasons = "; ".join(str(r) for r in failed)
        raise ApplyError(NODES, domains, f"{reasons}; {UNREACHABLE_HINT}")
    todo = {(node.name, domain) for node in nodes for domain in want}
    views: dict[str, NodeView] = {}
    last: dict[tuple[str, str], str] = {}
    total = len(todo) + len(nodes)
    deadline = time.monotonic() + config.apply.verify_timeout
    while True:
        for node in nodes:
            if node.name not in views or views[node.name].behind(snapshot):
                views[node.name] = ops.view(node, snapshot)
            for domain in sorted(d for name, d in todo if name == node.name):
                seen = _fetch_one(ops, node, domain, want[domain])
                if seen is None:
                    todo.discard((node.name, domain))
                else:
                    last[node.name, domain] = seen
        behind = [v for v in views.values() if v.behind(snapshot)]
        if progress is not None:
            progress(NODES, total - len(todo) - len(behind), total)
        if not todo and not behind:
            return
        if time.monotonic() >= deadline:
            raise ApplyError(
                NODES,
                sorted({d for _, d in todo}) or list(domains),
                _stuck(behind, todo, last, snapshot)
                + f" after {config.apply.verify_timeout:g} s; {UNREACHABLE_HINT}",
            )
        sleep(POLL_INTERVAL)


def serve_on_nodes(
    config: ProviderConfig,
    ops: NodeOps,
    env: Environment,
    serves: Mapping[str, bytes | None],
    domains: Sequence[str],
) -> None:
    """The ``nodes`` step: after the control node verified itself and
    before any id is published (RFC 8461 section 8), every active node
    serves the policies of ``domains`` about to be published (``serves``:
    domain -> new bytes). It runs even with nothing changed, so a node that
    missed a push catches up."""
    published = {d: body for d in domains if (body := serves.get(d)) is not None}
    push_and_verify(config, ops, published, domains, sleep=env.sleep, progress=env.progress)


def _fetch_one(ops: NodeOps, node: Node, domain: str, body: bytes) -> str | None:
    """None when the node serves ``body`` for ``domain``; else what it did."""
    where = f"node {node.name} ({node.https_url})"
    try:
        status, got = ops.fetch(node, POLICY_HOST_PREFIX + domain)
    except (OSError, http.client.HTTPException) as exc:
        return f"{where}: {exc}"
    if status == 200 and got == body:
        return None
    if status == 200:
        return f"{where} still serves other bytes for {domain}"
    return f"{where} answers HTTP {status} for {domain}"


def _stuck(
    behind: Sequence[NodeView],
    todo: set[tuple[str, str]],
    last: Mapping[tuple[str, str], str],
    snapshot: str,
) -> str:
    if behind:
        view = behind[0]
        where = f"node {view.node.name}"
        if view.problem is not None:
            return f"{where}: {view.problem}"
        return f"{where} serves snapshot {view.snapshot}, not {snapshot}"
    first = sorted(todo)[0]
    return last.get(first, f"node {first[0]} gave no answer for {first[1]}")


def dry_run_note(config: ProviderConfig) -> str:
    """What `apply --dry-run` says of the nodes."""
    active = ", ".join(node.name for node in config.nodes.active) or "none"
    drained = [node.name for node in config.nodes.serving if node.drained]
    skipped = f"; drained, skipped: {', '.join(drained)}" if drained else ""
    return f"would push to the serving nodes and verify each: {active}{skipped}"


def catch_up(
    config: ProviderConfig, ops: NodeOps, nodes: Sequence[Node]
) -> dict[str, str | PolicyHostError]:
    """Push to ``nodes`` (drained or not): `policy-host nodes push`."""
    snapshot = ops.snapshot()
    if snapshot is None:
        raise PolicyHostError("the control node has no snapshot to push yet: run apply")
    return dict(ops.push(nodes, snapshot))
