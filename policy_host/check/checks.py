"""What a customer's DNS (and, optionally, the live HTTPS) says vs what we serve.

For every tenant, through a recursive resolver:

1. ``mta-sts.<domain>`` is a CNAME to the provider's policy host;
2. ``_mta-sts.<domain>`` is a CNAME to ``<domain>.<id_zone>``, where exactly
   one valid ``v=STSv1`` TXT record carries the id the provider last
   published (RFC 8461 section 3.1);
3. every MX host matches a policy ``mx`` pattern (RFC 8461 section 4.1);
4. ``_smtp._tls.<domain>`` holds one valid TLS-RPT record (RFC 8460);
5. no CAA record (RFC 8659) forbids the provider's certificate authority
   for ``mta-sts.<domain>``;
6. optionally, the policy fetched over HTTPS is byte for byte ours.

Each finding is a ``Reason`` with a stable machine code (``REASONS``) and a
sentence a support person can act on. The checks are pure apart from the
injected ``Lookup`` (DNS), fetcher (HTTPS) and clock, so tests run them
against real servers or fakes alike. DNS failures (timeouts, SERVFAIL,
loops, truncation) become reasons; a tenant always gets a report.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import multiprocessing
import multiprocessing.connection
import re
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import dns.rdata
import dns.rdtypes.ANY.CAA
import dns.rdtypes.ANY.MX
import dns.rdtypes.ANY.TXT
import dns.rdtypes.IN.A

from policy_host.check import dnsclient
from policy_host.check.dnsclient import DnsAnswer, Lookup
from policy_host.errors import Severity
from policy_host.fetch import FetchResult
from policy_host.model import (
    TLSRPT_PREFIX,
    InvalidValue,
    Tenant,
    check_rua,
    mx_matches,
)
from policy_host.read.config import ProviderConfig
from policy_host.render import render

log = logging.getLogger(__name__)

FAIL = Severity.ERROR
WARN = Severity.WARNING

# Certificates that expire sooner than this are worth a warning: certbot
# renews 30 days ahead, so 21 days left means renewal has been failing.
CERT_EXPIRY_WARN_DAYS = 21
# Microsoft 365's newer MX hosts: <tenant>.<region>.mx.microsoft.
MICROSOFT_MX_SUFFIX = "mx.microsoft"
# How many CNAME steps a loop diagnosis follows.
TRACE_LIMIT = 12

# Every reason code with what it means. Codes are stable: monitoring
# matches on them. The severity shown is the usual one; mx_mismatch and
# mx_missing are failures in enforce mode and warnings in testing mode.
REASONS: dict[str, str] = {
    "tenant_invalid": "the tenant file is not valid; nothing was checked",
    "policy_host_nxdomain": "mta-sts.<domain> does not exist",
    "policy_host_cname_missing": "mta-sts.<domain> exists but has no CNAME (nor address)",
    "policy_host_a_record": "mta-sts.<domain> has A records instead of a CNAME to the policy host",
    "policy_host_cname_elsewhere": "mta-sts.<domain> is a CNAME to another name",
    "policy_host_no_address": "the CNAME is right but the policy host has no address",
    "txt_cname_missing": "_mta-sts.<domain> is not a CNAME (missing, or a TXT of its own)",
    "txt_cname_elsewhere": "_mta-sts.<domain> is a CNAME to another name",
    "txt_missing": "no v=STSv1 TXT record at the end of the CNAME",
    "txt_multiple": "more than one v=STSv1 TXT record (senders then see no policy)",
    "txt_invalid": "the v=STSv1 TXT record breaks the RFC 8461 syntax",
    "txt_bad_id": "the id is not 1-32 letters and digits",
    "txt_stale_id": "the id differs from the one the provider last published",
    "txt_unpublished": "no id was ever published for this tenant (warning; not compared)",
    "domain_nxdomain": "the domain itself does not exist",
    "mx_missing": "the domain has no MX records",
    "mx_null": "the domain has a null MX (RFC 7505: it accepts no mail; warning)",
    "mx_mismatch": "an MX host matches no policy mx pattern (fail in enforce, warn in testing)",
    "mx_mismatch_microsoft": "a Microsoft 365 *.mx.microsoft MX host matches no pattern",
    "tlsrpt_missing": "no v=TLSRPTv1 record at _smtp._tls.<domain> (warning)",
    "tlsrpt_multiple": "more than one v=TLSRPTv1 record (warning)",
    "tlsrpt_invalid": "the TLS-RPT record or one of its rua URIs is not valid (warning)",
    "tlsrpt_rua_mismatch": "the rua URIs differ from the tenant's tlsrpt_rua (warning)",
    "caa_forbids_ca": "CAA records forbid the configured certificate authority (warning)",
    "dns_timeout": "the resolver did not answer in time",
    "dns_servfail": "the resolver answered SERVFAIL",
    "dns_refused": "the resolver refused the query",
    "dns_truncated": "the answer was truncated and could not be fetched whole",
    "dns_cname_loop": "a CNAME chain loops",
    "dns_error": "any other DNS failure",
    "https_unreachable": "no connection to the policy host",
    "https_timeout": "the HTTPS fetch timed out",
    "https_tls_error": "the TLS handshake failed",
    "https_certificate_invalid": "the certificate is not valid for mta-sts.<domain>",
    "https_bad_response": "the server's HTTP response could not be read",
    "https_redirect": "the server redirects (senders never follow redirects)",
    "https_status": "the server answers a status other than 200",
    "https_content_type": "the media type is not text/plain",
    "https_too_large": "the body is over 64 KiB",
    "https_policy_mismatch": "the body served differs from the policy rendered here",
    "https_cert_expiring": f"the certificate expires within {CERT_EXPIRY_WARN_DAYS} days (warning)",
}

_DNS_CODES = {
    dnsclient.TIMEOUT: "dns_timeout",
    dnsclient.SERVFAIL: "dns_servfail",
    dnsclient.REFUSED: "dns_refused",
    dnsclient.TRUNCATED: "dns_truncated",
    dnsclient.LOOP: "dns_cname_loop",
    dnsclient.ERROR: "dns_error",
}


@dataclass(frozen=True)
class Reason:
    """One finding: a stable ``code``, its severity, a sentence, and the DNS
    name (or URL) it is about."""

    code: str
    severity: Severity
    message: str
    subject: str = ""

    def __post_init__(self) -> None:
        if self.code not in REASONS:  # a programming error, caught by the tests
            raise ValueError(f"unknown reason code {self.code!r}")

    @property
    def label(self) -> str:
        return "fail" if self.severity is FAIL else "warn"

    def as_dict(self) -> dict[str, str]:
        return {
            "code": self.code,
            "severity": self.label,
            "message": self.message,
            "subject": self.subject,
        }


@dataclass
class TenantReport:
    """Everything found for one tenant, and what DNS/HTTPS showed."""

    domain: str
    mode: str | None
    reasons: list[Reason] = field(default_factory=list)
    observed: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        """``fail`` if any reason fails, else ``warn`` if any, else ``ok``."""
        if any(r.severity is FAIL for r in self.reasons):
            return "fail"
        return "warn" if self.reasons else "ok"

    @property
    def codes(self) -> list[str]:
        return [r.code for r in self.reasons]

    def add(self, code: str, severity: Severity, message: str, subject: str = "") -> None:
        self.reasons.append(Reason(code, severity, message, subject))

    def as_dict(self) -> dict[str, Any]:
        return {
            "domain": self.domain,
            "mode": self.mode,
            "status": self.status,
            "reasons": [r.as_dict() for r in self.reasons],
            "observed": self.observed,
        }


class Fetcher(Protocol):
    """Fetches a policy as a sender would (``httpsfetch.HttpsFetcher``).

    ``connect`` set: every fetch goes there, whatever DNS says.
    """

    connect: tuple[str, int] | None

    async def fetch(self, host: str, addresses: Sequence[str]) -> FetchResult: ...


Clock = Callable[[], dt.datetime]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# -- record syntax ----------------------------------------------------------

# RFC 8461 section 3.1 ABNF: sts-sep = *WSP %x3B *WSP; the id is 1*32 of
# ALPHA / DIGIT; extension names and values as below.
_WSP_SEMI = re.compile(r"[ \t]*;[ \t]*")
_ID = re.compile(r"[A-Za-z0-9]{1,32}\Z")
_EXT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}\Z")
_EXT_VALUE = re.compile(r"[\x21-\x3a\x3c\x3e-\x7e]+\Z")
STS_VERSION = "v=STSv1"
TLSRPT_VERSION = "v=TLSRPTv1"


def has_version(text: str, version: str) -> bool:
    """Does a TXT value begin with ``version`` and its separator?

    RFC 8461 section 3.1 (and RFC 8460 section 3 alike): records that do
    not begin with "v=STSv1;" are discarded, so ``v=STSv10;...`` or a bare
    ``v=STSv1`` is not a candidate (WSP before the ";" is allowed by the
    ABNF).
    """
    return text.startswith(version) and _WSP_SEMI.match(text, len(version)) is not None


def txt_value(rdata: dns.rdata.Rdata) -> str:
    """A TXT record's strings joined with nothing between (RFC 8461 section
    3.1), as text; bytes that are not ASCII show as escapes."""
    if not isinstance(rdata, dns.rdtypes.ANY.TXT.TXT):
        return ""
    strings: Iterable[bytes] = rdata.strings
    return b"".join(strings).decode("ascii", errors="backslashreplace")


def _fields(text: str, version: str) -> list[str] | str:
    """The ``name=value`` fields after ``version``, or why they are malformed."""
    rest = text[len(version) :]
    if not _WSP_SEMI.match(rest):
        return f"'{version}' must be followed by ';'"
    parts = _WSP_SEMI.split(rest)[1:]
    if parts and parts[-1].strip(" \t") == "":
        parts = parts[:-1]  # one final separator is allowed
    if not parts:
        return f"nothing follows '{version};'"
    for part in parts:
        if "=" not in part:
            return f"field '{part}' is not name=value"
    return parts


def parse_sts_record(text: str) -> tuple[str | None, str | None]:
    """Check an RFC 8461 section 3.1 record; returns ``(id, problem)``.

    ``problem`` is ``None`` when the record is valid. When only the id's
    form is wrong, the id is returned too, with the problem ``"bad id"``.
    """
    fields = _fields(text, STS_VERSION)
    if isinstance(fields, str):
        return None, fields
    ids = []
    for part in fields:
        name, _, value = part.partition("=")
        if name == "id":
            ids.append(value)
        elif not _EXT_NAME.match(name) or not _EXT_VALUE.match(value):
            return None, f"field '{part}' is not a valid extension (name=value without spaces)"
    if not ids:
        return None, "it has no id field"
    if len(ids) > 1:
        return None, "it has more than one id field"
    if not _ID.match(ids[0]):
        return ids[0], "bad id"
    return ids[0], None


def parse_tlsrpt_record(text: str) -> tuple[list[str], str | None]:
    """Check an RFC 8460 section 3 record; returns ``(rua URIs, problem)``."""
    fields = _fields(text, TLSRPT_VERSION)
    if isinstance(fields, str):
        return [], fields
    rua: list[str] | None = None
    for part in fields:
        name, _, value = part.partition("=")
        if name == "rua":
            if rua is not None:
                return [], "it has more than one rua field"
            rua = [uri.strip(" \t") for uri in value.split(",")]
        elif not _EXT_NAME.match(name) or not _EXT_VALUE.match(value):
            return [], f"field '{part}' is not a valid extension"
    if not rua:
        return [], "it has no rua field"
    for uri in rua:
        try:
            check_rua(uri)
        except InvalidValue:
            return rua, f"rua URI '{uri}' is not a mailto: or https: URI"
    return rua, None


def microsoft_pattern(host: str) -> str | None:
    """The pattern covering a Microsoft 365 ``*.mx.microsoft`` host.

    Those hosts sit two labels below ``mx.microsoft`` (``example-com.a-v1
    .mx.microsoft``), so ``*.mx.microsoft`` misses them; the wildcard must
    replace only the first label.
    """
    host = host.lower().rstrip(".")
    labels = host.split(".")
    if host.endswith("." + MICROSOFT_MX_SUFFIX) and len(labels) >= 4:
        return "*." + ".".join(labels[1:])
    return None


# -- the checks ---------------------------------------------------------------


@dataclass(frozen=True)
class CheckContext:
    """What every tenant's check needs besides the tenant."""

    config: ProviderConfig
    lookup: Lookup
    expected_ids: Mapping[str, str]
    fetcher: Fetcher | None = None
    clock: Clock = utc_now


