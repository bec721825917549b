"""The guard's judgements: MX drift of an enforce tenant, a rise of failures to one MX."""

from __future__ import annotations

import pytest

from policy_host.model import Policy, Tenant
from policy_host.promote.guard import FAILURE_RISE, MX_DRIFT, failure_rise, mx_drift
from policy_host.read.promotion import PromoteSettings

SETTINGS = PromoteSettings(report_days=7, failure_jump_min=50, failure_jump=5.0)


def tenant(mode: str = "enforce") -> Tenant:
    return Tenant("example.com", Policy(mode, ("mx1.example.com", "*.b.example.com"), 604_800), "t")


@pytest.mark.parametrize(
    ("mode", "hosts", "unmatched"),
    [
        ("enforce", ("mx1.example.com", "x.b.example.com"), None),
        ("enforce", ("mx2.example.com",), ["mx2.example.com"]),
        ("enforce", ("mx1.example.com", "a.x.b.example.com"), ["a.x.b.example.com"]),
        ("testing", ("mx2.example.com",), None),  # testing: check warns, no guard
        ("enforce", (), None),
    ],
)
def test_mx_drift(mode: str, hosts: tuple[str, ...], unmatched: list[str] | None) -> None:
    alert = mx_drift(tenant(mode), hosts, SETTINGS)
    if unmatched is None:
        assert alert is None
    else:
        assert alert is not None and alert.kind == MX_DRIFT
        assert alert.evidence["unmatched"] == unmatched
        assert all(f"- '{h}'" in alert.change for h in unmatched)
        assert alert.step_down is False


TODAY = 20_000


@pytest.mark.parametrize(
    ("per_day", "alerted"),
    [
        ({TODAY - 1: 60}, True),  # from nothing to 60
        ({TODAY - 1: 49}, False),  # under failure_jump_min
        ({TODAY - 1: 60, **{TODAY - 1 - d: 20 for d in range(1, 8)}}, False),  # only 3x
        ({TODAY - 1: 101, **{TODAY - 1 - d: 20 for d in range(1, 8)}}, True),  # over 5x
        ({TODAY: 500}, False),  # today is not a whole day yet
    ],
)
def test_failure_rise_to_one_mx(per_day: dict[int, int], alerted: bool) -> None:
    alerts = failure_rise(
        tenant(), {"mx1.example.com": per_day, "mx9.example.com": {}}, TODAY, SETTINGS
    )
    assert [a.kind for a in alerts] == ([FAILURE_RISE] if alerted else [])
    if alerted:
        assert alerts[0].evidence["mx"] == "mx1.example.com"
