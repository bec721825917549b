"""A strict reader of MTA-STS policy bodies (RFC 8461 section 3.2), written
for the tests and independent of ``policy_host``: it imports nothing from
the package, so a bug in the renderer cannot hide in a shared helper.

It accepts exactly the canonical form the design promises and that the
strictest senders accept: ASCII, no BOM, CRLF after every line, no blank
lines, lower-case keys written ``key: value`` with one space, ``version:
STSv1`` first, then ``mode``, the ``mx`` lines, ``max_age`` last; at most
64 KiB. Everything else is an error that says which line and why.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["MAX_AGE_LIMIT", "MAX_BODY", "ParsedPolicy", "PolicyParseError", "parse_policy"]

MAX_BODY = 64 * 1024
MAX_AGE_LIMIT = 31_557_600
MODES = ("enforce", "testing", "none")
# RFC 5321 section 4.1.2: sub-domain = Let-dig [Ldh-str]; lower case only
# here (canonical form), at most 63 octets (RFC 1035 section 2.3.4).
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
# RFC 8461 section 3.2: max_age = 1*10DIGIT; canonical: no leading zero.
_MAX_AGE = re.compile(r"(?:0|[1-9][0-9]{0,9})\Z")


class PolicyParseError(ValueError):
    """The body is not a canonical RFC 8461 policy; says where and why."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}" if line else message)
        self.line = line


@dataclass(frozen=True)
class ParsedPolicy:
    mode: str
    mx: tuple[str, ...]
    max_age: int


def _check_mx(value: str, line: int) -> None:
    """RFC 8461 section 3.2: ``sts-policy-mx-value = ["*."] Domain``."""
    host = value[2:] if value.startswith("*.") else value
    if len(host) > 253:
        raise PolicyParseError(line, f"mx host is {len(host)} octets; the limit is 253")
    labels = host.split(".")
    if len(labels) < 2:
        raise PolicyParseError(line, f"mx {value!r} has fewer than two labels")
    for label in labels:
        if not _LABEL.match(label):
            raise PolicyParseError(line, f"mx {value!r}: {label!r} is no lower-case LDH label")
        if label[2:4] == "--" and not label.startswith("xn--"):
            raise PolicyParseError(line, f"mx {value!r}: {label!r} has '--' in places 3-4")
        if label.startswith("xn--"):
            try:
                decoded = label[4:].encode("ascii").decode("punycode")
            except UnicodeError:
                raise PolicyParseError(line, f"mx {value!r}: {label!r} is no punycode") from None
            if decoded.isascii():
                raise PolicyParseError(line, f"mx {value!r}: {label!r} encodes plain ASCII")
    if labels[-1].isdigit():
        raise PolicyParseError(line, f"mx {value!r} is an address, not a host name")


def parse_policy(body: bytes) -> ParsedPolicy:
    """Parse ``body`` strictly; raise ``PolicyParseError`` on any deviation."""
    if len(body) > MAX_BODY:
        raise PolicyParseError(0, f"body is {len(body)} bytes; the limit is {MAX_BODY}")
    if body.startswith(b"\xef\xbb\xbf"):
        raise PolicyParseError(1, "byte order mark")
    if not body.endswith(b"\r\n"):
        raise PolicyParseError(0, "body does not end with CRLF (incomplete?)")
    lines = body[:-2].split(b"\r\n")
    fields: list[tuple[str, str]] = []
    for number, raw in enumerate(lines, start=1):
        if any(byte < 0x20 or byte > 0x7E for byte in raw):
            raise PolicyParseError(number, f"control or non-ASCII byte in {raw!r}")
        text = raw.decode("ascii")
        key, sep, value = text.partition(": ")
        if not sep or not key or not value:
            raise PolicyParseError(number, f"not 'key: value': {text!r}")
        if value != value.strip() or " " in value:
            raise PolicyParseError(number, f"value {value!r} has spaces")
        fields.append((key, value))
    keys = [key for key, _ in fields]
    if keys[:1] != ["version"] or fields[0][1] != "STSv1":
        raise PolicyParseError(1, "the first line must be 'version: STSv1'")
    if len(keys) < 3 or keys[1] != "mode" or keys[-1] != "max_age":
        raise PolicyParseError(0, f"expected version, mode, mx..., max_age; got {keys}")
    middle = keys[2:-1]
    if any(key != "mx" for key in middle):
        raise PolicyParseError(0, f"only mx lines may stand between mode and max_age: {keys}")
    mode = fields[1][1]
    if mode not in MODES:
        raise PolicyParseError(2, f"mode {mode!r} is not one of {MODES}")
    mx = tuple(value for key, value in fields[2:-1])
    for offset, value in enumerate(mx, start=3):
        _check_mx(value, offset)
    if len(set(mx)) != len(mx):
        raise PolicyParseError(0, f"an mx pattern is listed twice: {mx}")
    if mode != "none" and not mx:
        raise PolicyParseError(0, f"mode {mode} needs at least one mx")
    age = fields[-1][1]
    if not _MAX_AGE.match(age) or int(age) > MAX_AGE_LIMIT:
        raise PolicyParseError(len(fields), f"max_age {age!r} is not 0..{MAX_AGE_LIMIT}")
    return ParsedPolicy(mode, mx, int(age))
