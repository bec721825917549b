"""Gather what readiness judges: the published policy per tenant (apply
state), the stored check and certificate results, and the TLS reports.

Reads the stores only, never DNS: `promote` and the status page see what
`check`, `certs`, `apply` and the report ingester last wrote.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from policy_host.certs.attempts import recorded_certificates
from policy_host.model import POLICY_HOST_PREFIX, Tenant
from policy_host.promote.readiness import Published, Readiness, ReportEvidence, readiness
from policy_host.read.config import ProviderConfig
from policy_host.read.promotion import DAY, PromoteSettings, tenant_settings
from policy_host.reports.model import OUR_SIDE
from policy_host.results import CheckResult, read_checks
from policy_host.sqlitedb import reading
from policy_host.state import Record, read_records

_CHUNK = 500


def policy_mode(body: bytes) -> str | None:
    """The ``mode`` of a rendered policy body (RFC 8461 section 3.2)."""
    for line in body.split(b"\r\n"):
        key, _, value = line.partition(b":")
        if key == b"mode":
            return value.strip().decode("ascii", "replace")
    return None


def published_policies(state_db: Path) -> dict[str, Published]:
    """The committed policy per tenant: mode, when it was published, its id."""
    return published_of(read_records(state_db))


def published_of(records: Mapping[str, Record]) -> dict[str, Published]:
    """``published_policies`` from apply state already read."""
    found = {}
    for domain, record in records.items():
        # Without a primary to publish to, the operator loads the zone by
        # hand: then the time it was served is the best known.
        since = record.published_at or record.served_at
        if record.body is None or since is None or record.policy_id is None:
            continue
        mode = policy_mode(record.body)
        if mode is not None:
            found[domain] = Published(mode, since, record.policy_id)
    return found


@dataclass
class _Tally:
    success: int = 0
    failure: int = 0
    ours: int = 0
    orgs: set[str] = field(default_factory=set)
    by_mx: dict[tuple[str, ...], int] = field(default_factory=dict)


def report_evidence(
    reports_db: Path, domains: Sequence[str], since: float, until: float, days: int
) -> dict[str, ReportEvidence]:
    """Per domain, what the reports that start in [since, until) say."""
    tallies = {d: _Tally() for d in domains}
    ours = sorted(OUR_SIDE)
    with reading(reports_db) as conn:
        for start in range(0, len(domains) if conn is not None else 0, _CHUNK):
            assert conn is not None
            chunk = list(domains[start : start + _CHUNK])
            where = f"r.domain IN ({','.join('?' * len(chunk))}) AND r.start >= ? AND r.start < ?"
            args = [*chunk, since, until]
            for domain, org, mx_host, success, failure in conn.execute(
                "SELECT r.domain, p.organization, r.mx_host, sum(r.success), sum(r.failure) "
                f"FROM result r JOIN report p ON p.id = r.report WHERE {where} GROUP BY 1, 2, 3",
                args,
            ):
                t = tallies[domain]
                t.success += success
                t.failure += failure
                if success or failure:
                    t.orgs.add(org)
                key = tuple(json.loads(mx_host))
                t.by_mx[key] = t.by_mx.get(key, 0) + success
            for domain, count in conn.execute(
                f"SELECT r.domain, sum(d.count) FROM result r JOIN detail d ON d.result = r.id "
                f"WHERE {where} AND d.result_type IN ({','.join('?' * len(ours))}) GROUP BY 1",
                [*args, *ours],
            ):
                tallies[domain].ours = count
    return {
        d: ReportEvidence(
            days,
            t.success,
            t.failure,
            tuple(sorted(t.orgs)),
            t.ours,
            tuple(sorted(t.by_mx.items())),
        )
        for d, t in tallies.items()
    }


@dataclass(frozen=True)
class Assessment:
    tenant: Tenant
    settings: PromoteSettings
    readiness: Readiness
    check: CheckResult | None


def assess(config: ProviderConfig, tenants: Sequence[Tenant], now: float) -> list[Assessment]:
    """Readiness for each tenant, from the stores; tenant overrides applied."""
    return assess_from(
        config,
        tenants,
        now,
        published_policies(config.state_db),
        read_checks(config.results_db, [t.domain for t in tenants]),
        recorded_certificates(config.certs_db),
    )


def assess_from(
    config: ProviderConfig,
    tenants: Sequence[Tenant],
    now: float,
    published: Mapping[str, Published],
    checks: Mapping[str, CheckResult],
    certs: Mapping[str, float],
) -> list[Assessment]:
    """``assess`` with the apply state, checks and certificates already read
    (the status page reads each store once for all its rows); the report
    evidence is still read here, in bulk."""
    settings = {t.domain: settings_for(config, t) for t in tenants}
    by_days: dict[int, list[str]] = {}
    for t in tenants:
        by_days.setdefault(settings[t.domain].report_days, []).append(t.domain)
    evidence: dict[str, ReportEvidence] = {}
    for days, domains in by_days.items():
        evidence.update(report_evidence(config.reports_db, domains, now - days * DAY, now, days))
    return [
        Assessment(
            t,
            settings[t.domain],
            readiness(
                t,
                published.get(t.domain),
                checks.get(t.domain),
                certs.get(POLICY_HOST_PREFIX + t.domain),
                evidence[t.domain],
                settings[t.domain],
                now,
            ),
            checks.get(t.domain),
        )
        for t in tenants
    ]


def settings_for(config: ProviderConfig, tenant: Tenant) -> PromoteSettings:
    """The provider's promote settings with the tenant file's overrides."""
    path = Path(tenant.source)
    try:
        data = path.read_bytes()
    except OSError:
        return config.promote
    if b"promote" not in data:
        return config.promote
    return tenant_settings(path, data, config.promote)


def failures_by_mx(
    reports_db: Path, domains: Sequence[str], first_day: int, last_day: int
) -> dict[str, dict[str, dict[int, int]]]:
    """Failed sessions per domain, receiving MX and UTC day in [first_day, last_day]."""
    found: dict[str, dict[str, dict[int, int]]] = {}
    with reading(reports_db) as conn:
        for start in range(0, len(domains) if conn is not None else 0, _CHUNK):
            assert conn is not None
            chunk = list(domains[start : start + _CHUNK])
            for domain, day, mx, count in conn.execute(
                "SELECT r.domain, CAST(r.start / 86400 AS INTEGER), d.receiving_mx_hostname, "
                "sum(d.count) FROM result r JOIN detail d ON d.result = r.id "
                f"WHERE r.domain IN ({','.join('?' * len(chunk))}) AND r.start >= ? "
                "AND r.start < ? GROUP BY 1, 2, 3",
                [*chunk, first_day * DAY, (last_day + 1) * DAY],
            ):
                per_mx = found.setdefault(domain, {})
                per_day = per_mx.setdefault(mx or "(none given)", {})
                per_day[day] = per_day.get(day, 0) + count
    return found
