"""What a serving node says it serves, asked from the control node.

Two views, both needed before an id is published (RFC 8461 section 8):
a sender's (HTTPS to the node's address, SNI ``mta-sts.<domain>``, the
certificate checked: ``fetch.fetch_from``) and the app's (its private
listener names the snapshot each worker holds, ``serve.web.SNAPSHOT_PATH``;
nginx answers most policies from files, so only this says the workers
have the new set too).
"""

from __future__ import annotations

import http.client
import ssl
import time
from dataclasses import dataclass

from policy_host.fetch import client_context, fetch_app, fetch_from
from policy_host.publish.workers import WorkerState, WorkerTally, parse_state
from policy_host.read.nodes import Node, NodeSettings

# Seconds for one request to a node.
REQUEST_TIMEOUT = 3.0
# Requests in one round of asking a node's app for its workers' snapshots.
MAX_ASKS_PER_WORKER = 10
# Seconds to go on asking until every worker has answered, and the pause
# between rounds (which lets another worker take the next connection).
PATIENCE = 3.0
ROUND_PAUSE = 0.05


@dataclass(frozen=True)
class NodeView:
    """One node's answer: the snapshot its workers hold, or why unknown."""

    node: Node
    snapshot: str | None
    problem: str | None

    def behind(self, want: str | None) -> bool:
        return self.problem is not None or self.snapshot != want


def tls_context(settings: NodeSettings) -> ssl.SSLContext:
    return client_context(settings.ca_file)


def fetch_policy(node: Node, host: str, context: ssl.SSLContext) -> tuple[int, bytes]:
    """One sender-like fetch of ``host``'s policy from ``node``.
    Raises ``OSError`` or ``http.client.HTTPException``."""
    return fetch_from(node.https_url, host, timeout=REQUEST_TIMEOUT, context=context)


def ask_worker(node: Node) -> WorkerState | None:
    """One request to the node's app (a new connection: any worker)."""
    # Not a policy name: the app answers SNAPSHOT_PATH only for others.
    from policy_host.serve.web import SNAPSHOT_PATH

    status, body = fetch_app(node.app, SNAPSHOT_PATH, node.app, timeout=REQUEST_TIMEOUT)
    return parse_state(body.decode("ascii", "replace")) if status == 200 else None


def view(node: Node, want: str | None, *, patience: float = PATIENCE) -> NodeView:
    """Ask the node's app until every worker has answered (new connections,
    so any worker may take each), for at most ``patience`` seconds: which
    snapshot each holds (``want``: the one expected). An idle server's
    kernel tends to hand each new connection to the same worker, so the
    asking goes on in rounds with a pause between them rather than for a
    fixed count."""
    tally = WorkerTally(want or "")
    deadline = time.monotonic() + patience
    while True:
        workers = 1
        for _ in range(MAX_ASKS_PER_WORKER):
            try:
                state = ask_worker(node)
            except (OSError, http.client.HTTPException) as exc:
                return NodeView(node, None, f"its app at {node.app} does not answer: {exc}")
            if state is None:
                return NodeView(node, None, f"its app at {node.app} gave no snapshot")
            tally.add(state)
            workers = max(state.workers, 1)
            if len(tally.latest) >= workers:
                break
        if len(tally.latest) >= workers or time.monotonic() >= deadline:
            break
        time.sleep(ROUND_PAUSE)
    found = {state.snapshot for state in tally.latest.values()}
    snapshot = found.pop() if len(found) == 1 else None
    if want is None:
        return NodeView(node, snapshot, None if snapshot else "its workers disagree")
    return NodeView(node, snapshot, tally.problem())
