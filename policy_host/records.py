"""DNS record syntax and judgement, once for every caller.

- the MTA-STS TXT record (RFC 8461 section 3.1) and the TLS-RPT record
  (RFC 8460 section 3): the version test, the fields, the id's form;
- TXT strings joined into one value;
- the CNAME rule: a chain reaches the policy host when any name along it is
  the policy host;
- CAA (RFC 8659, with the RFC 8657 parameters): which record set is
  relevant, and whether it lets our CA issue for a name by HTTP-01 with our
  ACME account.

Pure: the callers (``check``, ``certs``, ``state``) do the DNS and file I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import dns.rdata
import dns.rdtypes.ANY.CAA
import dns.rdtypes.ANY.TXT

from policy_host.model import InvalidValue, check_rua

# -- MTA-STS and TLS-RPT TXT records -------------------------------------------

# RFC 8461 section 3.1 ABNF: sts-sep = *WSP %x3B *WSP; the id is 1*32 of
# ALPHA / DIGIT; extension names and values as below.
POLICY_ID = re.compile(r"[A-Za-z0-9]{1,32}\Z")
_WSP_SEMI = re.compile(r"[ \t]*;[ \t]*")
_EXT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}\Z")
_EXT_VALUE = re.compile(r"[\x21-\x3a\x3c\x3e-\x7e]+\Z")
STS_VERSION = "v=STSv1"
TLSRPT_VERSION = "v=TLSRPTv1"


def is_policy_id(text: str) -> bool:
    """Is ``text`` an RFC 8461 section 3.1 ``id`` (1-32 letters and digits)?"""
    return POLICY_ID.match(text) is not None


def has_version(text: str, version: str) -> bool:
    """Does a TXT value begin with ``version`` and its separator?

    RFC 8461 section 3.1 (and RFC 8460 section 3 alike): records that do
    not begin with "v=STSv1;" are discarded, so ``v=STSv10;...`` or a bare
    ``v=STSv1`` is not a candidate (WSP before the ";" is allowed by the
    ABNF).
    """
    return text.startswith(version) and _WSP_SEMI.match(text, len(version)) is not None


def txt_bytes(rdata: dns.rdata.Rdata) -> bytes:
    """A TXT record's strings joined with nothing between them (RFC 8461
    section 3.1, RFC 8460 section 3); ``b""`` for any other record type."""
    if not isinstance(rdata, dns.rdtypes.ANY.TXT.TXT):
        return b""
    strings: Iterable[bytes] = rdata.strings
    return b"".join(strings)


def joined_txt(rdata: dns.rdata.Rdata) -> str:
    """``txt_bytes`` as text; bytes that are not ASCII show as escapes."""
    return txt_bytes(rdata).decode("ascii", errors="backslashreplace")


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


def _is_extension(name: str, value: str) -> bool:
    return _EXT_NAME.match(name) is not None and _EXT_VALUE.match(value) is not None


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
        elif not _is_extension(name, value):
            return None, f"field '{part}' is not a valid extension (name=value without spaces)"
    if not ids:
        return None, "it has no id field"
    if len(ids) > 1:
        return None, "it has more than one id field"
    if not is_policy_id(ids[0]):
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
        elif not _is_extension(name, value):
            return [], f"field '{part}' is not a valid extension"
    if not rua:
        return [], "it has no rua field"
    for uri in rua:
        try:
            check_rua(uri)
        except InvalidValue:
            return rua, f"rua URI '{uri}' is not a mailto: or https: URI"
    return rua, None


def tlsrpt_record_value(rua: Sequence[str]) -> bytes:
    """The TLS-RPT record (RFC 8460 section 3) sending reports to ``rua``:
    ``v=TLSRPTv1; rua=URI,URI``. Bytes, for TXT rdata built from bytes."""
    return f"{TLSRPT_VERSION}; rua={','.join(rua)}".encode("ascii")


# -- CNAME --------------------------------------------------------------------


def chain_reaches(chain: Sequence[str], target: str) -> bool:
    """Does a CNAME chain (the names followed, in order) lead to ``target``?

    A resolver follows the whole chain (RFC 1034 section 3.6.2), and so do
    senders and the CA's HTTP-01 check (RFC 8555 section 8.3): any number
    of hops works as long as one of them is the policy host (which may
    itself be an alias, e.g. of a load balancer).
    """
    return target in chain


# -- CAA ------------------------------------------------------------------------

# RFC 8659 section 4.1: the Issuer Critical Flag.
CAA_CRITICAL = 128
# Let's Encrypt also takes flag bit 1 as critical (RFC 6844's figure was
# often misread as numbering the bits the other way), so a CA may refuse on
# it too: count it.
_CAA_CRITICAL_ALIAS = 1
# The properties a CA understands, so that a critical one does not stop it:
# issue, issuewild and iodef (RFC 8659 section 4) and issuemail (RFC 9495,
# S/MIME only; Let's Encrypt recognises it). Not contactemail/contactphone:
# they are CA/Browser Forum tags that not every CA implements (Let's
# Encrypt refuses on a critical one), so a critical one may stop issuance.
KNOWN_CAA_TAGS = frozenset({"issue", "issuewild", "iodef", "issuemail"})
# How every certificate here is validated (certbot --webroot).
ACME_METHOD = "http-01"
# RFC 8657 section 4: a validationmethods label.
_METHOD_LABEL = re.compile(r"[A-Za-z0-9-]+\Z")
# RFC 8659 section 4.2: parameter tag and value.
_PARAM_TAG = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\Z")
_PARAM_VALUE = re.compile(r"[\x21-\x3a\x3c-\x7e]*\Z")


def caa_names(name: str) -> list[str]:
    """``name`` and its parents, up to but not including the root (RFC 8659
    section 3: the tree is climbed from the name itself)."""
    labels = name.split(".")
    return [".".join(labels[i:]) for i in range(len(labels))]


@dataclass(frozen=True)
class CaaProperty:
    """One CAA record: flags, tag (lower case) and value."""

    flags: int
    tag: str
    value: str

    @property
    def critical(self) -> bool:
        return bool(self.flags & (CAA_CRITICAL | _CAA_CRITICAL_ALIAS))


def caa_properties(rdatas: Iterable[dns.rdata.Rdata]) -> list[CaaProperty]:
    """The CAA records among ``rdatas``, as ``CaaProperty``."""
    return [
        CaaProperty(
            int(r.flags),
            bytes(r.tag).decode("ascii", "replace").lower(),
            bytes(r.value).decode("ascii", "replace"),
        )
        for r in rdatas
        if isinstance(r, dns.rdtypes.ANY.CAA.CAA)
    ]


@dataclass(frozen=True)
class AcmeIdentity:
    """How we ask for certificates: the CAs' issuer domain names (RFC 8659
    section 4.2), our ACME account URIs (RFC 8657 section 3; none before
    the first order), the validation method."""

    issuers: tuple[str, ...]
    accounts: frozenset[str] = frozenset()
    method: str = ACME_METHOD


@dataclass(frozen=True)
class CaaVerdict:
    """Whether a relevant CAA set lets us issue for a non-wildcard name.

    ``critical_tag``: an unknown critical property that stops every CA.
    ``entries``: what each ``issue`` property allows, for a person ("" for
    nobody). ``shortfall``: what our own CA's entries lack, as a phrase
    that follows "not <issuer>" (empty when they name another CA only).
    """

    allowed: bool
    critical_tag: str | None = None
    entries: tuple[str, ...] = ()
    shortfall: str = ""


@dataclass(frozen=True)
class _IssueValue:
    issuer: str  # lower case; "" allows nobody
    parameters: tuple[tuple[str, str], ...] | None  # None: malformed


def _issue_value(text: str) -> _IssueValue:
    """RFC 8659 section 4.2: ``issuer-domain-name [; tag=value ...]``."""
    head, *rest = text.split(";")
    issuer = head.strip(" \t").lower()
    if len(rest) == 1 and not rest[0].strip(" \t"):
        return _IssueValue(issuer, ())
    parameters = []
    for part in rest:
        tag, equals, value = part.partition("=")
        tag, value = tag.strip(" \t"), value.strip(" \t")
        if not equals or not _PARAM_TAG.match(tag) or not _PARAM_VALUE.match(value):
            return _IssueValue(issuer, None)
        parameters.append((tag, value))
    return _IssueValue(issuer, tuple(parameters))


def _single(parameters: Sequence[tuple[str, str]], tag: str) -> str | None | bool:
    """The value of ``tag``; None when absent; False when repeated (a
    property with two is unsatisfiable, RFC 8657 section 5.8)."""
    values = [value for name, value in parameters if name == tag]
    if len(values) > 1:
        return False
    return values[0] if values else None


def _restriction(entry: _IssueValue, us: AcmeIdentity) -> tuple[str, str] | None:
    """Why an ``issue`` entry naming one of our CAs still refuses us, as
    ``(kind, phrase)``; None when it allows us."""
    if entry.parameters is None:
        return "syntax", f"{entry.issuer} with malformed parameters"
    methods = _single(entry.parameters, "validationmethods")
    account = _single(entry.parameters, "accounturi")
    if methods is False or account is False:
        return "syntax", f"{entry.issuer} with a repeated parameter (unsatisfiable)"
    if isinstance(methods, str):
        labels = methods.split(",")
        if not all(_METHOD_LABEL.match(label) for label in labels) or us.method not in labels:
            return "method", f"{entry.issuer} for validationmethods={methods} only"
    if isinstance(account, str) and account not in us.accounts:
        return "account", f"{entry.issuer} for account {account} only"
    return None


def judge_caa(properties: Iterable[CaaProperty], us: AcmeIdentity) -> CaaVerdict:
    """RFC 8659 sections 4.1-4.3 and RFC 8657 for the relevant CAA set of a
    non-wildcard name: may one of ``us.issuers`` issue, validating by
    ``us.method`` for one of ``us.accounts``?

    ``issuewild`` does not apply to such a name; with no ``issue`` property
    at all, any CA may issue.
    """
    props = list(properties)
    for prop in props:
        if prop.tag not in KNOWN_CAA_TAGS and prop.critical:
            return CaaVerdict(False, critical_tag=prop.tag)
    issues = [_issue_value(prop.value) for prop in props if prop.tag == "issue"]
    if not issues:
        return CaaVerdict(True)
    entries: list[str] = []
    kinds: set[str] = set()
    for entry in issues:
        if entry.issuer not in us.issuers:
            entries.append(entry.issuer)
            continue
        restriction = _restriction(entry, us)
        if restriction is None:
            return CaaVerdict(True)
        kinds.add(restriction[0])
        entries.append(restriction[1])
    return CaaVerdict(False, entries=tuple(entries), shortfall=_shortfall(kinds, us))


def _shortfall(kinds: set[str], us: AcmeIdentity) -> str:
    said = []
    if "method" in kinds:
        said.append(f" by {us.method}")
    if "account" in kinds:
        ours = ", ".join(sorted(us.accounts)) if us.accounts else "none registered yet"
        said.append(f" with our ACME account ({ours})")
    return "".join(said)
