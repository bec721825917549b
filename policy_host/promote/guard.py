"""The guard: an `enforce` tenant whose MX hosts drifted from its policy, or
whose TLS reports show a sudden rise of failures to one MX.

Pure judgements over what `check` found and the report totals; each alert
says the exact change to make. Stepping down (``promote.step_down``) is the
caller's to carry out, with ``act.step_down``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from policy_host.model import Tenant, mx_matches
from policy_host.read.promotion import PromoteSettings

MX_DRIFT = "mx_drift"
FAILURE_RISE = "failure_rise"


@dataclass(frozen=True)
class Alert:
    domain: str
    kind: str
    message: str
    # The exact change to make, for a person.
    change: str
    evidence: dict[str, Any] = field(default_factory=dict)
    # Opted in to an automatic step down to testing.
    step_down: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "domain": self.domain,
            "kind": self.kind,
            "message": self.message,
            "change": self.change,
            "step_down": self.step_down,
            "evidence": self.evidence,
        }


def mx_drift(
    tenant: Tenant, mx_hosts: Sequence[str] | None, settings: PromoteSettings
) -> Alert | None:
    """An enforce tenant with MX hosts in DNS that no policy pattern matches
    (RFC 8461 section 4.1): senders that enforce will not deliver to them."""
    if tenant.policy.mode != "enforce" or not mx_hosts:
        return None
    patterns = tenant.policy.mx
    strays = [h for h in mx_hosts if h != "." and not any(mx_matches(p, h) for p in patterns)]
    if not strays:
        return None
    adds = "".join(f"\n  - '{h}'" for h in strays)
    return Alert(
        tenant.domain,
        MX_DRIFT,
        f"MX host(s) {', '.join(strays)} match no policy mx pattern ({', '.join(patterns)}); "
        "senders that enforce MTA-STS will not deliver to them",
        f"in {tenant.source} add under mx:{adds}\nthen run 'policy-host apply' (RFC 8461 "
        "section 8: drop the old entries only after max_age); or set mode: testing until the "
        "customer's MX is settled",
        {"mx_hosts": list(mx_hosts), "patterns": list(patterns), "unmatched": strays},
        settings.step_down,
    )


def failure_rise(
    tenant: Tenant,
    failures_by_mx: Mapping[str, Mapping[int, int]],
    today: int,
    settings: PromoteSettings,
) -> list[Alert]:
    """Failures to one MX on the last whole day (``today - 1``) above
    ``failure_jump_min`` and ``failure_jump`` times its daily average over
    the ``report_days`` before."""
    if tenant.policy.mode != "enforce":
        return []
    alerts = []
    last = today - 1
    before = range(last - settings.report_days, last)
    for mx, per_day in sorted(failures_by_mx.items()):
        now = per_day.get(last, 0)
        average = sum(per_day.get(d, 0) for d in before) / settings.report_days
        if now >= settings.failure_jump_min and now > settings.failure_jump * average:
            alerts.append(
                Alert(
                    tenant.domain,
                    FAILURE_RISE,
                    f"{now} failed sessions to {mx} on the last day, against {average:.1f} "
                    f"a day over the {settings.report_days} days before",
                    f"look at 'policy-host reports {tenant.domain} -v': if {mx} lost its "
                    f"certificate or STARTTLS, fix it there; if it is a new MX, add it to mx: "
                    f"in {tenant.source} and run 'policy-host apply'",
                    {"mx": mx, "failures": now, "average_before": round(average, 3)},
                    False,
                )
            )
    return alerts
