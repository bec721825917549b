"""Is a `testing` tenant ready for `enforce`? Every reason it is held back.

A pure function of what is already known: the tenant, its committed state,
its stored `check` result, its certificate's expiry, the TLS report evidence
(RFC 8460), the thresholds and the time. Nothing here reads a file or DNS.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from policy_host.model import Tenant, mx_matches
from policy_host.read.promotion import DAY, PromoteSettings
from policy_host.results import CheckResult

HOUR = 3600.0

# Every code a tenant can be held back by, with what it means.
HOLDS: dict[str, str] = {
    "not_testing": "the tenant is not in mode testing",
    "not_published": "no testing policy of this tenant is published yet (run apply)",
    "testing_too_short": "in testing for less than max_age and the configured minimum",
    "check_missing": "no stored check result (run check)",
    "check_stale": "the stored check result is too old (run check)",
    "mx_mismatch": "an MX host in DNS matches no policy mx pattern",
    "check_failed": "check found another failure",
    "certificate_missing": "no valid certificate for mta-sts.<domain>",
    "certificate_expiring": "the certificate expires too soon",
    "reports_too_few_sessions": "TLS reports show too few successful sessions",
    "reports_too_few_organizations": "too few organisations sent TLS reports",
    "reports_mx_unseen": "an MX host in DNS has no successful session in the reports",
    "reports_failure_rate": "the failure rate in the TLS reports is above the threshold",
    "reports_policy_host_failures": "reports show failures about the policy host itself",
}
MX_CODES = frozenset({"mx_mismatch", "mx_mismatch_microsoft", "mx_missing", "domain_nxdomain"})


@dataclass(frozen=True)
class ReportEvidence:
    """What the TLS reports over the window say for one tenant."""

    days: int
    success: int = 0
    failure: int = 0
    organizations: tuple[str, ...] = ()
    policy_host_failures: int = 0
    # Successful sessions per policy, keyed by the mx patterns the sender saw
    # (RFC 8460 section 4.3 ``mx-host``): which MX hosts they covered.
    success_by_mx_patterns: tuple[tuple[tuple[str, ...], int], ...] = ()

    @property
    def rate(self) -> float:
        total = self.success + self.failure
        return self.failure / total if total else 0.0

    def success_to(self, host: str) -> int:
        return sum(
            n
            for patterns, n in self.success_by_mx_patterns
            if any(mx_matches(p, host) for p in patterns)
        )


@dataclass(frozen=True)
class Hold:
    code: str
    message: str

    def __post_init__(self) -> None:
        if self.code not in HOLDS:  # a programming error, caught by the tests
            raise ValueError(f"unknown hold code {self.code!r}")

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True)
class Readiness:
    domain: str
    holds: tuple[Hold, ...]
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return not self.holds

    @property
    def codes(self) -> list[str]:
        return [h.code for h in self.holds]

    def as_dict(self) -> dict[str, Any]:
        return {
            "domain": self.domain,
            "ready": self.ready,
            "holds": [h.as_dict() for h in self.holds],
            "evidence": self.evidence,
        }


@dataclass(frozen=True)
class Published:
    """The committed policy in the apply state: its mode and when it went out."""

    mode: str
    published_at: float
    policy_id: str


def _days(seconds: float) -> str:
    return f"{seconds / DAY:.1f} days"


def readiness(
    tenant: Tenant,
    published: Published | None,
    check: CheckResult | None,
    cert_not_after: float | None,
    reports: ReportEvidence,
    settings: PromoteSettings,
    now: float,
) -> Readiness:
    """Every reason ``tenant`` may not move from testing to enforce yet."""
    holds: list[Hold] = []
    evidence: dict[str, Any] = {"at": now, "max_age": tenant.policy.max_age}
    if tenant.policy.mode != "testing":
        holds.append(Hold("not_testing", f"mode is {tenant.policy.mode}"))
        return Readiness(tenant.domain, tuple(holds), evidence)
    holds += _time_holds(tenant, published, settings, now, evidence)
    mx_hosts = _check_holds(check, settings, now, holds, evidence)
    holds += _certificate_holds(cert_not_after, settings, now, evidence)
    holds += _report_holds(reports, mx_hosts, settings, evidence)
    return Readiness(tenant.domain, tuple(holds), evidence)


def _time_holds(
    tenant: Tenant,
    published: Published | None,
    settings: PromoteSettings,
    now: float,
    evidence: dict[str, Any],
) -> list[Hold]:
    if published is None or published.mode != "testing":
        return [Hold("not_published", "no testing policy is published: run 'policy-host apply'")]
    # RFC 8461 section 5: a sender may cache the policy for max_age; until
    # then some senders never fetched the testing policy at all.
    needed = max(float(tenant.policy.max_age), settings.min_testing_days * DAY)
    since = now - published.published_at
    evidence.update(
        testing_since=published.published_at,
        policy_id=published.policy_id,
        testing_seconds=round(since),
        testing_needed_seconds=round(needed),
    )
    if since < needed:
        return [
            Hold(
                "testing_too_short",
                f"in testing for {_days(since)} (policy {published.policy_id}); "
                f"{_days(needed)} needed (max_age {tenant.policy.max_age} s, "
                f"min_testing_days {settings.min_testing_days})",
            )
        ]
    return []


def _check_holds(
    check: CheckResult | None,
    settings: PromoteSettings,
    now: float,
    holds: list[Hold],
    evidence: dict[str, Any],
) -> Sequence[str]:
    """Holds from the stored check result; the MX hosts it saw."""
    if check is None:
        holds.append(Hold("check_missing", "no check result stored: run 'policy-host check'"))
        return ()
    evidence.update(check_at=check.checked, check_status=check.status, mx_hosts=check.mx_hosts)
    age = now - check.checked
    if age > settings.max_check_age_hours * HOUR:
        holds.append(
            Hold(
                "check_stale",
                f"the last check is {age / HOUR:.0f} hours old; "
                f"max_check_age_hours is {settings.max_check_age_hours}",
            )
        )
    for reason in check.reasons:
        if reason["code"] in MX_CODES:
            holds.append(Hold("mx_mismatch", f"{reason['code']}: {reason['message']}"))
    others = [r for r in check.reasons if r["severity"] == "fail" and r["code"] not in MX_CODES]
    if others:
        said = "; ".join(f"{r['code']}: {r['message']}" for r in others)
        holds.append(Hold("check_failed", said))
    return check.mx_hosts or ()


def _certificate_holds(
    not_after: float | None, settings: PromoteSettings, now: float, evidence: dict[str, Any]
) -> list[Hold]:
    if not_after is None or not_after <= now:
        evidence["certificate_not_after"] = not_after
        return [
            Hold("certificate_missing", "no valid certificate is known: run 'policy-host certs'")
        ]
    left = not_after - now
    evidence.update(certificate_not_after=not_after, certificate_days_left=int(left // DAY))
    if left < settings.min_certificate_days * DAY:
        return [
            Hold(
                "certificate_expiring",
                f"the certificate expires in {_days(left)}; "
                f"min_certificate_days is {settings.min_certificate_days}",
            )
        ]
    return []


def _report_holds(
    reports: ReportEvidence,
    mx_hosts: Sequence[str],
    settings: PromoteSettings,
    evidence: dict[str, Any],
) -> list[Hold]:
    seen = {host: reports.success_to(host) for host in mx_hosts}
    evidence["reports"] = {
        "days": reports.days,
        "successful_sessions": reports.success,
        "failed_sessions": reports.failure,
        "failure_rate": round(reports.rate, 6),
        "organizations": list(reports.organizations),
        "policy_host_failures": reports.policy_host_failures,
        "successful_sessions_by_mx": seen,
    }
    window = f"in the last {reports.days} days"
    holds = []
    if reports.success < settings.min_sessions:
        holds.append(
            Hold(
                "reports_too_few_sessions",
                f"{reports.success} successful sessions {window}; "
                f"min_sessions is {settings.min_sessions}",
            )
        )
    if len(reports.organizations) < settings.min_organizations:
        holds.append(
            Hold(
                "reports_too_few_organizations",
                f"{len(reports.organizations)} reporting organisations {window}; "
                f"min_organizations is {settings.min_organizations}",
            )
        )
    unseen = sorted(host for host, n in seen.items() if not n)
    if unseen:
        holds.append(
            Hold(
                "reports_mx_unseen",
                f"no successful session to {', '.join(unseen)} {window}",
            )
        )
    if reports.rate > settings.max_failure_rate:
        holds.append(
            Hold(
                "reports_failure_rate",
                f"failure rate {reports.rate:.2%} {window}; "
                f"max_failure_rate is {settings.max_failure_rate:.2%}",
            )
        )
    if reports.policy_host_failures:
        holds.append(
            Hold(
                "reports_policy_host_failures",
                f"{reports.policy_host_failures} sessions failed because of the policy host "
                f"(sts-* result types) {window}",
            )
        )
    return holds
