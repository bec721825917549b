"""What `check` finds: the reason catalogue, one finding, one tenant's report.

Every finding is a ``Reason`` with a stable machine code (``REASONS``) and a
sentence a support person can act on; monitoring matches on the codes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from policy_host.check import dnsclient
from policy_host.check.dnsclient import DnsAnswer
from policy_host.errors import Severity

FAIL = Severity.ERROR
WARN = Severity.WARNING

# Certificates that expire sooner than this are worth a warning: certbot
# renews 30 days ahead, so 21 days left means renewal has been failing.
CERT_EXPIRY_WARN_DAYS = 21

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
    "tlsrpt_not_ours": "the customer's own record lists none of our tlsrpt.rua (warning)",
    "tlsrpt_hosted_stale": "our hosted record differs from tlsrpt.rua (warning; run apply)",
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

    def dns_failure(self, answer: DnsAnswer, severity: Severity) -> None:
        """A lookup that got no answer (timeout, SERVFAIL, loop, ...)."""
        self.add(
            _DNS_CODES[answer.status],
            severity,
            f"DNS lookup failed: {answer.describe()}",
            subject=answer.name,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "domain": self.domain,
            "mode": self.mode,
            "status": self.status,
            "reasons": [r.as_dict() for r in self.reasons],
            "observed": self.observed,
        }


def tidy(reasons: list[Reason]) -> list[Reason]:
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


def shown(records: Sequence[str]) -> str:
    """Records quoted for a message."""
    return ", ".join(f'"{r}"' for r in records)


def observed(answer: DnsAnswer, records: Sequence[str] | None = None) -> dict[str, Any]:
    """What DNS said, for ``--json`` and ``--verbose``."""
    texts = list(records) if records is not None else [r.to_text() for r in answer.records]
    seen: dict[str, Any] = {
        "name": answer.name,
        "type": answer.rdtype,
        "status": answer.status,
        "chain": list(answer.chain),
        "records": texts,
    }
    if answer.detail:
        seen["detail"] = answer.detail
    return seen
