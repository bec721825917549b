"""Report bytes as sent -> JSON bytes, within size caps.

Every reader streams: a compressed body is inflated a piece at a time with
an output limit, so a gzip bomb never allocates more than the cap, and an
over-long body is refused after reading one byte past it.
"""

from __future__ import annotations

import functools
import os
import zlib
from collections.abc import Callable
from typing import IO

from policy_host.errors import PolicyHostError

GZIP_MAGIC = b"\x1f\x8b"
CHUNK = 64 * 1024


class TooLarge(PolicyHostError):
    """A body or its decompressed report is over the configured cap."""


class BadPayload(PolicyHostError):
    """The body is neither gzip nor something that could be JSON."""


def read_capped(stream: IO[bytes], cap: int, what: str = "body") -> bytes:
    """At most ``cap`` bytes from ``stream``; ``TooLarge`` if there are more."""
    return _capped(stream.read, cap, what)


def read_file(path: str, cap: int) -> bytes:
    """A file's bytes, at most ``cap``; ``TooLarge`` if there are more.
    The bare system calls: a day's batch reads tens of thousands of small
    files, and a buffered file object costs more than the read itself
    (docs/performance.md). ``OSError`` passes through."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return _capped(functools.partial(os.read, fd), cap, path)
    finally:
        os.close(fd)


def _capped(read: Callable[[int], bytes], cap: int, what: str) -> bytes:
    """What ``read(n)`` gives until it gives nothing, at most ``cap`` bytes;
    ``TooLarge`` after reading one byte past it."""
    parts: list[bytes] = []
    size = 0
    while chunk := read(min(CHUNK, cap + 1 - size)):
        parts.append(chunk)
        size += len(chunk)
        if size > cap:
            raise TooLarge(f"{what} is larger than {cap} bytes")
    return parts[0] if len(parts) == 1 else b"".join(parts)


def inflate(data: bytes, cap: int) -> bytes:
    """The gzip member(s) in ``data`` decompressed, at most ``cap`` bytes."""
    out: list[bytes] = []
    size = 0
    rest = data
    while rest:
        # wbits 16+MAX_WBITS: gzip header and trailer. A concatenation of
        # members is valid gzip (RFC 1952 section 2.2), hence the loop.
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        pending = rest
        while pending and not inflater.eof:
            try:
                piece = inflater.decompress(pending, CHUNK)
            except zlib.error as exc:
                raise BadPayload(f"gzip data is corrupt: {exc}") from None
            size += len(piece)
            if size > cap:
                raise TooLarge(f"decompressed report is larger than {cap} bytes")
            out.append(piece)
            pending = inflater.unconsumed_tail
        if not inflater.eof:
            raise BadPayload("gzip data is truncated")
        rest = inflater.unused_data.lstrip(b"\0")
        if rest and not rest.startswith(GZIP_MAGIC):
            raise BadPayload("data after the gzip stream")
    return b"".join(out)


def report_json(data: bytes, cap: int) -> tuple[bytes, tuple[str, ...]]:
    """Body of an ``application/tlsrpt+gzip`` or ``+json`` -> JSON bytes.

    The content is judged by its first bytes, not by what the sender labelled
    it: real senders post plain JSON as ``+gzip`` and gzip as
    ``application/octet-stream``. Returns the quirks seen.
    """
    if data.startswith(GZIP_MAGIC):
        return inflate(data, cap), ()
    if len(data) > cap:
        raise TooLarge(f"report is larger than {cap} bytes")
    start = data.lstrip(b" \t\r\n\xef\xbb\xbf")[:1]
    if start != b"{":
        raise BadPayload("neither gzip nor a JSON object")
    return data, ()
