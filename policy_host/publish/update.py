"""Publish policy ids: RFC 2136 UPDATE signed with TSIG, checked, confirmed.

The pure half builds the UPDATE message for a batch of TXT changes and a
text rendering of it (nsupdate syntax, the TSIG secret never shown). The I/O
half (``Primary``) finds the zone with an SOA query, sends the message over
TCP, checks the response code, and reads TXT records back from the primary
itself (no resolver, no cache) to confirm.

TXT rdata is built from bytes: parsed as zone-file text, everything after
the first ``;`` of ``v=STSv1; id=...;`` would be taken for a comment.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.rrset
import dns.tsig
import dns.update

from policy_host.authdns import AuthDnsError, ask, txt_values
from policy_host.errors import PolicyHostError
from policy_host.read.config import TSIG_ALGORITHMS, ProviderConfig

log = logging.getLogger(__name__)

# A TXT character-string holds at most 255 bytes (RFC 1035 section 3.3).
MAX_TXT_STRING = 255


class PublishError(PolicyHostError):
    """The primary refused an update, or did not answer as expected."""


class KeyFileError(PolicyHostError):
    """The TSIG key file is missing, unsafe or unreadable."""

    exit_status = 2


# -- TSIG key --------------------------------------------------------------


@dataclass(frozen=True)
class TsigKey:
    """A TSIG key; ``repr`` and ``str`` never show the secret."""

    name: str
    algorithm: str
    secret: str = field(repr=False)

    def __str__(self) -> str:
        return f"{self.name} ({self.algorithm})"

    def dns_key(self) -> dns.tsig.Key:
        # dns.tsig.Key's own repr shows the secret: never log this object.
        return dns.tsig.Key(self.name, self.secret, self.algorithm)  # type: ignore[no-untyped-call]


# Quoted strings first, so that a "//" or "#" inside a base64 secret is
# never taken for the start of a comment.
_STRINGS_AND_COMMENTS = re.compile(r'"[^"]*"|/\*.*?\*/|//[^\n]*|#[^\n]*', re.S)
_KEY_BLOCK = re.compile(r'key\s+"?([A-Za-z0-9._-]+)"?\s*\{(.*?)\}\s*;', re.S)
_ALGORITHM = re.compile(r"\balgorithm\s+\"?([A-Za-z0-9-]+)\"?\s*;")
_SECRET = re.compile(r'\bsecret\s+"([^"]*)"\s*;')


def load_tsig_key(path: Path, default_algorithm: str) -> TsigKey:
    """Read a BIND ``tsig-keygen`` key file:
    ``key "name" { algorithm hmac-sha256; secret "base64"; };``.

    Refuses a file that group or others may access: the key lets anyone
    rewrite the provider's zone. No message here ever contains the secret.
    """
    try:
        info = os.stat(path)
        if info.st_mode & 0o077:
            mode = stat.S_IMODE(info.st_mode)
            raise KeyFileError(
                f"{path}: TSIG key file is accessible by group or others (mode {mode:04o}); "
                f"make it readable by the service user only: chmod 600 {path}"
            )
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise KeyFileError(f"{path}: TSIG key file does not exist (dns.tsig_key_file)") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not ASCII text"
        raise KeyFileError(f"{path}: cannot read the TSIG key file: {reason}") from None
    uncommented = _STRINGS_AND_COMMENTS.sub(
        lambda m: m.group(0) if m.group(0).startswith('"') else " ", text
    )
    blocks = _KEY_BLOCK.findall(uncommented)
    if len(blocks) != 1:
        raise KeyFileError(
            f'{path}: expected one key in BIND format, key "name" {{ algorithm ...; '
            f'secret "..."; }}; (found {len(blocks)})'
        )
    name, body = blocks[0]
    secret = _SECRET.search(body)
    if secret is None:
        raise KeyFileError(f'{path}: key "{name}" has no secret "...";')
    try:
        if not base64.b64decode(secret.group(1), validate=True):
            raise ValueError("empty")
    except (binascii.Error, ValueError):
        raise KeyFileError(f'{path}: key "{name}": the secret is not base64') from None
    algorithm_match = _ALGORITHM.search(body)
    algorithm = algorithm_match.group(1).lower() if algorithm_match else default_algorithm
    if algorithm not in TSIG_ALGORITHMS:
        raise KeyFileError(
            f'{path}: key "{name}": algorithm {algorithm!r} is not one of '
            f"{', '.join(TSIG_ALGORITHMS)}"
        )
    if algorithm != default_algorithm:
        log.info("%s: key %s uses %s (the key file's choice)", path, name, algorithm)
    return TsigKey(name, algorithm, secret.group(1))


# -- building the update (pure) --------------------------------------------


def id_record_value(policy_id: str) -> bytes:
    """The TXT record text for ``policy_id`` (RFC 8461 section 3.1)."""
    return b"v=STSv1; id=" + policy_id.encode("ascii") + b";"


def txt_rdata(value: bytes) -> dns.rdtypes.ANY.TXT.TXT:
    """TXT rdata from bytes (never from zone-file text, where ``;`` starts a
    comment); split into 255-byte strings, which readers join back."""
    strings = [value[i : i + MAX_TXT_STRING] for i in range(0, len(value), MAX_TXT_STRING)]
    return dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT, strings or [b""])


def record_name(config: ProviderConfig, domain: str) -> str:
    """The provider's TXT name for ``domain``, absolute."""
    return config.id_record_target(domain) + "."


@dataclass(frozen=True)
class TxtChange:
    """Set the TXT at ``name`` to ``value``, or delete it (``value`` None)."""

    name: str
    value: bytes | None


