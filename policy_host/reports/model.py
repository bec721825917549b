"""A parsed TLS report (RFC 8460 section 4) as frozen objects.

Every field of section 4 has a place here, under its own name: other
parsers lost ``mx-host`` and ``additional-information`` for years by reading
keys that do not exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

# RFC 8460 section 4.3, and the IANA "STARTTLS Validation Result Types"
# registry, which can grow: unknown values are kept verbatim and grouped as
# OTHER in summaries.
RESULT_TYPES = (
    "starttls-not-supported",
    "certificate-host-mismatch",
    "certificate-expired",
    "certificate-not-trusted",
    "validation-failure",
    "tlsa-invalid",
    "dnssec-invalid",
    "dane-required",
    "sts-policy-fetch-error",
    "sts-policy-invalid",
    "sts-webpki-invalid",
)
# The failures a sender reports about the policy host itself: it could not
# fetch our policy, could not parse it, or did not trust our certificate.
OUR_SIDE = frozenset({"sts-policy-fetch-error", "sts-policy-invalid", "sts-webpki-invalid"})
OTHER = "other"

POLICY_TYPES = ("sts", "tlsa", "no-policy-found")

# Where a report came from; ``verified`` below says whether it is trusted.
HTTPS = "https"
MAIL = "mail"
FILE = "file"


def result_group(result_type: str) -> str:
    """The result type as summaries count it (unknown ones as OTHER)."""
    return result_type if result_type in RESULT_TYPES else OTHER


def side(result_type: str) -> str:
    """``ours`` for failures about the policy host, else ``customer``."""
    return "ours" if result_type in OUR_SIDE else "customer"


@dataclass(frozen=True)
class FailureDetail:
    """One ``failure-details`` entry (RFC 8460 section 4.4)."""

    result_type: str
    count: int
    sending_mta_ip: str | None = None
    receiving_mx_hostname: str | None = None
    receiving_mx_helo: str | None = None
    receiving_ip: str | None = None
    additional_information: str | None = None
    failure_reason_code: str | None = None


@dataclass(frozen=True)
class PolicyResult:
    """One ``policies`` entry: a policy the sender applied and how it went."""

    policy_type: str
    # A-labels, lower case, no final dot; "" when neither the report nor its
    # envelope names it.
    domain: str
    policy_string: tuple[str, ...]
    mx_host: tuple[str, ...]
    success: int
    failure: int
    details: tuple[FailureDetail, ...]


@dataclass(frozen=True)
class Report:
    organization: str
    report_id: str
    contact: str | None
    start: float  # POSIX seconds, UTC
    end: float
    policies: tuple[PolicyResult, ...]
    # Names of the sender quirks tolerated while parsing (see parse.QUIRKS).
    quirks: tuple[str, ...] = ()


class Envelope(NamedTuple):
    """How a report reached us, and what came with it besides the body.

    ``domain`` and ``submitter`` are the mail headers ``TLS-Report-Domain``
    and ``TLS-Report-Submitter`` (RFC 8460 section 5.3) or what a file name
    ``submitter!domain!begin!end`` says; ``verified`` is True only for mail
    with a DKIM signature that counts (see ``dkimcheck``).
    """

    channel: str
    origin: str = ""
    verified: bool = False
    auth: str = ""
    domain: str = ""
    submitter: str = ""
