"""Promotion and guard settings: the provider's ``promote:`` section, and the
same keys in a tenant file's ``promote:`` mapping as per-tenant overrides.

One reader for both, so a key means the same in either place; defaults live
in ``PromoteSettings`` and nowhere else.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from policy_host.errors import Problem
from policy_host.read.schema import Fields
from policy_host.read.yamlfile import Node, parse_mapping

DAY = 86_400.0


@dataclass(frozen=True)
class PromoteSettings:
    """When a `testing` tenant is ready for `enforce`, and what the guard does."""

    # At least this long in testing, and at least the policy's max_age
    # (RFC 8461 section 5: senders may cache it that long).
    min_testing_days: int = 14
    # The policy name's certificate must stay valid at least this long.
    min_certificate_days: int = 21
    # TLS reports (RFC 8460) over this many days are the evidence.
    report_days: int = 14
    min_sessions: int = 100
    min_organizations: int = 2
    max_failure_rate: float = 0.01
    # A stored check result older than this does not count.
    max_check_age_hours: int = 48
    # Carry out promotion from the apply/check timers (opt-in).
    auto: bool = False
    # Step an enforce tenant down to testing when its MX drifts (opt-in).
    step_down: bool = False
    # Guard: failures to one MX on the last report day above this many, and
    # above `failure_jump` times that MX's daily average before, raise an alert.
    failure_jump_min: int = 50
    failure_jump: float = 5.0


_INTEGERS = {
    "min_testing_days": (0, 3650),
    "min_certificate_days": (0, 365),
    "report_days": (1, 400),
    "min_sessions": (0, 10**12),
    "min_organizations": (0, 1000),
    "max_check_age_hours": (1, 24 * 365),
    "failure_jump_min": (1, 10**12),
}
_FLOATS = {"max_failure_rate": (0.0, 1.0), "failure_jump": (1.0, 10**6)}
_BOOLS = ("auto", "step_down")
KEYS = (*_INTEGERS, *_FLOATS, *_BOOLS)


def read_settings(fields: Fields | None, base: PromoteSettings) -> PromoteSettings:
    """``base`` with the keys ``fields`` gives replaced, each checked."""
    if fields is None:
        return base
    changes: dict[str, object] = {}
    for key, (low, high) in _INTEGERS.items():
        value = fields.integer(key)
        if value is None:
            continue
        if not low <= value <= high:
            fields.error(fields.line(key), f"{fields.prefix}{key}: expected {low}..{high}")
            continue
        changes[key] = value
    for key, (flow, fhigh) in _FLOATS.items():
        node = fields.entries.get(key)
        if node is None:
            continue
        raw = node.value
        if isinstance(raw, bool) or not isinstance(raw, int | float) or not flow <= raw <= fhigh:
            fields.error(node.line, f"{fields.prefix}{key}: expected a number {flow}..{fhigh}")
            continue
        changes[key] = float(raw)
    for key in _BOOLS:
        node = fields.entries.get(key)
        if node is None:
            continue
        if not isinstance(node.value, bool):
            fields.error(node.line, f"{fields.prefix}{key}: expected true or false")
            continue
        changes[key] = node.value
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def tenant_settings(path: Path, data: bytes, base: PromoteSettings) -> PromoteSettings:
    """A tenant file's ``promote:`` overrides on top of the provider's
    settings (the file was validated by the tenant reader; any problem found
    here leaves the provider's value)."""
    entries, _ = parse_mapping(path, data)
    node: Node | None = (entries or {}).get("promote")
    if node is None or not isinstance(node.value, dict):
        return base
    problems: list[Problem] = []
    return read_settings(Fields(path, node.value, KEYS, problems, prefix="promote."), base)
