"""A report mail (RFC 8460 section 5.3) -> the report part and its headers.

Lenient where real senders are sloppy: the report part is found by its
media type (``application/tlsrpt+gzip`` or ``+json``) or, failing that, by a
file name ending ``.json`` or ``.json.gz`` on any part (some senders use
``application/octet-stream``); base64 is decoded the forgiving way.
"""

from __future__ import annotations

import email
import email.message
from dataclasses import dataclass
from typing import NamedTuple

from policy_host.errors import PolicyHostError

# A report mail has two or three parts; a thousand is an attack.
MAX_PARTS = 50
REPORT_TYPES = ("application/tlsrpt+gzip", "application/tlsrpt+json")
NAME_ENDINGS = (".json", ".json.gz", ".json.gzip", ".gz")


class NotReport(PolicyHostError):
    """A message that holds no TLS report (kept aside, never bounced)."""


@dataclass(frozen=True)
class MailReport:
    payload: bytes
    labelled_gzip: bool
    domain: str  # TLS-Report-Domain ("" when missing)
    submitter: str  # TLS-Report-Submitter ("" when missing)
    sender: str  # From, for the record
    message_id: str
    filename: str
    quirks: tuple[str, ...]


def _header(message: email.message.Message, name: str) -> str:
    value = message.get(name)
    return str(value).strip() if value is not None else ""


def read_mail(data: bytes) -> MailReport:
    """Find the report in a message; ``NotReport`` when there is none."""
    message = email.message_from_bytes(data)
    quirks: list[str] = []
    if message.get_content_type() != "multipart/report" or (
        str(message.get_param("report-type", "")).lower() != "tlsrpt"
    ):
        quirks.append("not-multipart-report")
    found: email.message.Message | None = None
    for count, part in enumerate(message.walk(), 1):
        if count > MAX_PARTS:
            raise NotReport(f"more than {MAX_PARTS} MIME parts")
        if part.is_multipart():
            continue
        kind = part.get_content_type()
        name = (part.get_filename() or "").lower()
        if kind in REPORT_TYPES:
            found = part
            break
        if found is None and name.endswith(NAME_ENDINGS):
            found = part
    if found is None:
        raise NotReport("no application/tlsrpt+gzip or +json part")
    if found.get_content_type() not in REPORT_TYPES:
        quirks.append("report-part-type")
    payload = found.get_payload(decode=True)
    if not isinstance(payload, bytes) or not payload:
        raise NotReport("the report part is empty")
    domain = _header(message, "TLS-Report-Domain")
    submitter = _header(message, "TLS-Report-Submitter")
    if not domain or not submitter:
        # RFC 8460 section 5.3: both MUST be present.
        quirks.append("missing-report-headers")
    filename = found.get_filename() or ""
    return MailReport(
        payload=payload,
        labelled_gzip=found.get_content_type() == "application/tlsrpt+gzip"
        or filename.lower().endswith((".gz", ".gzip")),
        domain=domain,
        submitter=submitter.lower().rstrip("."),
        sender=_header(message, "From"),
        message_id=_header(message, "Message-ID"),
        filename=filename,
        quirks=tuple(quirks),
    )


class FileName(NamedTuple):
    """``submitter!policy-domain!begin!end[!unique].json[.gz]`` (section 5.1)."""

    submitter: str
    domain: str


def parse_filename(name: str) -> FileName | None:
    base = name.rsplit("/", 1)[-1]
    parts = base.split("!")
    if len(parts) < 4:
        return None
    return FileName(parts[0].lower(), parts[1])
