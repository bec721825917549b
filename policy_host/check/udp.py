"""Queries on the wire: the bytes of a recursive query, whether an answer
belongs to it, and ``UdpChannel``, one connected UDP socket carrying many
queries at once.

Queries share a few UDP sockets per resolver instead of opening one per
query: a socket and its asyncio endpoint cost more than the query itself.
An answer is matched to its query by message ID and question, as
``dns.query`` does.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import cast

import dns.name
import dns.rcode
import dns.rdatatype

# A resolver's address and port.
Server = tuple[str, int]
# DNS flag day 2020: an EDNS buffer that avoids IP fragmentation.
EDNS_PAYLOAD = 1232

# The EDNS OPT record every query carries: root name, type OPT, our payload
# size as its class, no extended flags, no options (RFC 6891 section 6.1.2).
_OPT = b"\x00\x00\x29" + EDNS_PAYLOAD.to_bytes(2, "big") + b"\x00" * 6
# Header after the ID: RD set; one question, no answer or authority, one OPT.
_HEADER_REST = b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x01"
# Answers that may come without the question (dnspython's is_response).
_BARE_RCODES = frozenset(
    {dns.rcode.FORMERR, dns.rcode.SERVFAIL, dns.rcode.NOTIMP, dns.rcode.REFUSED}
)


def question_wire(name: dns.name.Name, rdtype: str) -> bytes:
    """The question section for ``name``/``rdtype``, class IN, lower case."""
    code = dns.rdatatype.from_text(rdtype)
    wire = name.to_wire()
    assert wire is not None  # None only when writing to a file
    return wire.lower() + code.to_bytes(2, "big") + b"\x00\x01"


def query_wire(qid: int, question: bytes) -> bytes:
    """A recursive query with EDNS (payload ``EDNS_PAYLOAD``), as bytes."""
    return qid.to_bytes(2, "big") + _HEADER_REST + question + _OPT


def matches(data: bytes, question: bytes) -> bool:
    """Is ``data`` an answer to the query with ``question`` (ID already matched)?

    It must be a response (QR) to a standard query, carry the same question
    (names compared without regard to case), or, for the errors a server
    may send without one, no question at all.
    """
    if len(data) < 12 or not data[2] & 0x80 or data[2] & 0x78:
        return False
    count = int.from_bytes(data[4:6], "big")
    if count == 0:
        return data[3] & 0x0F in _BARE_RCODES
    return count == 1 and data[12 : 12 + len(question)].lower() == question


class UdpChannel(asyncio.DatagramProtocol):
    """One connected UDP socket to one resolver with many queries in flight."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: dict[int, tuple[bytes, asyncio.Future[bytes]]] = {}
        self.used = 0
        self.retired = False
        self._opening: asyncio.Task[object] | None = None

    async def open(self, server: Server) -> None:
        """Make the socket; queries that pick this channel meanwhile wait for it."""
        loop = asyncio.get_running_loop()
        self._opening = loop.create_task(
            loop.create_datagram_endpoint(lambda: self, remote_addr=server)
        )
        await self._opening

    async def opened(self) -> None:
        if self._opening is not None:
            await self._opening

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Python 3.11's selector transport is not a DatagramTransport subclass.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: object) -> None:
        if len(data) < 12:
            return
        entry = self.pending.get(int.from_bytes(data[:2], "big"))
        if entry is None or not matches(data, entry[0]):
            return  # late, unexpected or forged: the query keeps waiting
        future = entry[1]
        if not future.done():
            future.set_result(data)

    def error_received(self, exc: Exception) -> None:
        # A connected socket reports ICMP errors (port unreachable) without
        # saying which query caused them: they concern this resolver, so
        # every query waiting on it fails.
        self._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionError("socket closed"))

    def _fail(self, exc: Exception) -> None:
        for _question, future in self.pending.values():
            if not future.done():
                future.set_exception(exc)

    async def ask(self, question: bytes, timeout: float) -> bytes:
        """Send one query; its answer's bytes, or ``TimeoutError``."""
        assert self.transport is not None
        qid = secrets.randbits(16)
        while qid in self.pending:
            qid = secrets.randbits(16)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bytes] = loop.create_future()
        self.pending[qid] = (question, future)
        self.used += 1
        timer = loop.call_later(timeout, _expire, future)
        try:
            self.transport.sendto(query_wire(qid, question))
            return await future
        finally:
            timer.cancel()
            del self.pending[qid]
            if self.retired and not self.pending:
                self.transport.close()

    def close(self) -> None:
        self.retired = True
        if not self.pending and self.transport is not None:
            self.transport.close()


def _expire(future: asyncio.Future[bytes]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())