def _dns_reason(report: TenantReport, answer: DnsAnswer, severity: Severity) -> None:
    report.add(
        _DNS_CODES[answer.status],
        severity,
        f"DNS lookup failed: {answer.describe()}",
        subject=answer.name,
    )


async def _diagnose(ctx: CheckContext, answer: DnsAnswer) -> DnsAnswer:
    """For a SERVFAIL, walk the CNAME chain one step at a time: a loop is
    the likely cause (resolvers answer SERVFAIL for one) and is worth its
    own reason."""
    if answer.status != dnsclient.SERVFAIL:
        return answer
    name, chain, seen = answer.name, [], {answer.name}
    for _ in range(TRACE_LIMIT):
        step = await ctx.lookup.lookup(name, "CNAME")
        if step.status != dnsclient.OK or not step.records:
            return answer
        target = dnsclient.cname_target(step.records[0])
        if target is None:
            return answer
        name = dnsclient.text_of(target)
        chain.append(name)
        if name in seen:
            shown = " -> ".join([answer.name, *chain])
            return DnsAnswer(
                answer.name,
                answer.rdtype,
                dnsclient.LOOP,
                tuple(chain),
                detail=f"CNAME loop: {shown}",
            )
        seen.add(name)
    return answer


async def _lookup(ctx: CheckContext, name: str, rdtype: str) -> DnsAnswer:
    return await _diagnose(ctx, await ctx.lookup.lookup(name, rdtype))


