"""One tenant file: its domain (from the file name) and its checked content.

The domain comes from the file name (an optional ``domain:`` key must agree
with it). Every problem is collected, each with its line.
"""

from __future__ import annotations

import os
from pathlib import Path

from policy_host.errors import Problem, Severity
from policy_host.model import (
    MAX_AGE_ENFORCE_RECOMMENDED,
    MAX_AGE_LIMIT,
    MAX_AGE_WARN_BELOW,
    MAX_NAME_LENGTH,
    MAX_POLICY_BYTES,
    MODES,
    TLSRPT_PREFIX,
    InvalidValue,
    Policy,
    Tenant,
    check_rua,
    hostname,
    mx_pattern,
)
from policy_host.read.config import ProviderConfig
from policy_host.read.promotion import KEYS as PROMOTE_KEYS
from policy_host.read.promotion import PromoteSettings, read_settings
from policy_host.read.scan import SUFFIX
from policy_host.read.schema import Fields
from policy_host.read.yamlfile import parse_mapping, plain_mapping
from policy_host.render import render

MAX_TENANT_BYTES = 256 * 1024
KEYS = ("mode", "mx", "max_age", "domain", "note", "tlsrpt_rua", "promote")


def domain_from_filename(
    path: Path | str, config: ProviderConfig, problems: list[Problem]
) -> str | None:
    """The customer domain a tenant file is for, checked as a DNS name."""
    written = os.path.basename(path)[: -len(SUFFIX)]
    where = str(path)
    try:
        host = hostname(written, what="domain (from the file name)")
    except InvalidValue as exc:
        problems.append(Problem(where, 1, str(exc)))
        return None
    domain = host.ascii
    if host.written:
        problems.append(
            Problem(
                where,
                1,
                f"domain '{written}' is served as its A-label '{domain}'",
                Severity.WARNING,
            )
        )
    # RFC 1035 limits: the longest names derived from the domain must fit.
    for derived in (config.id_record_target(domain), TLSRPT_PREFIX + domain):
        if len(derived) > MAX_NAME_LENGTH:
            problems.append(
                Problem(
                    where,
                    1,
                    f"domain '{domain}' is too long: '{derived[:40]}...' would be "
                    f"{len(derived)} characters; the DNS limit is {MAX_NAME_LENGTH}",
                )
            )
            return None
    return domain


def max_age_problem(max_age: int, mode: str | None) -> tuple[Severity, str] | None:
    """What is wrong with a tenant's ``max_age``, if anything."""
    if not 0 <= max_age <= MAX_AGE_LIMIT:
        return Severity.ERROR, f"max_age: expected 0..{MAX_AGE_LIMIT} seconds (got {max_age})"
    if max_age < MAX_AGE_WARN_BELOW:
        return Severity.WARNING, (
            f"max_age {max_age} is under a day ({MAX_AGE_WARN_BELOW}); "
            "some senders ignore such short policies"
        )
    if mode == "enforce" and max_age < MAX_AGE_ENFORCE_RECOMMENDED:
        return Severity.WARNING, (
            f"max_age {max_age} is under a week; {MAX_AGE_ENFORCE_RECOMMENDED} or more "
            "is recommended for enforce"
        )
    return None


def parse_tenant(path: Path, data: bytes, domain: str, problems: list[Problem]) -> Tenant | None:
    """Check one tenant file's bytes; append problems; the Tenant if valid."""
    return parse_tenant_body(path, data, domain, problems)[0]


def parse_tenant_body(
    path: Path, data: bytes, domain: str, problems: list[Problem]
) -> tuple[Tenant | None, bytes | None]:
    """``parse_tenant``, and the policy bytes of a valid tenant."""
    quick = _quick_fields(data, domain)
    if quick is None:
        return _full_tenant(path, data, domain, problems)
    mode, mx, max_age, note, rua = quick
    policy = Policy(mode=mode, mx=mx, max_age=max_age)
    tenant = Tenant(domain=domain, policy=policy, source=str(path), note=note, tlsrpt_rua=rua)
    return tenant, render(policy)


def check_tenant(path: Path | str, data: bytes, domain: str, problems: list[Problem]) -> bool:
    """Whether the tenant file is valid (``parse_tenant`` gives a tenant),
    appending its problems, without making the tenant (``validate``)."""
    return _quick_fields(data, domain) is not None or (
        _full_tenant(path, data, domain, problems)[0] is not None
    )


# A file with more mx patterns is read by ``_full_tenant``, which also checks
# the policy's size: 200 patterns of at most 253 characters render to well
# under MAX_POLICY_BYTES.
QUICK_MAX_MX = 200
_QUICK_KEYS = frozenset(KEYS) - {"promote"}


# mode, mx patterns in A-labels, max_age, note, tlsrpt_rua URIs.
_Fields = tuple[str, tuple[str, ...], int, str | None, tuple[str, ...]]


