"""Report figures in Prometheus's text exposition format.

Written by ``policy-host reports metrics`` for node_exporter's textfile
collector (a timer runs it), so the web app does no extra work. Built for
100,000 tenants: every series set is bounded whatever the tenant count.

- totals over the window: sessions by outcome, failed sessions by result
  type (the IANA registry's eleven plus ``other``) and side (``ours`` for
  the three ``sts-*`` types, else ``customer``): at most 14 series;
- inputs by what became of them (six outcomes);
- tenants with problems, counted by kind (two series);
- per-tenant series only for tenants with problems, at most
  ``max_tenants`` of them (worst first), and a count of those left out;
- the time the last report was received, for a "reports stopped" alert.
"""

from __future__ import annotations

import sqlite3

from prometheus_client import CollectorRegistry, Gauge, generate_latest

from policy_host.reports.model import OTHER, RESULT_TYPES, result_group, side
from policy_host.reports.schema import DAY, DUPLICATE, OUTCOMES
from policy_host.reports.summary import Limits, summarise

PREFIX = "policy_host_tlsrpt_"
DEFAULT_MAX_TENANTS = 100


def exposition(
    conn: sqlite3.Connection,
    now: float,
    window: float,
    limits: Limits,
    *,
    max_tenants: int = DEFAULT_MAX_TENANTS,
) -> bytes:
    since = now - window
    registry = CollectorRegistry()
    Gauge(
        PREFIX + "window_seconds", "Length of the window the figures cover", registry=registry
    ).set(window)
    sessions = Gauge(
        PREFIX + "sessions",
        "Sessions reported in the window, by outcome",
        ["outcome"],
        registry=registry,
    )
    # Whole UTC days, from the daily totals, as the summaries count them.
    first, last = int(since // DAY), -int(-now // DAY)
    success, failure = conn.execute(
        "SELECT coalesce(sum(success), 0), coalesce(sum(failure), 0) FROM daily "
        "WHERE day >= ? AND day < ?",
        (first, last),
    ).fetchone()
    sessions.labels("successful").set(success)
    sessions.labels("failed").set(failure)
    failed = Gauge(
        PREFIX + "failed_sessions",
        "Failed sessions in the window by result type; side=ours: about the policy host",
        ["result_type", "side"],
        registry=registry,
    )
    for result_type in (*RESULT_TYPES, OTHER):
        failed.labels(result_type, side(result_type)).set(0)
    for result_type, count in conn.execute(
        "SELECT result_type, sum(count) FROM daily_failure WHERE day >= ? AND day < ? GROUP BY 1",
        (first, last),
    ):
        group = result_group(result_type)
        failed.labels(group, side(group)).inc(count)
    inputs = Gauge(
        PREFIX + "inputs",
        "Inputs received in the window, by what became of them",
        ["outcome"],
        registry=registry,
    )
    for outcome in OUTCOMES:
        inputs.labels(outcome).set(0)
    for outcome, count in conn.execute(
        "SELECT outcome, count(*) FROM raw WHERE received >= ? GROUP BY 1", (since,)
    ):
        inputs.labels(outcome).set(count)
    (copies,) = conn.execute(
        "SELECT coalesce(sum(copies - 1), 0) FROM report WHERE received >= ?", (since,)
    ).fetchone()
    inputs.labels(DUPLICATE).set(copies)
    (last,) = conn.execute("SELECT max(received) FROM raw").fetchone()
    Gauge(
        PREFIX + "last_received_timestamp_seconds",
        "When the last input was received",
        registry=registry,
    ).set(last or 0)
    _tenants(registry, conn, since, now, limits, max_tenants)
    return generate_latest(registry)


def _tenants(
    registry: CollectorRegistry,
    conn: sqlite3.Connection,
    since: float,
    now: float,
    limits: Limits,
    max_tenants: int,
) -> None:
    problems = summarise(conn, None, since, now, limits, problems_only=True, detail=False)
    count = Gauge(
        PREFIX + "tenants_with_problems",
        "Tenants with failures about the policy host, or a failure rate over the limit",
        ["kind"],
        registry=registry,
    )
    count.labels("policy_host").set(sum(1 for t in problems if t.ours))
    count.labels("failure_rate").set(
        sum(
            1
            for t in problems
            if t.sessions >= limits.min_sessions and t.rate > limits.max_failure_rate
        )
    )
    rate = Gauge(
        PREFIX + "tenant_failure_ratio",
        "Failed share of sessions, only for tenants with problems (worst first, capped)",
        ["domain"],
        registry=registry,
    )
    ours = Gauge(
        PREFIX + "tenant_policy_host_failed_sessions",
        "Sessions failed because of the policy host, only for tenants with problems",
        ["domain"],
        registry=registry,
    )
    for tenant in problems[:max_tenants]:
        rate.labels(tenant.domain).set(tenant.rate)
        ours.labels(tenant.domain).set(tenant.ours)
    Gauge(
        PREFIX + "tenant_series_left_out",
        "Tenants with problems beyond the per-tenant series cap",
        registry=registry,
    ).set(max(0, len(problems) - max_tenants))