def _addresses(answer: DnsAnswer) -> list[str]:
    return sorted(str(r.address) for r in answer.records if isinstance(r, dns.rdtypes.IN.A.A))


async def check_policy_host(ctx: CheckContext, tenant: Tenant, report: TenantReport) -> list[str]:
    """Step 1; returns the policy host's addresses (for the HTTPS fetch)."""
    name = tenant.policy_host
    target = ctx.config.policy_host
    answer = await _lookup(ctx, name, "A")
    report.observed["policy_host"] = _observed(answer)
    if answer.failed:
        _dns_reason(report, answer, FAIL)
        return []
    fix = f"the customer should set '{name}. CNAME {target}.'"
    if not answer.chain:
        if answer.status == dnsclient.NXDOMAIN:
            report.add("policy_host_nxdomain", FAIL, f"{name} does not exist; {fix}", subject=name)
        elif answer.status == dnsclient.NODATA:
            report.add(
                "policy_host_cname_missing",
                FAIL,
                f"{name} has no CNAME and no address; {fix}",
                subject=name,
            )
        else:
            addresses = _addresses(answer)
            ours = _addresses(await ctx.lookup.lookup(target, "A"))
            if ours and addresses == ours:
                report.add(
                    "policy_host_a_record",
                    WARN,
                    f"{name} has A records ({', '.join(addresses)}) equal to {target}'s today, "
                    f"but will break when the provider's addresses change; {fix}",
                    subject=name,
                )
            else:
                report.add(
                    "policy_host_a_record",
                    FAIL,
                    f"{name} has A records ({', '.join(addresses)}), not a CNAME to {target}; "
                    f"senders fetch the policy from the wrong server; {fix}",
                    subject=name,
                )
            return addresses
        return []
    if target not in answer.chain:
        report.add(
            "policy_host_cname_elsewhere",
            FAIL,
            f"{name} is a CNAME to {answer.chain[0]}, not to {target}; {fix}",
            subject=name,
        )
        return []
    if not answer.records:
        report.add(
            "policy_host_no_address",
            FAIL,
            f"{name} points to {target} correctly, but {answer.final_name} has no address "
            "(a provider problem: check the provider's own zone)",
            subject=name,
        )
        return []
    return _addresses(answer)


