"""Per-day report figures for the status page, read from the report store.

The list page reads the daily totals of the tenants on one page only; the
tenant page reads one tenant's days by result type and by MX, and the
policy versions senders said they used (RFC 8460 section 4.3).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from policy_host.sqlitedb import reading


def daily_totals(
    reports_db: Path, domains: Sequence[str], first: int, last: int
) -> dict[str, dict[int, tuple[int, int]]]:
    """(successful, failed) sessions per domain and UTC day in [first, last]."""
    found: dict[str, dict[int, tuple[int, int]]] = {d: {} for d in domains}
    if not domains:
        return found
    with reading(reports_db) as conn:
        if conn is None:
            return found
        for domain, day, success, failure in conn.execute(
            "SELECT domain, day, sum(success), sum(failure) FROM daily "
            f"WHERE domain IN ({','.join('?' * len(domains))}) AND day >= ? AND day <= ? "
            "GROUP BY 1, 2",
            [*domains, first, last],
        ):
            found[domain][day] = (success, failure)
    return found


@dataclass
class TenantSeries:
    days: list[int]
    totals: dict[int, tuple[int, int]] = field(default_factory=dict)
    # category -> day -> failed sessions
    by_type: dict[str, dict[int, int]] = field(default_factory=dict)
    by_mx: dict[str, dict[int, int]] = field(default_factory=dict)
    # (policy id, match) -> [reports, first day, last day, organisations]
    policies: list[tuple[str, str, int, int, int, str]] = field(default_factory=list)


def tenant_series(reports_db: Path, domain: str, first: int, last: int) -> TenantSeries:
    series = TenantSeries(list(range(first, last + 1)))
    series.totals = daily_totals(reports_db, [domain], first, last)[domain]
    with reading(reports_db) as conn:
        if conn is None:
            return series
        for day, result_type, count in conn.execute(
            "SELECT day, result_type, sum(count) FROM daily_failure "
            "WHERE domain = ? AND day >= ? AND day <= ? GROUP BY 1, 2",
            (domain, first, last),
        ):
            series.by_type.setdefault(result_type, {})[day] = count
        since, until = first * 86_400, (last + 1) * 86_400
        for day, mx, count in conn.execute(
            "SELECT CAST(r.start / 86400 AS INTEGER), d.receiving_mx_hostname, sum(d.count) "
            "FROM result r JOIN detail d ON d.result = r.id "
            "WHERE r.domain = ? AND r.start >= ? AND r.start < ? GROUP BY 1, 2",
            (domain, since, until),
        ):
            series.by_mx.setdefault(mx or "(none given)", {})[day] = count
        series.policies = [
            (pid or "-", match, n, int(lo // 86_400), int(hi // 86_400), orgs)
            for pid, match, n, lo, hi, orgs in conn.execute(
                "SELECT r.policy_id, r.policy_match, count(*), min(r.start), max(r.start), "
                "group_concat(DISTINCT p.organization) FROM result r "
                "JOIN report p ON p.id = r.report WHERE r.domain = ? AND r.start >= ? "
                "AND r.start < ? GROUP BY 1, 2 ORDER BY 5 DESC",
                (domain, since, until),
            )
        ]
    return series
