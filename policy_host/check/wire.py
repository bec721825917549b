"""Read a DNS response's header and answer section from its bytes (RFC 1035
section 4.1), without building a ``dns.message.Message``.

`check` reads hundreds of thousands of small answers, and all it needs of
each is the response code and the answer records at a few names: building
every name, record and RRset of the whole message (and hashing each record
into its set) takes two thirds of its CPU (docs/performance.md). Here the
records are only located; the few the checks use are then built by
dnspython from the same bytes (``dns.rdata.from_wire``), so record syntax
stays dnspython's.

Names are compared as keys: their labels in wire form, lower case (DNS
names compare without regard to ASCII case, RFC 4343), compression
pointers followed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import dns.name

# RFC 1035 section 3.1: at most 255 bytes in wire form.
MAX_NAME = 255
TYPE_OPT = 41
CLASS_IN = 1

_RR = struct.Struct("!HHIH")  # type, class, TTL, rdata length


class WireError(ValueError):
    """The bytes are not a well-formed DNS message."""


@dataclass(frozen=True)
class WireRecord:
    """One record located in a message's bytes: its owner's key, type,
    class, TTL, and where its data is."""

    owner: bytes
    rdtype: int
    rdclass: int
    ttl: int
    start: int
    length: int


@dataclass(frozen=True)
class Response:
    """What `check` needs of a response: the full response code (with the
    EDNS extension, RFC 6891 section 6.1.3), TC, and the answer records."""

    rcode: int
    truncated: bool
    answer: tuple[WireRecord, ...]


def name_key(name: dns.name.Name) -> bytes:
    """The key of an absolute name, comparable with ``read_name``'s."""
    wire = name.to_wire()
    assert wire is not None  # None only when writing to a file
    return wire[:-1].lower()


def read_name(wire: bytes, at: int) -> tuple[bytes, int]:
    """The key of the name at ``at`` and the offset just after it.

    A pointer must point before itself (as dnspython requires), so every
    chain of pointers ends.
    """
    labels: list[bytes] = []
    size = 1
    end = -1
    while True:
        if at >= len(wire):
            raise WireError("a name runs past the end of the message")
        count = wire[at]
        if count >= 0xC0:
            if at + 1 >= len(wire):
                raise WireError("a compression pointer runs past the end of the message")
            target = ((count & 0x3F) << 8) | wire[at + 1]
            if target >= at:
                raise WireError("a compression pointer does not point back")
            if end < 0:
                end = at + 2
            at = target
            continue
        if count >= 0x40:
            raise WireError(f"unknown label type {count >> 6:#x}")
        if count == 0:
            return b"".join(labels).lower(), end if end >= 0 else at + 1
        size += count + 1
        if size > MAX_NAME:
            raise WireError("a name is longer than 255 bytes")
        label = wire[at : at + 1 + count]
        if len(label) != count + 1:
            raise WireError("a label runs past the end of the message")
        labels.append(label)
        at += count + 1


def _records(wire: bytes, at: int, count: int) -> tuple[list[WireRecord], int]:
    found = []
    for _ in range(count):
        owner, at = read_name(wire, at)
        try:
            rdtype, rdclass, ttl, length = _RR.unpack_from(wire, at)
        except struct.error:
            raise WireError("a record runs past the end of the message") from None
        at += _RR.size
        if at + length > len(wire):
            raise WireError("a record's data runs past the end of the message")
        found.append(WireRecord(owner, rdtype, rdclass, ttl, at, length))
        at += length
    return found, at


def read_response(wire: bytes) -> Response:
    """The header and the answer section of ``wire``; ``WireError`` if malformed."""
    if len(wire) < 12:
        raise WireError("shorter than a DNS header")
    questions, answers, authority, additional = struct.unpack_from("!HHHH", wire, 4)
    at = 12
    for _ in range(questions):
        _owner, at = read_name(wire, at)
        at += 4
        if at > len(wire):
            raise WireError("a question runs past the end of the message")
    answer, at = _records(wire, at, answers)
    _authority, at = _records(wire, at, authority)
    extra, at = _records(wire, at, additional)
    rcode = wire[3] & 0x0F
    for record in extra:
        if record.rdtype == TYPE_OPT:
            # The upper bits of the response code: the TTL's top byte.
            rcode |= (record.ttl >> 24) << 4
    return Response(rcode, bool(wire[2] & 0x02), tuple(answer))