async def check_txt(ctx: CheckContext, tenant: Tenant, report: TenantReport) -> None:
    """Step 2: the CNAME to our id record and the id behind it."""
    name = tenant.id_record_name
    target = ctx.config.id_record_target(tenant.domain)
    answer = await _lookup(ctx, name, "TXT")
    records = [txt_value(r) for r in answer.records]
    report.observed["txt"] = _observed(answer, records)
    if answer.failed:
        _dns_reason(report, answer, FAIL)
        return
    fix = f"the customer should set '{name}. CNAME {target}.'"
    if not answer.chain:
        if records:
            what = f"has its own TXT record ({_shown(records)}) instead of a CNAME"
        elif answer.status == dnsclient.NXDOMAIN:
            what = "does not exist"
        else:
            what = "has no CNAME"
        report.add(
            "txt_cname_missing",
            FAIL,
            f"{name} {what}; policy changes cannot be announced to senders; {fix}",
            subject=name,
        )
        return
    if target not in answer.chain:
        report.add(
            "txt_cname_elsewhere",
            FAIL,
            f"{name} is a CNAME to {answer.chain[0]}, not to {target}; {fix}",
            subject=name,
        )
        return
    candidates = [text for text in records if has_version(text, STS_VERSION)]
    if not candidates:
        seen = f" (found: {_shown(records)})" if records else ""
        report.add(
            "txt_missing",
            FAIL,
            f"{answer.final_name} has no v=STSv1 TXT record{seen}; senders see no policy "
            "(a provider problem: run 'policy-host apply')",
            subject=answer.final_name,
        )
        return
    if len(candidates) > 1:
        report.add(
            "txt_multiple",
            FAIL,
            f"{answer.final_name} has {len(candidates)} v=STSv1 TXT records "
            f"({_shown(candidates)}); senders treat that as no policy (RFC 8461 section 3.1)",
            subject=answer.final_name,
        )
        return
    policy_id, problem = parse_sts_record(candidates[0])
    report.observed["txt"]["id"] = policy_id
    if problem == "bad id":
        report.add(
            "txt_bad_id",
            FAIL,
            f"{answer.final_name}: id '{policy_id}' must be 1 to 32 letters and digits "
            "(RFC 8461 section 3.1); senders ignore the record",
            subject=answer.final_name,
        )
        return
    if problem is not None or policy_id is None:
        report.add(
            "txt_invalid",
            FAIL,
            f"{answer.final_name}: TXT record {_shown(candidates)} is not valid: {problem}; "
            "senders ignore it",
            subject=answer.final_name,
        )
        return
    expected = ctx.expected_ids.get(tenant.domain)
    report.observed["txt"]["expected_id"] = expected
    if expected is None:
        report.add(
            "txt_unpublished",
            WARN,
            f"no id is recorded as published for {tenant.domain} (run 'policy-host apply'); "
            f"DNS says id={policy_id}, not compared",
            subject=name,
        )
    elif policy_id != expected:
        report.add(
            "txt_stale_id",
            FAIL,
            f"{answer.final_name} says id={policy_id} but the provider last published "
            f"id={expected}; senders will not fetch the current policy",
            subject=answer.final_name,
        )


