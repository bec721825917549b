"""Readiness for enforce: one ready tenant, and one held back by each reason."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from policy_host.model import Policy, Tenant
from policy_host.promote.readiness import (
    HOLDS,
    Published,
    ReportEvidence,
    readiness,
)
from policy_host.read.promotion import DAY, PromoteSettings
from policy_host.results import CheckResult

NOW = 1_800_000_000.0
MX = ("mx1.example.com", "mx2.example.com")
SETTINGS = PromoteSettings(
    min_testing_days=14,
    min_certificate_days=21,
    report_days=14,
    min_sessions=100,
    min_organizations=2,
    max_failure_rate=0.01,
)


def _reason(code: str, severity: str = "fail") -> dict[str, str]:
    return {"code": code, "severity": severity, "message": f"{code} here", "subject": "x"}


def _inputs() -> dict[str, Any]:
    """A tenant that is ready: every other case changes one thing."""
    return {
        "tenant": Tenant("example.com", Policy("testing", ("*.example.com",), 604_800), "t.yaml"),
        "published": Published("testing", NOW - 20 * DAY, "20260101000000abcdef01"),
        "check": CheckResult("example.com", NOW - 3600, "ok", "testing", (), MX),
        "cert_not_after": NOW + 60 * DAY,
        "reports": ReportEvidence(
            days=14,
            success=1000,
            failure=2,
            organizations=("Google", "Microsoft"),
            success_by_mx_patterns=((("*.example.com",), 1000),),
        ),
        "settings": SETTINGS,
        "now": NOW,
    }


def _with(**changes: Any) -> dict[str, Any]:
    return {**_inputs(), **changes}


def _reports(**changes: Any) -> ReportEvidence:
    base: ReportEvidence = _inputs()["reports"]
    return dataclasses.replace(base, **changes)


def test_a_tenant_with_all_the_evidence_is_ready() -> None:
    result = readiness(**_inputs())
    assert result.ready, result.holds
    assert result.evidence["reports"]["successful_sessions_by_mx"] == {
        "mx1.example.com": 1000,
        "mx2.example.com": 1000,
    }
    assert result.evidence["certificate_days_left"] == 60


HELD = [
    (
        "not_testing",
        _with(tenant=Tenant("example.com", Policy("enforce", ("*.example.com",), 604_800), "t")),
    ),
    ("not_published", _with(published=None)),
    ("not_published", _with(published=Published("enforce", NOW - 20 * DAY, "x1"))),
    ("testing_too_short", _with(published=Published("testing", NOW - 13 * DAY, "x1"))),
    # max_age longer than the configured minimum: it decides.
    (
        "testing_too_short",
        _with(
            tenant=Tenant("example.com", Policy("testing", ("*.example.com",), 30 * 86_400), "t")
        ),
    ),
    ("check_missing", _with(check=None)),
    (
        "check_stale",
        _with(check=CheckResult("example.com", NOW - 49 * 3600, "ok", "testing", (), MX)),
    ),
    (
        "mx_mismatch",
        _with(
            check=CheckResult(
                "example.com", NOW, "warn", "testing", (_reason("mx_mismatch", "warn"),), MX
            )
        ),
    ),
    (
        "check_failed",
        _with(
            check=CheckResult("example.com", NOW, "fail", "testing", (_reason("txt_missing"),), MX)
        ),
    ),
    ("certificate_missing", _with(cert_not_after=None)),
    ("certificate_missing", _with(cert_not_after=NOW - 1)),
    ("certificate_expiring", _with(cert_not_after=NOW + 20 * DAY)),
    (
        "reports_too_few_sessions",
        _with(
            reports=_reports(
                success=99, failure=0, success_by_mx_patterns=((("*.example.com",), 99),)
            )
        ),
    ),
    ("reports_too_few_organizations", _with(reports=_reports(organizations=("Google",)))),
    (
        "reports_mx_unseen",
        _with(
            reports=_reports(success_by_mx_patterns=((("mx1.example.com",), 1000),)),
        ),
    ),
    ("reports_failure_rate", _with(reports=_reports(failure=20))),
    ("reports_policy_host_failures", _with(reports=_reports(policy_host_failures=1))),
]


@pytest.mark.parametrize(
    ("code", "inputs"), HELD, ids=[f"{c}-{n}" for n, (c, _) in enumerate(HELD)]
)
def test_held_back_by_exactly_this_reason(code: str, inputs: dict[str, Any]) -> None:
    result = readiness(**inputs)
    assert not result.ready
    assert result.codes == [code]
    assert result.holds[0].message


def test_every_hold_code_has_a_case() -> None:
    assert {code for code, _ in HELD} == set(HOLDS)


def test_all_reasons_are_given_at_once() -> None:
    result = readiness(
        **_with(published=None, check=None, cert_not_after=None, reports=ReportEvidence(days=14))
    )
    assert result.codes == [
        "not_published",
        "check_missing",
        "certificate_missing",
        "reports_too_few_sessions",
        "reports_too_few_organizations",
    ]


def test_tenant_overrides_change_the_verdict() -> None:
    inputs = _with(reports=_reports(organizations=("Google",)))
    assert not readiness(**inputs).ready
    relaxed = dataclasses.replace(SETTINGS, min_organizations=1)
    assert readiness(**{**inputs, "settings": relaxed}).ready
