"""Frozen tenant and policy objects, and the RFC 8461 rules they must obey.

Everything here is pure: no files, no network. Checks raise ``InvalidValue``
with a message meant for the person who wrote the value; the caller adds the
file and line.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

# RFC 8461 section 3.2: policy modes.
MODES = ("enforce", "testing", "none")
# RFC 8461 section 3.2: max_age is at most 31557600 seconds (about a year).
MAX_AGE_LIMIT = 31_557_600
# Some senders ignore policies cached for less than a day.
MAX_AGE_WARN_BELOW = 86_400
MAX_AGE_ENFORCE_RECOMMENDED = 604_800
# RFC 8461 section 3.3: senders may refuse a policy body over 64 KiB.
MAX_POLICY_BYTES = 64 * 1024
# RFC 1035 section 2.3.4, written without the final dot.
MAX_NAME_LENGTH = 253
MAX_LABEL_LENGTH = 63
# The longest name policy-host derives below a customer domain.
TLSRPT_PREFIX = "_smtp._tls."
POLICY_HOST_PREFIX = "mta-sts."
ID_RECORD_PREFIX = "_mta-sts."

_LDH = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?\Z")
# A name already in its final form: lower-case LDH labels of 1-63
# characters, at least two, and no '--' anywhere (so no A-label and no
# reserved label). It passes every rule in ``hostname`` as it is.
_PLAIN_NAME = re.compile(
    r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+\Z"
)

# An mx pattern in that form, its last label not all digits: ``hostname``
# and ``mx_pattern`` return it unchanged.
_PLAIN_PATTERN = re.compile(
    r"(?:\*\.)?[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*"
    r"\.(?=[a-z0-9-]*[a-z-])[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z"
)


class InvalidValue(ValueError):
    """A value breaks a rule; ``str()`` says which, for a person."""


@dataclass(frozen=True)
class Hostname:
    """A host name in A-labels, lower case, without a final dot."""

    ascii: str
    # The text as written when it was not already the A-label form.
    written: str | None = None


def hostname(text: str, *, what: str = "name") -> Hostname:
    """Check and normalise a DNS host name (LDH labels, IDN converted).

    Internationalised labels are converted to A-labels with the IDNA 2008
    rules plus UTS #46 mapping (the ``idna`` package); A-labels written
    directly must decode and re-encode to themselves.
    """
    if (
        len(text) <= MAX_NAME_LENGTH
        and "--" not in text
        and _PLAIN_NAME.match(text)
        and not text[text.rfind(".") + 1 :].isdigit()
    ):
        return Hostname(text)  # the common case, 10x quicker (docs/performance.md)
    return _hostname(text, what)


def _hostname(text: str, what: str) -> Hostname:
    """``hostname`` for any text: every rule, one at a time."""
    if not text:
        raise InvalidValue(f"{what} is empty")
    if text.endswith("."):
        raise InvalidValue(f"{what} '{text}' must not end with a dot")
    if text.startswith(".") or ".." in text:
        raise InvalidValue(f"{what} '{text}' has an empty label")
    labels = []
    converted = False
    for label in text.split("."):
        if label.isascii():
            low = label.lower()
            if low.startswith("xn--"):
                _check_a_label(low, text, what)
            elif len(low) >= 4 and low[2:4] == "--":
                raise InvalidValue(
                    f"{what} '{text}': label '{label}' has '--' in third and fourth place, "
                    "which is reserved for A-labels (xn--)"
                )
            labels.append(low)
        else:
            # Here, not at the top: idna's tables cost every command's
            # start-up, and most names are ASCII (docs/performance.md).
            import idna

            try:
                a_label = idna.encode(label, uts46=True).decode("ascii")
                # Refuse what the mapping would silently change (zero-width
                # characters dropped, full-width letters narrowed, ...): the
                # name served must be the name the person meant.
                back = idna.decode(a_label)
                if back != unicodedata.normalize("NFC", label).lower():
                    raise InvalidValue(
                        f"{what} '{text}': label '{label}' changes under IDNA mapping "
                        f"(to '{back}'); write the intended name exactly"
                    )
                labels.append(a_label)
            except idna.IDNAError as exc:
                raise InvalidValue(
                    f"{what} '{text}': label '{label}' is not a valid IDN ({exc})"
                ) from None
            converted = True
    for label in labels:
        if len(label) > MAX_LABEL_LENGTH:
            raise InvalidValue(
                f"{what} '{text}': label '{label[:20]}...' is {len(label)} characters; "
                f"the limit is {MAX_LABEL_LENGTH}"
            )
        if not _LDH.match(label):
            raise InvalidValue(
                f"{what} '{text}': label '{label}' may hold only letters, digits and inner hyphens"
            )
    if len(labels) < 2:
        raise InvalidValue(f"{what} '{text}' needs at least two labels")
    if labels[-1].isdigit():
        raise InvalidValue(f"{what} '{text}' looks like an address; a host name is needed")
    name = ".".join(labels)
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidValue(
            f"{what} '{text[:40]}...' is {len(name)} characters; the limit is {MAX_NAME_LENGTH}"
        )
    return Hostname(name, text if converted else None)


def _check_a_label(label: str, text: str, what: str) -> None:
    import idna  # only for names written with A-labels, as above

    try:
        if idna.encode(idna.decode(label)).decode("ascii") != label:
            raise idna.IDNAError("does not round-trip")
    except (idna.IDNAError, UnicodeError) as exc:
        raise InvalidValue(f"{what} '{text}': '{label}' is not a valid A-label ({exc})") from None


def mx_pattern(text: str) -> Hostname:
    """Check an RFC 8461 section 3.2 ``mx`` pattern: a host name, or ``*.``
    and a host name, where the wildcard stands for exactly one label."""
    base = text[2:] if text.startswith("*.") else text
    if "*" in base:
        raise InvalidValue(
            f"mx '{text}': '*' may only be the whole leftmost label, as in '*.example.com'"
        )
    host = hostname(base, what="mx")
    if text.startswith("*."):
        return Hostname("*." + host.ascii, text if host.written else None)
    return host


def mx_matches(pattern: str, host: str) -> bool:
    """RFC 8461 section 4.1: does an MX host match a policy ``mx`` pattern?

    Case-insensitive, a final dot on the host ignored; ``*.example.com``
    matches exactly one extra leftmost label. Whole-label comparison, so
    ``mail.example.com`` never matches ``mail.example.com.evil.net``.
    """
    pattern = pattern.lower().rstrip(".")
    host = host.lower().rstrip(".")
    if not pattern or not host:
        return False
    if pattern.startswith("*."):
        first, dot, rest = host.partition(".")
        return bool(first) and bool(dot) and rest == pattern[2:]
    return host == pattern


@dataclass(frozen=True)
class Policy:
    """What a sender fetches: RFC 8461 section 3.2 fields, already checked."""

    mode: str
    mx: tuple[str, ...]
    max_age: int

    def __post_init__(self) -> None:
        # The one place that guards the invariants, whoever builds a Policy
        # (a tenant file, the parse cache, a withdrawal): what renders is
        # always a valid RFC 8461 section 3.2 policy.
        if self.mode not in MODES:
            raise InvalidValue(f"mode: expected one of {', '.join(MODES)} (got {self.mode!r})")
        if not isinstance(self.mx, tuple):
            raise InvalidValue(f"mx: expected a tuple of patterns (got {type(self.mx).__name__})")
        for pattern in self.mx:
            if not _is_canonical_pattern(pattern):
                raise InvalidValue(f"mx: {pattern!r} is not an mx pattern in A-label form")
        if not self.mx and self.mode != "none":
            raise InvalidValue(f"mx: at least one pattern is required in mode {self.mode}")
        # bool is an int subclass and a float renders as '1.5': neither is a max_age.
        if type(self.max_age) is not int or not 0 <= self.max_age <= MAX_AGE_LIMIT:
            raise InvalidValue(f"max_age: expected 0..{MAX_AGE_LIMIT} (got {self.max_age!r})")


def _is_canonical_pattern(pattern: object) -> bool:
    """Is ``pattern`` exactly what ``mx_pattern`` makes of itself?"""
    if type(pattern) is not str:
        return False
    if len(pattern) <= MAX_NAME_LENGTH and "--" not in pattern and _PLAIN_PATTERN.match(pattern):
        return True  # the common case, without the full rules (a few hundred ns)
    try:
        return mx_pattern(pattern).ascii == pattern
    except InvalidValue:
        return False


@dataclass(frozen=True)
class Tenant:
    """One customer domain and the policy served for it."""

    domain: str
    policy: Policy
    source: str
    note: str | None = None
    tlsrpt_rua: tuple[str, ...] = field(default=())

    @property
    def policy_host(self) -> str:
        """The name senders fetch the policy from (RFC 8461 section 3.3)."""
        return POLICY_HOST_PREFIX + self.domain

    @property
    def id_record_name(self) -> str:
        """The customer's TXT name (RFC 8461 section 3.1), a CNAME to us."""
        return ID_RECORD_PREFIX + self.domain


def check_rua(text: str) -> str:
    """An RFC 8460 section 3 ``rua`` URI: ``mailto:`` or ``https:``. The
    scheme is case-insensitive (RFC 3986 section 3.1) and returned in lower
    case, its canonical form; the rest is returned as written."""
    scheme, colon, rest = text.partition(":")
    scheme = scheme.lower()
    if colon and scheme == "mailto":
        local, at, domain = rest.rpartition("@")
        if not at or not local or "." not in domain or any(c in rest for c in " ,;!"):
            raise InvalidValue(f"tlsrpt_rua '{text}': expected mailto:name@domain")
        return f"mailto:{rest}"
    if colon and scheme == "https" and rest.startswith("//"):
        host = rest[2:]
        if not host or host[0] in "/?#" or any(c in text for c in " ,;!"):
            raise InvalidValue(f"tlsrpt_rua '{text}': expected https://host/path")
        return f"https:{rest}"
    raise InvalidValue(f"tlsrpt_rua '{text}': only mailto: and https: URIs are allowed")