async def check_mx(ctx: CheckContext, tenant: Tenant, report: TenantReport) -> None:
    """Step 3: every MX host must match a policy pattern (RFC 8461 section 4.1)."""
    policy = tenant.policy
    if policy.mode == "none":
        return
    answer = await _lookup(ctx, tenant.domain, "MX")
    hosts = sorted(
        {
            dnsclient.text_of(r.exchange) or "."
            for r in answer.records
            if isinstance(r, dns.rdtypes.ANY.MX.MX)
        }
    )
    report.observed["mx"] = {**_observed(answer), "hosts": hosts, "patterns": list(policy.mx)}
    severity = FAIL if policy.mode == "enforce" else WARN
    consequence = (
        "mail from MTA-STS senders to it will bounce"
        if policy.mode == "enforce"
        else "senders report it as a failure (mode testing)"
    )
    if answer.failed:
        _dns_reason(report, answer, severity)
        return
    if answer.status == dnsclient.NXDOMAIN and not answer.chain:
        report.add(
            "domain_nxdomain",
            FAIL,
            f"the domain {tenant.domain} does not exist in DNS",
            subject=tenant.domain,
        )
        return
    if not hosts:
        report.add(
            "mx_missing",
            severity,
            f"{tenant.domain} has no MX records; no MX host can match the policy",
            subject=tenant.domain,
        )
        return
    if hosts == ["."]:
        report.add(
            "mx_null",
            WARN,
            f"{tenant.domain} has a null MX (RFC 7505): it accepts no mail, so its "
            "MTA-STS policy has nothing to protect",
            subject=tenant.domain,
        )
        return
    patterns = ", ".join(policy.mx)
    for host in hosts:
        if host == "." or any(mx_matches(pattern, host) for pattern in policy.mx):
            continue
        suggestion = microsoft_pattern(host)
        if suggestion is not None:
            report.add(
                "mx_mismatch_microsoft",
                severity,
                f"MX host {host} (Microsoft 365) matches no mx pattern ({patterns}); "
                f"{consequence}; add 'mx: \"{suggestion}\"' ('*.{MICROSOFT_MX_SUFFIX}' "
                "does not cover it: a wildcard stands for one label)",
                subject=host,
            )
        else:
            report.add(
                "mx_mismatch",
                severity,
                f"MX host {host} matches no mx pattern ({patterns}); {consequence}; "
                "add it to the tenant's mx list",
                subject=host,
            )