def build_update(
    zone: str, changes: Sequence[TxtChange], ttl: int, key: TsigKey | None
) -> dns.update.UpdateMessage:
    """One RFC 2136 UPDATE for ``zone``: each TXT replaced (RRset deleted,
    then the one record added) or deleted; TSIG-signed when ``key`` is given."""
    keyring = key.dns_key() if key is not None else None
    update = dns.update.UpdateMessage(zone, keyring=keyring)
    for change in changes:
        name = dns.name.from_text(change.name)
        if change.value is None:
            update.delete(name, dns.rdatatype.TXT)
        else:
            update.replace(name, ttl, txt_rdata(change.value))
    return update


def update_text(
    update: dns.update.UpdateMessage, server: tuple[str, int] | None, key: TsigKey | None
) -> str:
    """The UPDATE as nsupdate would read it; the TSIG secret is not shown."""
    lines = []
    if server is not None:
        lines.append(f"server {server[0]} {server[1]}")
    lines.append(f"zone {update.zone[0].name}")
    if key is not None:
        lines.append(f"key {key.algorithm}:{key.name} <secret not shown>")
    for rrset in update.update:
        rdtype = dns.rdatatype.to_text(rrset.rdtype)
        # RFC 2136 section 2.5: class ANY deletes an RRset, NONE one record.
        if rrset.deleting == dns.rdataclass.ANY:
            lines.append(f"update delete {rrset.name} {rdtype}")
        elif rrset.deleting == dns.rdataclass.NONE:
            lines.extend(f"update delete {rrset.name} {rdtype} {r.to_text()}" for r in rrset)
        else:
            lines.extend(
                f"update add {rrset.name} {rrset.ttl} {rdtype} {r.to_text()}" for r in rrset
            )
    lines.append("send")
    return "\n".join(lines)


# -- talking to the primary (I/O) ------------------------------------------

# RFC 8945 section 5.3: the TSIG errors a server answers with.
_TSIG_ERRORS: dict[type[Exception], str] = {
    dns.tsig.PeerBadKey: "BADKEY",
    dns.tsig.PeerBadSignature: "BADSIG",
    dns.tsig.PeerBadTime: "BADTIME",
    dns.tsig.PeerBadTruncation: "BADTRUNC",
}


class Primary:
    """The provider's primary DNS server: find zone, send update, read TXT."""

    def __init__(self, server: tuple[str, int], key: TsigKey | None, timeout: float) -> None:
        self.server = server
        self.address, self.port = server
        self.key = key
        self.timeout = timeout

    def __str__(self) -> str:
        return f"{self.address}:{self.port}"

    def _query(self, name: str, rdtype: dns.rdatatype.RdataType) -> dns.message.Message:
        try:
            return ask(self.server, name, rdtype.name, self.timeout)
        except AuthDnsError as exc:
            raise PublishError(f"primary {self}: {exc}") from exc

    def zone_for(self, name: str) -> str:
        """The zone ``name`` belongs to, from the primary's SOA answer."""
        response = self._query(name, dns.rdatatype.SOA)
        rcode = response.rcode()
        if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            raise PublishError(
                f"primary {self} answers {dns.rcode.to_text(rcode)} for {name}: "
                "is it authoritative for the id zone?"
            )
        if any(rrset.rdtype == dns.rdatatype.CNAME for rrset in response.answer):
            raise PublishError(
                f"{name} is a CNAME at primary {self}; id_zone must name the provider's own "
                "records, which take updates"
            )
        for section in (response.answer, response.authority):
            for rrset in section:
                if rrset.rdtype == dns.rdatatype.SOA:
                    return str(rrset.name)
        raise PublishError(f"primary {self} is not authoritative for {name} (no SOA)")

    def send(self, update: dns.update.UpdateMessage) -> None:
        """Send the UPDATE; raise ``PublishError`` unless it answers NOERROR."""
        refused = f"primary {self} refused the UPDATE for zone {update.zone[0].name}"
        try:
            response = dns.query.tcp(update, self.address, timeout=self.timeout, port=self.port)
        except dns.tsig.PeerError as exc:
            error = _TSIG_ERRORS.get(type(exc), type(exc).__name__)
            raise PublishError(
                f"{refused}: TSIG {error} (check the key name, algorithm and secret, and that "
                "the primary lets this key update this zone)"
            ) from None
        except dns.message.UnknownTSIGKey:
            raise PublishError(f"primary {self} signed its answer with an unknown key") from None
        except (dns.exception.DNSException, OSError) as exc:
            raise PublishError(f"primary {self}: UPDATE failed: {exc}") from exc
        rcode = response.rcode()
        if rcode != dns.rcode.NOERROR:
            hint = {
                dns.rcode.NOTAUTH: " (not authoritative for the zone, or the key is not allowed)",
                dns.rcode.REFUSED: " (updates to this zone are not allowed for this key)",
                dns.rcode.NOTZONE: " (a name is outside the zone)",
            }.get(rcode, "")
            raise PublishError(f"{refused}: {dns.rcode.to_text(rcode)}{hint}")

    def txt(self, name: str) -> list[bytes]:
        """The TXT records at ``name`` on the primary (joined strings)."""
        response = self._query(name, dns.rdatatype.TXT)
        if response.rcode() == dns.rcode.NXDOMAIN:
            return []
        if response.rcode() != dns.rcode.NOERROR:
            raise PublishError(
                f"primary {self} answers {dns.rcode.to_text(response.rcode())} for {name} TXT"
            )
        return txt_values(response, name)


def shows(values: Sequence[bytes], expected: bytes | None) -> bool:
    """Does the primary's TXT answer show the change: exactly the one
    expected record, or (for a deletion) none at all?"""
    return list(values) == ([] if expected is None else [expected])
