"""Guard alerts and promotion readiness in `policy-host reports metrics`:
counts by kind and reason, per-tenant series only for tenants with an open
alert, and a cap on those whatever the tenant count."""

from __future__ import annotations

import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from support.promoteenv import policy_host, provider_with_evidence

from policy_host.promote.guard import MX_DRIFT, Alert
from policy_host.promote.metrics import exposition
from policy_host.promote.readiness import HOLDS, Hold, Readiness
from policy_host.results import EVENT_KINDS, STEPPED_DOWN, Event, add_events

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_the_metrics_file_carries_guard_alerts_and_readiness(tmp_path: Path) -> None:
    config = provider_with_evidence(tmp_path)
    now = time.time()
    add_events(
        config.results_db,
        [
            Event("done.example", now - 3600, STEPPED_DOWN, "stepped down", {}),
            Event("done.example", now - 40 * 86_400, STEPPED_DOWN, "long ago", {}),
        ],
    )
    out = tmp_path / "textfile" / "policy_host_tlsrpt.prom"
    done = policy_host(config, "reports", "metrics", "--since", "7d", "--output", str(out))
    assert done.returncode == 0, done.stderr
    found = samples(out.read_text())
    # done.example (enforce) has MX hosts in DNS that its policy misses.
    assert found[("policy_host_guard_alerts", (("kind", "mx_drift"),))] == 1
    assert found[("policy_host_guard_alerts", (("kind", "failure_rise"),))] == 0
    alert = ("policy_host_guard_tenant_alert", (("domain", "done.example"), ("kind", "mx_drift")))
    assert found[alert] == 1
    # Tenants without an open alert have no series of their own.
    assert not [
        k
        for k in found
        if k[0].startswith("policy_host_guard") and ("domain", "ready.example") in k[1]
    ]
    assert found[("policy_host_guard_tenant_series_left_out", ())] == 0
    # Events in the window only (the 40-day-old one is outside 7d).
    assert found[("policy_host_guard_events", (("kind", STEPPED_DOWN),))] == 1
    assert found[("policy_host_guard_events", (("kind", "promoted"),))] == 0
    # ready.example is ready; young.example held by two reasons.
    assert found[("policy_host_promote_tenants", (("state", "ready"),))] == 1
    assert found[("policy_host_promote_tenants", (("state", "held"),))] == 1
    held = "policy_host_promote_held_tenants"
    assert found[(held, (("reason", "testing_too_short"),))] == 1
    assert found[(held, (("reason", "reports_too_few_organizations"),))] == 1
    assert found[(held, (("reason", "certificate_missing"),))] == 0
    # The report figures are still there beside them.
    assert ("policy_host_tlsrpt_sessions", (("outcome", "successful"),)) in found


def test_guard_series_stay_bounded_with_many_alerts() -> None:
    alerts = [
        Alert(f"t{n:04}.example", MX_DRIFT, "drift", "add it", {}, False) for n in range(5000)
    ]
    readiness = [
        Readiness(f"r{n}.example", (Hold("reports_mx_unseen", "none"),) if n % 2 else ())
        for n in range(5000)
    ]
    found = samples(exposition(alerts, readiness, {}, 86_400.0, max_tenants=50).decode())
    per_tenant = [k for k in found if any(name == "domain" for name, _ in k[1])]
    assert len(per_tenant) == 50
    assert (
        "policy_host_guard_tenant_alert",
        (("domain", "t0000.example"), ("kind", MX_DRIFT)),
    ) in found
    assert found[("policy_host_guard_tenant_series_left_out", ())] == 4950
    assert found[("policy_host_guard_alerts", (("kind", MX_DRIFT),))] == 5000
    assert found[("policy_host_promote_tenants", (("state", "held"),))] == 2500
    assert found[("policy_host_promote_held_tenants", (("reason", "reports_mx_unseen"),))] == 2500
    # Fixed sets otherwise: kinds, event kinds, hold codes, two states, two singles.
    assert len(found) == 50 + 2 + len(EVENT_KINDS) + 2 + (len(HOLDS) - 1) + 2
