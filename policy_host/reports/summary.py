"""What the stored reports say, per tenant, over a time range.

Pure queries over the store's connection; the CLI prints the result. The
three ``sts-*`` result types are about the policy host itself, so tenants
with those come first, and they alone make a tenant a problem whatever its
failure rate.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field

from policy_host.reports.model import OUR_SIDE, result_group
from policy_host.reports.schema import DAY

_OURS = tuple(sorted(OUR_SIDE))


@dataclass(frozen=True)
class Limits:
    max_failure_rate: float
    min_sessions: int


@dataclass
class TenantSummary:
    domain: str
    reports: int = 0
    success: int = 0
    failure: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    by_mx: dict[str, int] = field(default_factory=dict)
    # organisation -> [successful, failed]
    by_reporter: dict[str, list[int]] = field(default_factory=dict)
    # (match, policy id) -> [reports, organisations]
    policies: dict[tuple[str, str], list[object]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def sessions(self) -> int:
        return self.success + self.failure

    @property
    def rate(self) -> float:
        return self.failure / self.sessions if self.sessions else 0.0

    @property
    def ours(self) -> int:
        return sum(n for t, n in self.by_type.items() if t in OUR_SIDE)

    def judge(self, limits: Limits) -> None:
        self.problems = []
        if self.ours:
            self.problems.append(
                f"{self.ours} sessions failed because of the policy host "
                f"({', '.join(t for t in _OURS if self.by_type.get(t))})"
            )
        if self.sessions >= limits.min_sessions and self.rate > limits.max_failure_rate:
            self.problems.append(
                f"failure rate {self.rate:.1%} is above {limits.max_failure_rate:.1%}"
            )

    def as_dict(self) -> dict[str, object]:
        return {
            "domain": self.domain,
            "reports": self.reports,
            "successful_sessions": self.success,
            "failed_sessions": self.failure,
            "failure_rate": round(self.rate, 6),
            "policy_host_failures": self.ours,
            "failures_by_result_type": self.by_type,
            "failures_by_mx": self.by_mx,
            "by_reporter": {
                org: {"successful": s, "failed": f} for org, (s, f) in self.by_reporter.items()
            },
            "policies": [
                {"match": match, "policy_id": pid or None, "reports": n, "organizations": orgs}
                for (match, pid), (n, orgs) in self.policies.items()
            ],
            "problems": self.problems,
        }


def _where(
    domains: Sequence[str] | None, since: float, until: float, verified_only: bool, alias: str = "r"
) -> tuple[str, list[object]]:
    clauses = [f"{alias}.start >= ?", f"{alias}.start < ?"]
    args: list[object] = [since, until]
    if domains is not None:
        clauses.append(f"{alias}.domain IN ({','.join('?' * len(domains))})")
        args.extend(domains)
    if verified_only:
        clauses.append(f"{alias}.verified = 1")
    return " AND ".join(clauses), args


def summarise(
    conn: sqlite3.Connection,
    domains: Sequence[str] | None,
    since: float,
    until: float,
    limits: Limits,
    *,
    verified_only: bool = False,
    problems_only: bool = False,
    detail: bool = True,
) -> list[TenantSummary]:
    """Per tenant summaries over whole UTC days (by the reports' start),
    problems first (policy host failures, then by failure rate), then by
    domain. Totals and failures by result type come from the daily totals
    (one row per tenant and day); with ``detail`` the breakdowns by MX,
    reporter and policy version are read from the reports themselves."""
    first, last = int(since // DAY), -int(-until // DAY)
    where, args = _day_where(domains, first, last, verified_only)
    tenants: dict[str, TenantSummary] = {}
    for domain, reports, success, failure in conn.execute(
        f"SELECT domain, sum(reports), sum(success), sum(failure) FROM daily WHERE {where} "
        "GROUP BY domain",
        args,
    ):
        if reports:
            tenants[domain] = TenantSummary(domain, reports, success, failure)
    # Failures about us, for every tenant: they decide what is a problem.
    for domain, result_type, count in conn.execute(
        f"SELECT domain, result_type, sum(count) FROM daily_failure WHERE {where} "
        f"AND result_type IN ({','.join('?' * len(_OURS))}) GROUP BY 1, 2",
        [*args, *_OURS],
    ):
        if domain in tenants and count:
            tenants[domain].by_type[result_type] = count
    for tenant in tenants.values():
        tenant.judge(limits)
    chosen = [t for t in tenants.values() if t.problems or not problems_only]
    # Tenants with problems always get failures by type: they say what to fix.
    typed = chosen if detail else [t for t in chosen if t.problems]
    if typed:
        _by_type(conn, typed, first, last, verified_only)
    if detail and chosen:
        _details(conn, chosen, first * DAY, last * DAY, verified_only)
    chosen.sort(key=lambda t: (-t.ours, not t.problems, -t.rate, t.domain))
    return chosen


def _day_where(
    domains: Sequence[str] | None, first: int, last: int, verified_only: bool
) -> tuple[str, list[object]]:
    clauses = ["day >= ?", "day < ?"]
    args: list[object] = [first, last]
    if domains is not None:
        clauses.append(f"domain IN ({','.join('?' * len(domains))})")
        args.extend(domains)
    if verified_only:
        clauses.append("verified = 1")
    return " AND ".join(clauses), args


def _by_type(
    conn: sqlite3.Connection,
    tenants: list[TenantSummary],
    first: int,
    last: int,
    verified_only: bool,
) -> None:
    by_domain = {t.domain: t for t in tenants}
    domains = list(by_domain) if len(by_domain) <= 5000 else None
    where, args = _day_where(domains, first, last, verified_only)
    for tenant in tenants:
        tenant.by_type = {}
    for domain, result_type, count in conn.execute(
        f"SELECT domain, result_type, sum(count) FROM daily_failure WHERE {where} GROUP BY 1, 2",
        args,
    ):
        found = by_domain.get(domain)
        if found is not None and count:
            group = result_group(result_type)
            found.by_type[group] = found.by_type.get(group, 0) + count


def _details(
    conn: sqlite3.Connection,
    tenants: list[TenantSummary],
    since: float,
    until: float,
    verified_only: bool,
) -> None:
    by_domain = {t.domain: t for t in tenants}
    # SQLite allows 32766 variables; beyond a few thousand domains a scan
    # of the range is quicker than the IN list anyway.
    domains = list(by_domain) if len(by_domain) <= 5000 else None
    where, args = _where(domains, since, until, verified_only)
    for domain, mx, count in conn.execute(
        f"SELECT r.domain, d.receiving_mx_hostname, sum(d.count) FROM result r "
        f"JOIN detail d ON d.result = r.id WHERE {where} AND r.failure > 0 GROUP BY 1, 2",
        args,
    ):
        found = by_domain.get(domain)
        if found is None:
            continue
        key = mx or "(none given)"
        found.by_mx[key] = found.by_mx.get(key, 0) + count
    for domain, organization, success, failure in conn.execute(
        f"SELECT r.domain, p.organization, sum(r.success), sum(r.failure) FROM result r "
        f"JOIN report p ON p.id = r.report WHERE {where} GROUP BY 1, 2",
        args,
    ):
        if domain in by_domain:
            by_domain[domain].by_reporter[organization] = [success, failure]
    for domain, match, policy_id, count, organizations in conn.execute(
        f"SELECT r.domain, r.policy_match, r.policy_id, count(*), "
        f"json_group_array(DISTINCT p.organization) FROM result r JOIN report p ON p.id = r.report "
        f"WHERE {where} GROUP BY 1, 2, 3",
        args,
    ):
        if domain in by_domain:
            orgs = sorted(json.loads(organizations))
            by_domain[domain].policies[(match, policy_id or "")] = [count, orgs]
