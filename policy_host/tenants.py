"""Read the tenants folder: one ``<domain>.yaml`` per customer domain.

The domain comes from the file name (an optional ``domain:`` key must agree
with it). Every problem in every file is collected; a broken file never stops
the others from loading.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from .config import ProviderConfig
from .errors import Problem, Severity
from .model import (
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
from .render import render
from .schema import Fields
from .yamlfile import parse_mapping, read_limited

log = logging.getLogger(__name__)

SUFFIX = ".yaml"
MAX_TENANT_BYTES = 256 * 1024
KEYS = ("mode", "mx", "max_age", "domain", "note", "tlsrpt_rua")


@dataclass
class LoadResult:
    """Every valid tenant by domain, every problem, and the domains whose
    file exists but is broken (their last good policy stays served)."""

    tenants: dict[str, Tenant] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    broken: dict[str, str] = field(default_factory=dict)
    files: int = 0
    # False when the folder itself could not be listed: then nothing here
    # says which tenants exist, and nothing may be removed on its account.
    complete: bool = True

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.is_error]


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
    before = sum(p.is_error for p in problems)
    entries, parse_problems = parse_mapping(path, data)
    problems.extend(parse_problems)
    if entries is None:
        return None
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

    note = f.text("note")
    rua: list[str] = []
    for text, line in f.text_list("tlsrpt_rua", allow_single=True) or []:
        try:
            rua.append(check_rua(text))
        except InvalidValue as exc:
            f.error(line, str(exc))

    if sum(p.is_error for p in problems) > before or mode is None or max_age is None:
        return None
    policy = Policy(mode=mode, mx=tuple(patterns), max_age=max_age)
    size = len(render(policy))
    if size > MAX_POLICY_BYTES:
        f.error(f.line("mx"), f"policy would be {size} bytes; the limit is {MAX_POLICY_BYTES}")
        return None
    return Tenant(domain=domain, policy=policy, source=str(path), note=note, tlsrpt_rua=tuple(rua))


def tenant_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.name.endswith(SUFFIX) and not p.name.startswith(".")
    )


def load_tenants(config: ProviderConfig) -> LoadResult:
    """Read every tenant file; never raises for a bad tenant."""
    result = LoadResult()
    folder = config.tenants_dir
    try:
        paths = tenant_files(folder)
    except OSError as exc:
        result.problems.append(
            Problem(str(folder), 0, f"cannot read tenants folder: {exc.strerror}")
        )
        result.complete = False
        return result
    owners: dict[str, str] = {}
    for path in paths:
        result.files += 1
        problems: list[Problem] = []
        domain = domain_from_filename(path, config, problems)
        tenant = None
        if domain is not None:
            data = read_limited(path, MAX_TENANT_BYTES)
            if isinstance(data, Problem):
                problems.append(data)
            else:
                tenant = parse_tenant(path, data, domain, problems)
            if domain in owners:
                problems.append(
                    Problem(
                        str(path),
                        1,
                        f"domain '{domain}' is already defined by {owners[domain]}; "
                        "keep one file per domain",
                    )
                )
                result.broken[domain] = str(path)
                result.tenants.pop(domain, None)
                tenant = None
            owners.setdefault(domain, str(path))
            if tenant is not None and domain not in result.broken:
                result.tenants[domain] = tenant
            elif tenant is None:
                result.broken[domain] = str(path)
        result.problems.extend(problems)
    result.problems.sort(key=lambda p: (p.path, p.line))
    return result