async def check_tlsrpt(ctx: CheckContext, tenant: Tenant, report: TenantReport) -> None:
    """Step 4: one valid TLS-RPT record (RFC 8460 section 3); warnings only."""
    name = TLSRPT_PREFIX + tenant.domain
    answer = await _lookup(ctx, name, "TXT")
    records = [txt_value(r) for r in answer.records]
    report.observed["tlsrpt"] = _observed(answer, records)
    if answer.failed:
        _dns_reason(report, answer, WARN)
        return
    candidates = [text for text in records if has_version(text, TLSRPT_VERSION)]
    expected = tenant.tlsrpt_rua
    hint = f" '{name}. TXT \"v=TLSRPTv1; rua={','.join(expected)}\"'" if expected else ""
    if not candidates:
        report.add(
            "tlsrpt_missing",
            WARN,
            f"{name} has no v=TLSRPTv1 record; nobody receives TLS failure reports"
            + (f"; the customer could add{hint}" if hint else ""),
            subject=name,
        )
        return
    if len(candidates) > 1:
        report.add(
            "tlsrpt_multiple",
            WARN,
            f"{name} has {len(candidates)} v=TLSRPTv1 records; senders then send no reports",
            subject=name,
        )
        return
    rua, problem = parse_tlsrpt_record(candidates[0])
    report.observed["tlsrpt"]["rua"] = rua
    if problem is not None:
        report.add(
            "tlsrpt_invalid",
            WARN,
            f"{name}: {_shown(candidates)} is not valid: {problem}",
            subject=name,
        )
        return
    if expected and sorted(rua) != sorted(expected):
        report.add(
            "tlsrpt_rua_mismatch",
            WARN,
            f"{name} sends reports to {', '.join(rua)}; the tenant file expects "
            f"{', '.join(expected)}",
            subject=name,
        )


def caa_names(name: str) -> list[str]:
    """``name`` and its parents, up to but not including the root (RFC 8659
    section 3: the tree is climbed from the name itself)."""
    labels = name.split(".")
    return [".".join(labels[i:]) for i in range(len(labels))]


async def check_caa(ctx: CheckContext, tenant: Tenant, report: TenantReport) -> None:
    """Step 5: RFC 8659 section 3. The relevant CAA set is the first non-empty
    answer climbing from ``mta-sts.<domain>``; the lookup at a name follows
    its CNAME (so CAA at the provider's policy host counts), the climb goes
    through the customer's own parents."""
    issuers = ctx.config.check.caa_issuers
    for name in caa_names(tenant.policy_host):
        answer = await _lookup(ctx, name, "CAA")
        if answer.failed:
            report.observed["caa"] = _observed(answer)
            _dns_reason(report, answer, WARN)
            return
        if not answer.records:
            continue
        records = [r.to_text() for r in answer.records]
        report.observed["caa"] = {**_observed(answer), "records": records}
        problem = caa_problem(answer.records, issuers)
        if problem is not None:
            where = f"{name} (via {answer.final_name})" if answer.chain else name
            report.add(
                "caa_forbids_ca",
                WARN,
                f"CAA at {where} ({'; '.join(records)}) {problem}; certificates for "
                f"{tenant.policy_host} will fail",
                subject=name,
            )
        return
    report.observed["caa"] = {"records": []}


_KNOWN_CAA_TAGS = {"issue", "issuewild", "iodef", "contactemail", "contactphone", "issuemail"}


def caa_problem(records: Sequence[dns.rdata.Rdata], issuers: Sequence[str]) -> str | None:
    """Why ``records`` forbid all of ``issuers`` for a non-wildcard name, or None."""
    issue_values: list[str] = []
    for record in records:
        if not isinstance(record, dns.rdtypes.ANY.CAA.CAA):
            continue
        tag = bytes(record.tag).decode("ascii", "replace").lower()
        if tag not in _KNOWN_CAA_TAGS and record.flags & 128:
            # RFC 8659 section 4.1: a CA must refuse on an unknown critical tag.
            return f"has a critical property '{tag}' that CAs do not understand"
        if tag == "issue":
            value = bytes(record.value).decode("ascii", "replace")
            issue_values.append(value.split(";", 1)[0].strip().lower())
    if not issue_values:
        return None
    allowed = {value for value in issue_values if value}
    if any(issuer in allowed for issuer in issuers):
        return None
    who = ", ".join(sorted(allowed)) if allowed else "no CA at all"
    return f"allows {who}, not {' or '.join(issuers)}"


