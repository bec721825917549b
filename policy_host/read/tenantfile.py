"""One tenant file: its domain (from the file name) and its checked content.

The domain comes from the file name (an optional ``domain:`` key must agree
with it). Every problem is collected, each with its line.
"""

from __future__ import annotations

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
from policy_host.read.yamlfile import parse_mapping
from policy_host.render import render

MAX_TENANT_BYTES = 256 * 1024
KEYS = ("mode", "mx", "max_age", "domain", "note", "tlsrpt_rua", "promote")


def domain_from_filename(path: Path, config: ProviderConfig, problems: list[Problem]) -> str | None:
    """The customer domain a tenant file is for, checked as a DNS name."""
    written = path.name[: -len(SUFFIX)]
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


def parse_tenant(path: Path, data: bytes, domain: str, problems: list[Problem]) -> Tenant | None:
    """Check one tenant file's bytes; append problems; the Tenant if valid."""
    return parse_tenant_body(path, data, domain, problems)[0]


def parse_tenant_body(
    path: Path, data: bytes, domain: str, problems: list[Problem]
) -> tuple[Tenant | None, bytes | None]:
    """``parse_tenant``, and the policy bytes of a valid tenant."""
    before = sum(p.is_error for p in problems)
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
        line = f.line("max_age")
        if not 0 <= max_age <= MAX_AGE_LIMIT:
            f.error(line, f"max_age: expected 0..{MAX_AGE_LIMIT} seconds (got {max_age})")
            max_age = None
        elif max_age < MAX_AGE_WARN_BELOW:
            f.warn(
                line,
                f"max_age {max_age} is under a day ({MAX_AGE_WARN_BELOW}); "
                "some senders ignore such short policies",
            )
        elif mode == "enforce" and max_age < MAX_AGE_ENFORCE_RECOMMENDED:
            f.warn(
                line,
                f"max_age {max_age} is under a week; {MAX_AGE_ENFORCE_RECOMMENDED} or more "
                "is recommended for enforce",
            )

    # Per-tenant promotion overrides: checked here, read by `promote`.
    read_settings(f.mapping("promote", PROMOTE_KEYS), PromoteSettings())
    note = f.text("note")
    rua: list[str] = []
    for text, line in f.text_list("tlsrpt_rua", allow_single=True) or []:
        try:
            rua.append(check_rua(text))
        except InvalidValue as exc:
            f.error(line, str(exc))

    if sum(p.is_error for p in problems) > before or mode is None or max_age is None:
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
