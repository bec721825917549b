"""The guard step of `check`: alerts, opted-in step downs, then `apply`.

A step down edits the tenant file (``mode: testing``, with a comment saying
when and why); `apply` then serves the testing policy and publishes it under
a new id at once, so senders that compare ids stop enforcing the stale MX
list (RFC 8461 section 3.1: a new id makes them refetch).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from policy_host.errors import PolicyHostError
from policy_host.read.config import ProviderConfig

if TYPE_CHECKING:
    from policy_host.check.reasons import TenantReport
    from policy_host.model import Tenant


def guard_step(
    config: ProviderConfig,
    tenants: Sequence[Tenant],
    reports: Sequence[TenantReport],
    now: float,
    *,
    apply: bool,
) -> dict[str, Any]:
    """Run the guard; the part of `check`'s JSON that says what it did."""
    from policy_host.promote.watch import run_guard

    mx_hosts = {r.domain: r.observed["mx"]["hosts"] for r in reports if "mx" in r.observed}
    try:
        outcome = run_guard(config, tenants, mx_hosts, now)
    except PolicyHostError as exc:
        print(f"policy-host check: guard: {exc}", file=sys.stderr)
        return {"alerts": [], "stepped_down": [], "errors": [str(exc)], "apply": None}
    applied: dict[str, Any] | None = None
    if outcome.stepped_down and apply:
        from policy_host.publish.apply import run
        from policy_host.publish.environment import real_environment

        report = run(config, real_environment(config))
        applied = {"ok": report.failure is None, **report.as_dict()}
        if report.failure is not None:
            print(
                f"policy-host check: apply after the step down failed: {report.failure}",
                file=sys.stderr,
            )
    for error in outcome.errors:
        print(f"policy-host check: guard: {error}", file=sys.stderr)
    return {
        "alerts": [a.as_dict() for a in outcome.alerts],
        "stepped_down": outcome.stepped_down,
        "errors": outcome.errors,
        "apply": applied,
    }


def format_guard(guard: dict[str, Any]) -> str:
    """The guard's alerts, each with the exact change, for the table."""
    lines = []
    for alert in guard["alerts"]:
        lines.append(f"guard {alert['domain']}  {alert['kind']}: {alert['message']}")
        lines.extend(f"      {line}" for line in alert["change"].splitlines())
    for domain in guard["stepped_down"]:
        applied = guard["apply"]
        how = (
            "and applied (new id published)"
            if applied and applied["ok"]
            else "; run 'policy-host apply'"
        )
        lines.append(f"guard {domain}  stepped down to testing {how}")
    return "".join(line + "\n" for line in lines)
