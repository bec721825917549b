"""The guard as `check` runs it: alerts from what check found and the
reports, kept as events, and the opted-in step downs carried out.

`apply` then serves and publishes the stepped-down tenants under a new id
(the caller runs it: `check` does, right after).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from policy_host.model import Tenant
from policy_host.promote.act import carry_out, step_down
from policy_host.promote.edit import EditError
from policy_host.promote.evidence import failures_by_mx, settings_for
from policy_host.promote.guard import Alert, failure_rise, mx_drift
from policy_host.read.config import ProviderConfig
from policy_host.read.promotion import DAY
from policy_host.results import GUARD_ALERT, Event, add_events, latest_event_per_domain


@dataclass
class GuardOutcome:
    alerts: list[Alert] = field(default_factory=list)
    stepped_down: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def run_guard(
    config: ProviderConfig,
    tenants: Sequence[Tenant],
    mx_hosts: Mapping[str, Sequence[str] | None],
    now: float,
) -> GuardOutcome:
    """Judge every enforce tenant; keep new alerts; step down who opted in."""
    outcome = GuardOutcome(alerts=judge(config, tenants, mx_hosts, now))
    _keep(config, outcome.alerts, now)
    changes = [
        step_down(a.domain, _source(tenants, a.domain), a.message, a.evidence, now)
        for a in outcome.alerts
        if a.step_down
    ]
    for change in changes:
        try:
            carry_out([change], config.state_dir / "promote.lock", config.results_db, now)
        except EditError as exc:
            outcome.errors.append(str(exc))
        else:
            outcome.stepped_down.append(change.domain)
    return outcome


def judge(
    config: ProviderConfig,
    tenants: Sequence[Tenant],
    mx_hosts: Mapping[str, Sequence[str] | None],
    now: float,
) -> list[Alert]:
    """The guard's alerts for every enforce tenant, acting on none of them
    (the metrics read these as the alerts open now)."""
    alerts: list[Alert] = []
    enforce = [t for t in tenants if t.policy.mode == "enforce"]
    settings = {t.domain: settings_for(config, t) for t in enforce}
    longest = max((s.report_days for s in settings.values()), default=0)
    today = int(now // DAY)
    failures = failures_by_mx(
        config.reports_db, [t.domain for t in enforce], today - 1 - longest, today - 1
    )
    for tenant in enforce:
        drift = mx_drift(tenant, mx_hosts.get(tenant.domain), settings[tenant.domain])
        if drift is not None:
            alerts.append(drift)
        alerts += failure_rise(
            tenant, failures.get(tenant.domain, {}), today, settings[tenant.domain]
        )
    return alerts


def _source(tenants: Sequence[Tenant], domain: str) -> Path:
    return Path(next(t.source for t in tenants if t.domain == domain))


def _keep(config: ProviderConfig, alerts: Sequence[Alert], now: float) -> None:
    """An event per alert, unless the tenant's last event says the same."""
    if not alerts:
        return
    last = latest_event_per_domain(config.results_db)
    new = [
        Event(a.domain, now, GUARD_ALERT, a.message, {**a.evidence, "change": a.change})
        for a in alerts
        if not (
            a.domain in last
            and last[a.domain].kind == GUARD_ALERT
            and last[a.domain].message == a.message
        )
    ]
    if new:
        add_events(config.results_db, new)
