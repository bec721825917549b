"""DKIM for report mail (RFC 8460 section 3), with dkimpy doing the crypto.

A signature counts when dkimpy verifies it, its ``d=`` is the submitter's
domain (or a parent of it), it has no ``l=`` tag (section 3: a length limit
would let anyone append a forged report), and the key record's service list
(``s=``, RFC 6376 section 3.6.1) allows ``tlsrpt`` or everything.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import dns.resolver

# dkimpy and dnspython are imported where a message is checked: a folder of
# report files needs neither, and importing them takes longer than storing
# a thousand reports (docs/performance.md).

log = logging.getLogger(__name__)

# dkimpy's DNS hook: (name, timeout) -> the TXT record's bytes or None.
TxtLookup = Callable[..., bytes | None]


@dataclass(frozen=True)
class Verdict:
    verified: bool
    # What a person reads: "dkim d=google.com s=20240101" or why not.
    auth: str


def resolver_lookup(server: tuple[str, int] | None, timeout: float) -> TxtLookup:
    """A TXT lookup through ``server`` (the configured recursive resolver)
    or the system's resolver (made on the first lookup)."""
    made: list[dns.resolver.Resolver] = []

    def resolver() -> dns.resolver.Resolver:
        import dns.resolver

        if not made:
            one = dns.resolver.Resolver(configure=server is None)
            if server is not None:
                one.nameservers = [server[0]]
                one.port = server[1]
            made.append(one)
        return made[0]

    def lookup(name: bytes | str, timeout: float = timeout) -> bytes | None:
        import dns.exception

        text = name.decode("ascii") if isinstance(name, bytes) else name
        try:
            answer = resolver().resolve(text, "TXT", lifetime=timeout)
        except (dns.exception.DNSException, UnicodeError):
            return None
        for rdata in answer:
            strings: list[bytes] = rdata.strings  # type: ignore[attr-defined]
            return b"".join(strings)
        return None

    return lookup


def _aligned(signer: str, submitter: str) -> bool:
    # A parent domain may sign for its subdomains, but not a top-level one.
    return submitter == signer or ("." in signer and submitter.endswith("." + signer))


def _service_allows_tlsrpt(record: bytes | None) -> bool:
    import dkim.util

    if record is None:
        return False
    try:
        tags = dkim.util.parse_tag_value(record)
    except dkim.util.InvalidTagValueList:
        return False
    services = tags.get(b"s")
    if services is None:
        return True  # default "*": every service (RFC 6376 section 3.6.1)
    return bool({s.strip() for s in services.split(b":")} & {b"*", b"tlsrpt"})


_SERVICE_TAG = re.compile(rb"(^|;)(\s*s\s*=)([^;]*)")


def _for_dkimpy(record: bytes | None) -> bytes | None:
    """The key record as dkimpy 1.1.8 can read it: it refuses a service
    list (``s=email:tlsrpt``) outright, so a list that allows tlsrpt is
    shown to it as ``s=tlsrpt``. The service judgement is ours
    (``_service_allows_tlsrpt`` on the record as published)."""
    if record is None or not _service_allows_tlsrpt(record):
        return record

    def single(match: re.Match[bytes]) -> bytes:
        services = {s.strip() for s in match.group(3).split(b":")}
        chosen = b"*" if b"*" in services else b"tlsrpt"
        return match.group(1) + match.group(2) + chosen

    return _SERVICE_TAG.sub(single, record)


def verify(message: bytes, submitter: str, lookup: TxtLookup) -> Verdict:
    """Whether ``message`` carries a signature that counts for a report."""
    import dkim
    import dkim.util

    if not submitter:
        return Verdict(False, "no TLS-Report-Submitter to align a signature with")
    seen: dict[str, bytes | None] = {}

    def recording(name: bytes | str, timeout: float = 5) -> bytes | None:
        key = name.decode("ascii", "replace") if isinstance(name, bytes) else name
        seen[key.rstrip(".").lower()] = answer = lookup(name, timeout)
        return _for_dkimpy(answer)

    try:
        checker = dkim.DKIM(message, tlsrpt=True)
    except dkim.DKIMException as exc:
        return Verdict(False, f"dkim: unreadable message ({exc})")
    signatures = [v for k, v in checker.headers if k.lower() == b"dkim-signature"]
    if not signatures:
        return Verdict(False, "no DKIM signature")
    reasons = []
    for index, value in enumerate(signatures):
        try:
            tags = dkim.util.parse_tag_value(value)
        except dkim.util.InvalidTagValueList:
            reasons.append("dkim: unreadable signature")
            continue
        signer = tags.get(b"d", b"").decode("ascii", "replace").lower().rstrip(".")
        selector = tags.get(b"s", b"").decode("ascii", "replace").lower()
        where = f"d={signer} s={selector}"
        if b"l" in tags:
            reasons.append(f"dkim {where}: has an l= tag")
            continue
        if not _aligned(signer, submitter):
            reasons.append(f"dkim {where}: not the submitter {submitter}")
            continue
        try:
            good = checker.verify(index, dnsfunc=recording)
        except dkim.DKIMException as exc:
            text = str(exc)
            # dkimpy raises some errors without a message (an unusable key).
            reasons.append(f"dkim {where}: {text if text not in ('', 'None') else 'unusable key'}")
            continue
        if not good:
            reasons.append(f"dkim {where}: signature does not verify")
            continue
        if not _service_allows_tlsrpt(seen.get(f"{selector}._domainkey.{signer}")):
            reasons.append(f"dkim {where}: the key's s= does not allow tlsrpt")
            continue
        return Verdict(True, f"dkim {where}")
    return Verdict(False, "; ".join(reasons))
