"""`apply`'s checks before publishing (RFC 8461 section 8: serve first).

Every upstream serves exactly the new bytes, and every worker of the app
behind them holds the snapshot just written. Each polls until it holds or
a bounded wait runs out, then names what was seen. The checks after
publishing are ``confirm``'s.
"""

from __future__ import annotations

import http.client
import time
from collections.abc import Mapping

from policy_host.model import POLICY_HOST_PREFIX
from policy_host.publish.environment import Environment
from policy_host.publish.steps import POLL_INTERVAL, VERIFY, ApplyError
from policy_host.publish.workers import WorkerTally
from policy_host.read.config import ProviderConfig

# Requests per worker in each round of asking the app's workers.
ASKS_PER_WORKER = 3


def _describe(upstream: str, status: int, body: bytes, expected: bytes | None) -> str:
    if status == 200:
        return f"{upstream} still serves other bytes ({len(body)} bytes, not the new policy)"
    if expected is None:
        return f"{upstream} still answers {status} (expected 404)"
    return f"{upstream} answers HTTP {status}"


def verify_upstreams(
    config: ProviderConfig, env: Environment, want: Mapping[str, bytes | None]
) -> None:
    """Poll every upstream until each domain's answer is the wanted one
    (bytes: 200 with exactly these bytes; None: 404)."""
    todo = {(domain, up): body for domain, body in want.items() for up in config.upstreams}
    total = len(todo)
    last: dict[tuple[str, str], str] = {}
    deadline = time.monotonic() + config.apply.verify_timeout
    while True:
        for (domain, upstream), body in list(todo.items()):
            try:
                status, got = env.fetch(upstream, POLICY_HOST_PREFIX + domain)
            except (OSError, http.client.HTTPException) as exc:
                last[domain, upstream] = f"{upstream}: {exc}"
                continue
            if (status == 200 and got == body) or (body is None and status == 404):
                del todo[domain, upstream]
            else:
                last[domain, upstream] = _describe(upstream, status, got, body)
        env.progress(VERIFY, total - len(todo), total)
        if not todo:
            return
        if time.monotonic() >= deadline:
            failed = sorted({domain for domain, _ in todo})
            reason = last.get(next(iter(todo)), "no answer")
            raise ApplyError(
                VERIFY,
                failed,
                f"{reason} after {config.apply.verify_timeout:g} s; nothing was published",
            )
        env.sleep(POLL_INTERVAL)


def verify_workers(config: ProviderConfig, env: Environment, domains: list[str]) -> None:
    """Ask the app's workers directly until every one holds the snapshot
    the reload wrote (``publish.workers``): nginx serves the policy files by
    itself, so the upstreams say nothing of a worker that could not load
    it, and a sender whose request nginx passes on may reach that worker."""
    if env.workers is None:
        return
    want = env.workers.want()
    if want is None:
        return
    tally = WorkerTally(want)
    deadline = time.monotonic() + config.apply.verify_timeout
    problem: str | None = "no worker answered"
    while True:
        # A new connection per request: any worker may take it, so a few
        # per worker reach each of them.
        known = max((s.workers for s in tally.latest.values()), default=config.serve.workers)
        for _ in range(ASKS_PER_WORKER * max(known, 1)):
            try:
                state = env.workers.ask()
            except (OSError, http.client.HTTPException) as exc:
                problem = f"the app at {config.serve.bind}: {exc}"
                continue
            if state is not None:
                tally.add(state)
        problem = tally.problem() if tally.latest else problem
        if problem is None:
            return
        if time.monotonic() >= deadline:
            raise ApplyError(
                VERIFY,
                domains,
                f"the app behind the upstreams ({config.serve.bind}): {problem} after "
                f"{config.apply.verify_timeout:g} s; nothing was published",
            )
        env.sleep(POLL_INTERVAL)