def _quick_fields(data: bytes, domain: str) -> _Fields | None:
    """The fields of a tenant file with nothing wrong, read without line
    numbers (a valid file is read in half the time). ``None`` when anything
    in it is a problem (an error or a warning) or it is not of the plainest
    kind: ``_full_tenant`` then reads it and says what and on which line.
    The rules are those of ``_full_tenant``, asked only whether they pass."""
    entries = plain_mapping(data)
    if entries is None or not entries.keys() <= _QUICK_KEYS:
        return None
    written_domain = entries.get("domain")
    if written_domain is not None and (
        type(written_domain) is not str or not _names(written_domain, domain, "domain")
    ):
        return None
    mode = entries.get("mode")
    mx = entries.get("mx", [])
    if type(mode) is not str or mode not in MODES or type(mx) is not list:
        return None
    if len(mx) > QUICK_MAX_MX or (not mx and mode in ("enforce", "testing")):
        return None
    patterns: list[str] = []
    for text in mx:
        try:
            pattern = mx_pattern(text) if text else None
        except InvalidValue:
            return None
        if pattern is None or pattern.written or pattern.ascii in patterns:
            return None
        patterns.append(pattern.ascii)
    max_age = entries.get("max_age")
    if type(max_age) is not int or max_age_problem(max_age, mode) is not None:
        return None
    note = entries.get("note")
    if note is not None and (type(note) is not str or not note):
        return None
    rua = entries.get("tlsrpt_rua", [])
    rua_items = [rua] if type(rua) is str else rua
    if type(rua_items) is not list or not all(rua_items):
        return None
    try:
        rua_uris = tuple(check_rua(text) for text in rua_items)
    except InvalidValue:
        return None
    return mode, tuple(patterns), max_age, note, rua_uris


def _names(written: str, domain: str, what: str) -> bool:
    """Whether ``written`` is a host name whose A-label form is ``domain``."""
    try:
        return hostname(written, what=what).ascii == domain
    except InvalidValue:
        return False


def _full_tenant(
    path: Path | str, data: bytes, domain: str, problems: list[Problem]
) -> tuple[Tenant | None, bytes | None]:
    before = sum(p.is_error for p in problems) if problems else 0
    entries, parse_problems = parse_mapping(path, data)
    problems.extend(parse_problems)
    if entries is None:
        return None, None
    f = Fields(path, entries, KEYS, problems)

    written_domain = f.text("domain")
    if written_domain is not None:
        try:
            if hostname(written_domain, what="domain").ascii != domain:
                f.error(
                    f.line("domain"),
                    f"domain: '{written_domain}' does not match the file name "
                    f"(which says '{domain}'); rename the file or fix the key",
                )
        except InvalidValue as exc:
            f.error(f.line("domain"), str(exc))

    mode = f.text("mode", required=True)
    if mode is not None and mode not in MODES:
        hint = " (write it in lower case)" if mode.lower() in MODES else ""
        f.error(f.line("mode"), f"mode: expected one of {', '.join(MODES)} (got {mode!r}){hint}")
        mode = None

    patterns: list[str] = []
    items = f.text_list("mx", required=mode in ("enforce", "testing"))
    seen: dict[str, int] = {}
    for text, line in items or []:
        try:
            pattern = mx_pattern(text)
        except InvalidValue as exc:
            f.error(line, str(exc))
            continue
        if pattern.written:
            f.warn(line, f"mx '{pattern.written}' is served as its A-label form '{pattern.ascii}'")
        if pattern.ascii in seen:
            f.error(line, f"mx '{text}' is listed twice (first on line {seen[pattern.ascii]})")
            continue
        seen[pattern.ascii] = line
        patterns.append(pattern.ascii)
    if "mx" in entries and entries["mx"].value == [] and mode in ("enforce", "testing"):
        f.error(f.line("mx"), f"mx: at least one pattern is required in mode {mode}")

    max_age = f.integer("max_age", required=True)
    if max_age is not None:
        found = max_age_problem(max_age, mode)
        if found is not None:
            severity, message = found
            f.problems.append(Problem(f.path, f.line("max_age"), message, severity))
            if severity is Severity.ERROR:
                max_age = None

    # Per-tenant promotion overrides: checked here, read by `promote`.
    if "promote" in entries:
        read_settings(f.mapping("promote", PROMOTE_KEYS), PromoteSettings())
    note = f.text("note")
    rua: list[str] = []
    for text, line in f.text_list("tlsrpt_rua", allow_single=True) or []:
        try:
            rua.append(check_rua(text))
        except InvalidValue as exc:
            f.error(line, str(exc))

    if mode is None or max_age is None or (problems and sum(p.is_error for p in problems) > before):
        return None, None
    policy = Policy(mode=mode, mx=tuple(patterns), max_age=max_age)
    body = render(policy)
    if len(body) > MAX_POLICY_BYTES:
        f.error(f.line("mx"), f"policy would be {len(body)} bytes; the limit is {MAX_POLICY_BYTES}")
        return None, None
    tenant = Tenant(
        domain=domain, policy=policy, source=str(path), note=note, tlsrpt_rua=tuple(rua)
    )
    return tenant, body
