"""A tiny HTTP/1.x client on raw sockets (plain or TLS), for hostile requests.

The request bytes are exactly what the caller gives (client libraries
normalise or refuse odd hosts and targets); the reply is read until the
server closes the connection or its declared body is complete, within a
deadline. Also: a raw TLS ClientHello with any SNI bytes at all, to see
whether a server accepts the handshake for that name.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import itertools
import os
import re
import socket
import ssl
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "NoReplyError",
    "Reply",
    "SourceAddresses",
    "connect",
    "connect_unix",
    "exchange",
    "parse_reply",
    "request_bytes",
    "sni_accepted",
]

IO_TIMEOUT = 5.0


class NoReplyError(ConnectionError):
    """The server closed the connection (or timed out) without a complete reply.

    ``empty``: it closed without sending a single byte (on a reused
    keep-alive connection, a server may do that to a request it never
    started on, and the client retries; RFC 9112 section 9.3.1).
    """

    def __init__(self, message: str, *, empty: bool = False) -> None:
        super().__init__(message)
        self.empty = empty


@dataclass(frozen=True)
class Reply:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        values = [value for key, value in self.headers if key.lower() == name.lower()]
        return values[0] if values else None


def request_bytes(
    target: bytes | str,
    host: bytes | str | None,
    *,
    method: str = "GET",
    extra: Sequence[bytes] = (),
    close: bool = True,
) -> bytes:
    """``METHOD target HTTP/1.1`` with a Host header (None: none at all)."""
    as_bytes = target.encode("utf-8") if isinstance(target, str) else target
    lines = [method.encode("ascii") + b" " + as_bytes + b" HTTP/1.1"]
    if host is not None:
        lines.append(b"Host: " + (host.encode("utf-8") if isinstance(host, str) else host))
    lines.extend(extra)
    if close:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


_STATUS = re.compile(rb"HTTP/1\.[01] ([0-9]{3})(?: [^\r\n]*)?")


def parse_reply(data: bytes, *, head_only: bool = False) -> Reply | None:
    """The reply in ``data`` if it is complete, else None."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        return None
    status_line, *header_lines = head.split(b"\r\n")
    match = _STATUS.fullmatch(status_line)
    if match is None:
        raise NoReplyError(f"bad status line: {status_line[:100]!r}")
    headers = []
    for line in header_lines:
        name, colon, value = line.partition(b":")
        if not colon:
            raise NoReplyError(f"bad header line: {line[:100]!r}")
        headers.append((name.strip().decode("latin-1"), value.strip().decode("latin-1")))
    reply = Reply(int(match.group(1)), tuple(headers), rest)
    if head_only or reply.status in (204, 304):
        return Reply(reply.status, reply.headers, b"")
    length = reply.header("Content-Length")
    if length is not None and length.isdigit():
        if len(rest) < int(length):
            return None
        return Reply(reply.status, reply.headers, rest[: int(length)])
    return None  # read to the end


def exchange(
    sock: socket.socket | ssl.SSLSocket,
    request: bytes,
    *,
    timeout: float = IO_TIMEOUT,
    head_only: bool = False,
) -> Reply:
    """Send ``request`` on ``sock`` and read one reply."""
    deadline = time.monotonic() + timeout
    sock.settimeout(timeout)
    sock.sendall(request)
    data = bytearray()
    while True:
        reply = parse_reply(bytes(data), head_only=head_only)
        if reply is not None:
            return reply
        if time.monotonic() > deadline:
            raise NoReplyError(f"no complete reply after {timeout}s: {bytes(data[:200])!r}")
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError) as exc:
            chunk = b""
            if not data:
                raise NoReplyError(f"connection failed: {exc!r}", empty=True) from exc
        if not chunk:
            head, sep, body = bytes(data).partition(b"\r\n\r\n")
            if not sep:
                raise NoReplyError(f"closed without a reply: {bytes(data[:200])!r}", empty=not data)
            final = parse_reply(head + sep, head_only=True)
            assert final is not None
            return Reply(final.status, final.headers, body)
        data += chunk


class SourceAddresses:
    """Loopback source addresses handed out round robin (127.0.N.M), so that
    many requests from one test look like many clients to per-address
    limits (nginx's limit_req and limit_conn), as real senders are."""

    def __init__(self, count: int = 500, base: int = 16) -> None:
        self.addresses = [f"127.0.{base + n // 250}.{1 + n % 250}" for n in range(count)]
        self._next = itertools.cycle(self.addresses)
        self._lock = threading.Lock()

    def next(self) -> str:
        with self._lock:
            return next(self._next)


def connect(
    port: int,
    *,
    host: str = "127.0.0.1",
    source: str | None = None,
    timeout: float = IO_TIMEOUT,
) -> socket.socket:
    sock = socket.create_connection(
        (host, port), timeout=timeout, source_address=(source, 0) if source else None
    )
    # Small writes go out at once (no Nagle wait on the TLS handshake).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def connect_unix(path: Path | str, *, timeout: float = IO_TIMEOUT) -> socket.socket:
    """A connection to a unix socket (gunicorn's, behind nginx)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        raise
    return sock


# -- a raw ClientHello --------------------------------------------------------


def _client_hello(sni: bytes | None) -> bytes:
    def ext(kind: int, body: bytes) -> bytes:
        return struct.pack("!HH", kind, len(body)) + body

    extensions = b""
    if sni is not None:
        entry = b"\x00" + struct.pack("!H", len(sni)) + sni
        extensions += ext(0x0000, struct.pack("!H", len(entry)) + entry)
    extensions += ext(0x000A, b"\x00\x04\x00\x1d\x00\x17")  # x25519, secp256r1
    extensions += ext(0x000B, b"\x01\x00")  # uncompressed points
    extensions += ext(0x000D, b"\x00\x06\x04\x03\x08\x04\x04\x01")  # ECDSA, PSS, RSA
    suites = b"\xc0\x2b\xc0\x2f\xc0\x2c\xc0\x30"  # ECDHE AES-GCM
    body = (
        b"\x03\x03"
        + os.urandom(32)
        + b"\x00"
        + struct.pack("!H", len(suites))
        + suites
        + b"\x01\x00"
        + struct.pack("!H", len(extensions))
        + extensions
    )
    handshake = b"\x01" + struct.pack("!I", len(body))[1:] + body
    return b"\x16\x03\x01" + struct.pack("!H", len(handshake)) + handshake


def sni_accepted(
    port: int, sni: bytes | None, *, source: str | None = None, timeout: float = IO_TIMEOUT
) -> bool:
    """Send a TLS 1.2 ClientHello with ``sni`` (any bytes); True when the
    server answers with a handshake record (ServerHello), False for an
    alert or a closed connection."""
    with connect(port, source=source, timeout=timeout) as sock:
        sock.sendall(_client_hello(sni))
        first = b""
        try:
            while len(first) < 1:
                chunk = sock.recv(1)
                if not chunk:
                    return False
                first += chunk
        except ConnectionResetError:
            return False
        return first[0] == 0x16
