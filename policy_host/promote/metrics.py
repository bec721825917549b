"""Guard and promotion figures in Prometheus's text exposition format.

Written with the TLS report metrics by ``policy-host reports metrics``
(node_exporter's textfile collector). Bounded for 100,000 tenants: counts by
alert kind, event kind and hold code are fixed sets; a tenant has series of
its own only while it has an open guard alert, at most ``max_tenants`` of
them, and a count says how many were left out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from prometheus_client import CollectorRegistry, Gauge, generate_latest

from policy_host.promote.guard import FAILURE_RISE, MX_DRIFT, Alert
from policy_host.promote.readiness import HOLDS, Readiness
from policy_host.results import EVENT_KINDS

PREFIX = "policy_host_"
ALERT_KINDS = (MX_DRIFT, FAILURE_RISE)
DEFAULT_MAX_TENANTS = 100


def exposition(
    alerts: Sequence[Alert],
    readiness: Sequence[Readiness],
    events: Mapping[str, int],
    window: float,
    *,
    max_tenants: int = DEFAULT_MAX_TENANTS,
) -> bytes:
    """``alerts``: the guard's open alerts; ``readiness``: every tenant in
    testing; ``events``: kept events per kind over the last ``window``."""
    registry = CollectorRegistry()
    by_kind = Gauge(
        PREFIX + "guard_alerts",
        "Enforce tenants with an open guard alert, by kind (mx_drift: MX hosts the policy "
        "does not match; failure_rise: a sudden rise of failures to one MX)",
        ["kind"],
        registry=registry,
    )
    for kind in ALERT_KINDS:
        by_kind.labels(kind).set(len({a.domain for a in alerts if a.kind == kind}))
    per_tenant = Gauge(
        PREFIX + "guard_tenant_alert",
        "1 per open guard alert, only for tenants with one (capped, sorted by domain)",
        ["domain", "kind"],
        registry=registry,
    )
    with_alert = sorted({a.domain for a in alerts})
    shown = set(with_alert[:max_tenants])
    for alert in alerts:
        if alert.domain in shown:
            per_tenant.labels(alert.domain, alert.kind).set(1)
    Gauge(
        PREFIX + "guard_tenant_series_left_out",
        "Tenants with an open guard alert beyond the per-tenant series cap",
        registry=registry,
    ).set(len(with_alert) - len(shown))
    kept = Gauge(
        PREFIX + "guard_events",
        "Guard alerts, step downs and promotions kept in the window, by kind",
        ["kind"],
        registry=registry,
    )
    for kind in EVENT_KINDS:
        kept.labels(kind).set(events.get(kind, 0))
    Gauge(
        PREFIX + "guard_events_window_seconds",
        "Length of the window policy_host_guard_events covers",
        registry=registry,
    ).set(window)
    state = Gauge(
        PREFIX + "promote_tenants",
        "Tenants in testing, by readiness for enforce",
        ["state"],
        registry=registry,
    )
    ready = sum(r.ready for r in readiness)
    state.labels("ready").set(ready)
    state.labels("held").set(len(readiness) - ready)
    held = Gauge(
        PREFIX + "promote_held_tenants",
        "Tenants in testing held back, by reason (a tenant counts under each of its reasons)",
        ["reason"],
        registry=registry,
    )
    for code in HOLDS:
        if code != "not_testing":
            held.labels(code).set(sum(code in r.codes for r in readiness))
    return generate_latest(registry)