async def check_https(
    ctx: CheckContext, tenant: Tenant, report: TenantReport, addresses: Sequence[str]
) -> None:
    """Step 6: the policy as a sender fetches it."""
    assert ctx.fetcher is not None
    result = await ctx.fetcher.fetch(tenant.policy_host, addresses)
    report.observed["https"] = {
        "address": f"{result.address}:{result.port}" if result.address else None,
        "status": result.status,
        "content_type": result.content_type,
        "certificate_not_after": result.not_after.isoformat() if result.not_after else None,
    }
    url = f"https://{tenant.policy_host}/.well-known/mta-sts.txt"
    if result.not_after is not None:
        left = result.not_after - ctx.clock()
        if left < dt.timedelta(days=CERT_EXPIRY_WARN_DAYS):
            report.add(
                "https_cert_expiring",
                WARN,
                f"the certificate for {tenant.policy_host} expires on "
                f"{result.not_after:%Y-%m-%d} ({max(left.days, 0)} days left); check certbot",
                subject=url,
            )
    if result.error_code is not None:
        report.add(result.error_code, FAIL, f"{url}: {result.error}", subject=url)
        return
    status = result.status
    if status is not None and 300 <= status < 400:
        report.add(
            "https_redirect",
            FAIL,
            f"{url} answers {status} redirecting to {result.location or '?'}; senders never "
            "follow redirects",
            subject=url,
        )
        return
    if status != 200:
        report.add("https_status", FAIL, f"{url} answers {status}, not 200", subject=url)
        return
    media = (result.content_type or "").split(";", 1)[0].strip().lower()
    if media != "text/plain":
        report.add(
            "https_content_type",
            FAIL,
            f"{url} is served as '{result.content_type or 'nothing'}', not text/plain",
            subject=url,
        )
    if result.too_large:
        report.add("https_too_large", FAIL, f"{url} is larger than 64 KiB", subject=url)
        return
    expected = render(tenant.policy)
    if result.body != expected:
        report.add(
            "https_policy_mismatch",
            FAIL,
            f"{url} serves a different policy: {body_difference(result.body, expected)}",
            subject=url,
        )


def body_difference(served: bytes, expected: bytes) -> str:
    """The first line that differs between two policy bodies, for a person
    (line ends shown, since CRLF against LF is a common difference)."""
    got = served.splitlines(keepends=True)
    want = expected.splitlines(keepends=True)
    for number in range(1, max(len(got), len(want)) + 1):
        a = got[number - 1] if number <= len(got) else None
        b = want[number - 1] if number <= len(want) else None
        if a != b:
            shown_a = _bytes(a) if a is not None else "missing"
            shown_b = _bytes(b) if b is not None else "the end of the body"
            return f"line {number} is {shown_a}, expected {shown_b}"
    return "the bytes differ"


def _bytes(line: bytes) -> str:
    return repr(line.decode("ascii", "backslashreplace"))


def _shown(records: Sequence[str]) -> str:
    return ", ".join(f'"{r}"' for r in records)


def _observed(answer: DnsAnswer, records: Sequence[str] | None = None) -> dict[str, Any]:
    shown = list(records) if records is not None else [r.to_text() for r in answer.records]
    seen: dict[str, Any] = {
        "name": answer.name,
        "type": answer.rdtype,
        "status": answer.status,
        "chain": list(answer.chain),
        "records": shown,
    }
    if answer.detail:
        seen["detail"] = answer.detail
    return seen


async def check_tenant(ctx: CheckContext, tenant: Tenant) -> TenantReport:
    """Every check for one tenant; the lookups run concurrently.

    Each check writes to a part of its own, joined in a fixed order, so the
    report does not depend on which answer came first.
    """
    parts = [TenantReport(tenant.domain, tenant.policy.mode) for _ in range(5)]

    async def host_and_https(report: TenantReport) -> None:
        addresses = await check_policy_host(ctx, tenant, report)
        if ctx.fetcher is not None and (addresses or ctx.fetcher.connect):
            await check_https(ctx, tenant, report, addresses)

    host, txt, mx, tlsrpt, caa = parts
    await asyncio.gather(
        host_and_https(host),
        check_txt(ctx, tenant, txt),
        check_mx(ctx, tenant, mx),
        check_tlsrpt(ctx, tenant, tlsrpt),
        check_caa(ctx, tenant, caa),
    )
    report = TenantReport(tenant.domain, tenant.policy.mode)
    for part in parts:
        report.reasons += part.reasons
        report.observed.update(part.observed)
    report.reasons = _tidy(report.reasons)
    return report


def _tidy(reasons: list[Reason]) -> list[Reason]:
    """Catalogue order; one DNS failure met by several steps (a CNAME loop
    at mta-sts.<domain> breaks both its A and CAA lookups) said once, at its
    highest severity."""
    order = {code: n for n, code in enumerate(REASONS)}
    ranked = sorted(reasons, key=lambda r: (order[r.code], r.severity is not FAIL))
    kept: list[Reason] = []
    seen: set[tuple[str, str]] = set()
    for reason in ranked:
        key = (reason.code, reason.subject)
        if reason.code.startswith("dns_") and key in seen:
            continue
        seen.add(key)
        kept.append(reason)
    return kept


def invalid_tenant_report(domain: str, source: str) -> TenantReport:
    report = TenantReport(domain, None)
    report.add(
        "tenant_invalid",
        FAIL,
        f"{source} is not valid, so its DNS was not checked; run 'policy-host validate'",
    )
    return report


Progress = Callable[[int, int], None]


