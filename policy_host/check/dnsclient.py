"""Ask a recursive resolver, asynchronously, and say plainly what it answered.

``DnsClient.lookup`` sends one query (UDP, then TCP if the answer was
truncated) to the configured recursive resolver(s) through
``dns.asyncquery`` and turns the response into a ``DnsAnswer``: the CNAME
chain followed, the records found at its end, and a status that is either an
outcome (``ok``, ``nodata``, ``nxdomain``) or a failure (``timeout``,
``servfail``, ``refused``, ``truncated``, ``loop``, ``error``). It never
raises for anything the network or the resolver does, and it caches nothing:
every lookup is a fresh query, so a monitoring run sees DNS as it is now.

The number of queries in flight is bounded by a semaphore (``concurrency``).

Queries share a few UDP sockets per resolver (``UdpChannel``) instead of
opening one per query: a socket and its asyncio endpoint cost more than the
query itself. An answer is matched to its query by message ID and question,
as ``dns.query`` does; each socket is replaced after ``CHANNEL_QUERIES``
queries, and every socket is closed as soon as no query is in flight, so
the source ports keep changing and nothing is left open between runs.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, cast

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.CNAME
import dns.resolver

from policy_host.check import wire as dnswire

log = logging.getLogger(__name__)

# RFC 1034 resolvers limit CNAME chains; dnspython and unbound stop near here.
MAX_CHAIN = 16
# DNS flag day 2020: an EDNS buffer that avoids IP fragmentation.
EDNS_PAYLOAD = 1232

OK = "ok"
NODATA = "nodata"
NXDOMAIN = "nxdomain"
TIMEOUT = "timeout"
SERVFAIL = "servfail"
REFUSED = "refused"
TRUNCATED = "truncated"
LOOP = "loop"
ERROR = "error"
# Statuses that are an answer from DNS (as opposed to a failure to get one).
ANSWERED = frozenset({OK, NODATA, NXDOMAIN})

Server = tuple[str, int]

# Sockets per resolver, and queries each one carries before it is replaced.
CHANNELS = 8
CHANNEL_QUERIES = 256
# The EDNS OPT record every query carries: root name, type OPT, our payload
# size as its class, no extended flags, no options (RFC 6891 section 6.1.2).
_OPT = b"\x00\x00\x29" + EDNS_PAYLOAD.to_bytes(2, "big") + b"\x00" * 6
# Header after the ID: RD set; one question, no answer or authority, one OPT.
_HEADER_REST = b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x01"
# Answers that may come without the question (dnspython's is_response).
_BARE_RCODES = frozenset(
    {dns.rcode.FORMERR, dns.rcode.SERVFAIL, dns.rcode.NOTIMP, dns.rcode.REFUSED}
)


def text_of(name: dns.name.Name) -> str:
    """A name as lower-case text without the final dot."""
    return name.to_text(omit_final_dot=True).lower()


@dataclass(frozen=True)
class DnsAnswer:
    """What the resolver said about ``name``/``rdtype``.

    ``chain`` lists the CNAME targets followed from ``name`` in order (empty
    when ``name`` itself holds the records or does not exist); ``records``
    are the ``rdtype`` records at the end of the chain. ``detail`` explains a
    failure for a person.
    """

    name: str
    rdtype: str
    status: str
    chain: tuple[str, ...] = ()
    records: tuple[dns.rdata.Rdata, ...] = ()
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.status not in ANSWERED

    @property
    def final_name(self) -> str:
        return self.chain[-1] if self.chain else self.name

    def describe(self) -> str:
        """One phrase for a person: ``mta-sts.example.com A: timed out ...``."""
        return f"{self.name} {self.rdtype}: {self.detail or self.status}"


class Lookup(Protocol):
    """Anything that can answer ``lookup(name, rdtype)`` (tests pass fakes)."""

    async def lookup(self, name: str, rdtype: str) -> DnsAnswer: ...


def interpret(
    name: str,
    rdtype: str,
    response: bytes | dns.message.Message,
    qname: dns.name.Name | None = None,
) -> DnsAnswer:
    """Turn a recursive resolver's response (its bytes) into a ``DnsAnswer``.

    Follows the CNAME chain in the answer section from ``name`` (a resolver
    puts the whole chain there), so an NXDOMAIN whose answer section holds a
    CNAME says "the CNAME exists, its target does not". Only the records
    used are built (``dnswire``).
    """
    wire = response.to_wire() if isinstance(response, dns.message.Message) else response
    try:
        return _interpret(name, rdtype, wire, qname)
    except (dnswire.WireError, dns.exception.DNSException, ValueError) as exc:
        detail = f"the resolver's answer could not be read ({_reason(exc)})"
        return DnsAnswer(name, rdtype, ERROR, detail=detail)


def _interpret(name: str, rdtype: str, wire: bytes, qname: dns.name.Name | None) -> DnsAnswer:
    reading = dnswire.read_response(wire)
    rcode = reading.rcode
    if rcode == dns.rcode.SERVFAIL:
        return DnsAnswer(name, rdtype, SERVFAIL, detail="the resolver answered SERVFAIL")
    if rcode == dns.rcode.REFUSED:
        return DnsAnswer(name, rdtype, REFUSED, detail="the resolver refused the query")
    if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        text = dns.rcode.to_text(dns.rcode.Rcode.make(rcode))
        return DnsAnswer(name, rdtype, ERROR, detail=f"the resolver answered {text}")
    wanted = dns.rdatatype.from_text(rdtype)
    current = dnswire.name_key(qname if qname is not None else dns.name.from_text(name))
    seen = {current}
    chain: list[str] = []
    records: tuple[dns.rdata.Rdata, ...] = ()
    while True:
        found = _build(wire, reading, current, wanted)
        if found:
            records = found
            break
        if wanted == dns.rdatatype.CNAME:
            break
        cnames = _build(wire, reading, current, dns.rdatatype.CNAME)
        target = cname_target(cnames[0]) if cnames else None
        if target is None:
            break
        chain.append(text_of(target))
        key = dnswire.name_key(target)
        if key in seen or len(chain) > MAX_CHAIN:
            shown = " -> ".join([name, *chain])
            return DnsAnswer(name, rdtype, LOOP, tuple(chain), detail=f"CNAME loop: {shown}")
        seen.add(key)
        current = key
    if records:
        status = OK
    elif rcode == dns.rcode.NXDOMAIN:
        status = NXDOMAIN
    else:
        status = NODATA
    return DnsAnswer(name, rdtype, status, tuple(chain), records)


def _build(
    wire: bytes, reading: dnswire.Response, owner: bytes, rdtype: dns.rdatatype.RdataType
) -> tuple[dns.rdata.Rdata, ...]:
    """The answer records of class IN at ``owner`` of ``rdtype``, built.

    An RRset has no order, and resolvers rotate it: sorted (and without
    repeats), the same records always read the same.
    """
    built = [
        dns.rdata.from_wire(dns.rdataclass.IN, rdtype, wire, r.start, r.length)
        for r in reading.answer
        if r.owner == owner and r.rdtype == rdtype and r.rdclass == dnswire.CLASS_IN
    ]
    if rdtype == dns.rdatatype.CNAME:
        # One CNAME per name (RFC 2181 section 10.1); of several, the last
        # counts, as in dnspython.
        return tuple(built[-1:])
    if len(built) < 2:
        return tuple(built)
    return tuple(sorted({str(r): r for r in built}.values(), key=str))


def cname_target(rdata: dns.rdata.Rdata) -> dns.name.Name | None:
    if isinstance(rdata, dns.rdtypes.ANY.CNAME.CNAME):
        target: dns.name.Name = rdata.target
        return target
    return None


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


@dataclass
class DnsClient:
    """Queries to recursive resolvers, at most ``concurrency`` in flight.

    Each lookup tries every server in turn, twice, within ``timeout``
    seconds in all; SERVFAIL and REFUSED move on to the next server.
    """

    servers: Sequence[Server]
    timeout: float = 5.0
    concurrency: int = 100
    queries: int = field(default=0, init=False)
    _semaphore: asyncio.Semaphore | None = field(default=None, init=False, repr=False)
    _channels: dict[Server, list[UdpChannel]] = field(default_factory=dict, init=False, repr=False)
    _turn: int = field(default=0, init=False, repr=False)
    _in_flight: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.servers:
            raise ValueError("at least one resolver is needed")
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")

    @property
    def semaphore(self) -> asyncio.Semaphore:
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.concurrency)
        return self._semaphore

    def take_share(self, parts: int) -> None:
        """In one of ``parts`` processes sharing a run: keep its part of the
        queries in flight, so that all of them together stay within
        ``concurrency``."""
        self.concurrency = max(1, self.concurrency // parts)
        self._semaphore = None
        self._channels = {}
        self._in_flight = 0

    async def lookup(self, name: str, rdtype: str) -> DnsAnswer:
        try:
            qname = dns.name.from_text(name)
            question = question_wire(qname, rdtype)
        except (dns.exception.DNSException, ValueError) as exc:
            return DnsAnswer(name, rdtype, ERROR, detail=f"cannot ask for {name}: {_reason(exc)}")
        attempts = [server for _ in range(2) for server in self.servers]
        per_try = self.timeout / len(attempts)
        last = DnsAnswer(name, rdtype, TIMEOUT, detail=f"no answer within {self.timeout:g} s")
        async with self.semaphore:
            self._in_flight += 1
            try:
                for server in attempts:
                    self.queries += 1
                    answer = await self._ask(qname, question, name, rdtype, server, per_try)
                    if answer.status in ANSWERED or answer.status in (LOOP, TRUNCATED):
                        return answer
                    if answer.status != TIMEOUT:
                        last = answer
            finally:
                self._in_flight -= 1
                if self._in_flight == 0:
                    self.close()
        return last

    def close(self) -> None:
        """Close every socket (those with queries in flight once they end)."""
        for channels in self._channels.values():
            for channel in channels:
                channel.close()
        self._channels.clear()

    async def _channel(self, server: Server) -> UdpChannel:
        """The next of the server's sockets in turn, opened on first use."""
        channels = self._channels.setdefault(server, [])
        self._turn = (self._turn + 1) % CHANNELS
        if self._turn < len(channels):
            channel = channels[self._turn]
            if channel.used < CHANNEL_QUERIES:
                await channel.opened()
                return channel
            channel.close()
            channels[self._turn] = channel = UdpChannel()
        else:
            channels.append(channel := UdpChannel())
        try:
            await channel.open(server)
        except OSError:
            if channel in channels:
                channels.remove(channel)
            raise
        return channel

    async def _ask(
        self,
        qname: dns.name.Name,
        question: bytes,
        name: str,
        rdtype: str,
        server: Server,
        timeout: float,
    ) -> DnsAnswer:
        address, port = server
        try:
            channel = await self._channel(server)
            wire = await channel.ask(question, timeout)
        except TimeoutError:
            return DnsAnswer(name, rdtype, TIMEOUT, detail=f"no answer within {self.timeout:g} s")
        except (dns.exception.DNSException, OSError, ValueError) as exc:
            return DnsAnswer(name, rdtype, ERROR, detail=f"{address}:{port}: {_reason(exc)}")
        if wire[2] & 0x02:  # TC: truncated
            query = dns.message.make_query(qname, rdtype, use_edns=0, payload=EDNS_PAYLOAD)
            try:
                response = await dns.asyncquery.tcp(query, address, timeout=timeout, port=port)
            except (dns.exception.DNSException, OSError, ValueError) as exc:
                return DnsAnswer(
                    name,
                    rdtype,
                    TRUNCATED,
                    detail=f"the answer was truncated and the retry over TCP failed "
                    f"({_reason(exc)})",
                )
            if response.flags & dns.flags.TC:
                return DnsAnswer(
                    name, rdtype, TRUNCATED, detail="the answer was truncated even over TCP"
                )
            return interpret(name, rdtype, response, qname)
        return interpret(name, rdtype, wire, qname)


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 200 else text[:197] + "..."


def system_servers() -> list[Server]:
    """The system's resolvers (``/etc/resolv.conf``); ``ValueError`` if none."""
    try:
        system = dns.resolver.Resolver(configure=True)
    except (dns.resolver.NoResolverConfiguration, OSError) as exc:
        raise ValueError(f"no system resolver configured ({exc})") from None
    servers = [(str(address), system.port) for address in system.nameservers]
    if not servers:
        raise ValueError("no system resolver configured")
    return servers