async def check_all(
    ctx: CheckContext,
    tenants: Sequence[Tenant],
    *,
    workers: int,
    progress: Progress | None = None,
) -> list[TenantReport]:
    """Check every tenant, ``workers`` tenants at a time; reports in input order.

    A tenant's check never raises for DNS or HTTPS trouble; should it raise
    anyway (a bug), the exception propagates after the other workers stop.
    """
    reports: list[TenantReport | None] = [None] * len(tenants)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(len(tenants)):
        queue.put_nowait(index)
    done = 0

    async def worker() -> None:
        nonlocal done
        while True:
            try:
                index = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            reports[index] = await check_tenant(ctx, tenants[index])
            done += 1
            if progress is not None:
                progress(done, len(tenants))

    count = max(1, min(workers, len(tenants)))
    tasks = [asyncio.create_task(worker()) for _ in range(count)]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
    return [r for r in reports if r is not None]


def run_checks(
    ctx: CheckContext,
    tenants: Sequence[Tenant],
    *,
    workers: int,
    progress: Progress | None = None,
    processes: int = 1,
) -> list[TenantReport]:
    """``check_all`` in a fresh event loop (for the CLI).

    With ``processes`` above 1 and many tenants, the tenants are split over
    that many forked processes, each with its own event loop and
    ``workers / processes`` tenants at a time: one event loop spends a core
    on building and parsing DNS messages long before the resolver is busy.
    Only call it so where no other thread runs (the CLI).
    """
    if processes <= 1 or len(tenants) < PARALLEL_MIN_TENANTS or threading.active_count() > 1:
        return asyncio.run(check_all(ctx, tenants, workers=workers, progress=progress))
    return _run_forked(ctx, tenants, workers, progress, processes)


# Fewer tenants than this are checked in one process: forking costs more.
PARALLEL_MIN_TENANTS = 200
# How often a child process says how far it got.
PROGRESS_EVERY = 0.2


def _check_share(
    ctx: CheckContext,
    tenants: Sequence[Tenant],
    workers: int,
    parts: int,
    conn: multiprocessing.connection.Connection,
) -> None:
    """A child's part: check ``tenants``, send progress, then the reports."""
    last = 0.0

    def tell(done: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= PROGRESS_EVERY:
            last = now
            conn.send(("progress", done))

    client = ctx.lookup if isinstance(ctx.lookup, dnsclient.DnsClient) else None
    before = client.queries if client is not None else 0
    if client is not None:
        client.take_share(parts)
    try:
        reports = asyncio.run(check_all(ctx, tenants, workers=workers, progress=tell))
        queries = client.queries - before if client is not None else 0
        conn.send(("done", reports, queries))
    except BaseException:  # the parent raises it: nothing may be lost silently
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def _run_forked(
    ctx: CheckContext,
    tenants: Sequence[Tenant],
    workers: int,
    progress: Progress | None,
    processes: int,
) -> list[TenantReport]:
    context = multiprocessing.get_context("fork")
    shares = [list(range(n, len(tenants), processes)) for n in range(processes)]
    share_workers = max(1, -(-workers // processes))
    children: dict[multiprocessing.connection.Connection, int] = {}
    running = []
    done = [0] * processes
    results: list[TenantReport | None] = [None] * len(tenants)
    try:
        for n, indexes in enumerate(shares):
            parent_end, child_end = context.Pipe(duplex=False)
            share = [tenants[i] for i in indexes]
            child = context.Process(
                target=_check_share,
                args=(ctx, share, share_workers, processes, child_end),
                name=f"policy-host-check-{n}",
                daemon=True,
            )
            child.start()
            child_end.close()
            children[parent_end] = n
            running.append(child)
        while children:
            for conn in multiprocessing.connection.wait(list(children)):
                assert isinstance(conn, multiprocessing.connection.Connection)
                n = children[conn]
                try:
                    message = conn.recv()
                except EOFError:
                    raise RuntimeError(f"check process {n} ended without its reports") from None
                if message[0] == "progress":
                    done[n] = message[1]
                elif message[0] == "done":
                    for index, report in zip(shares[n], message[1], strict=True):
                        results[index] = report
                    if isinstance(ctx.lookup, dnsclient.DnsClient):
                        ctx.lookup.queries += message[2]
                    done[n] = len(shares[n])
                    del children[conn]
                    conn.close()
                else:
                    raise RuntimeError(f"check process {n} failed:\n{message[1]}")
                if progress is not None:
                    progress(sum(done), len(tenants))
    finally:
        for child in running:
            if child.is_alive():
                child.terminate()
            child.join()
    return [r for r in results if r is not None]
