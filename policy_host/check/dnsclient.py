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

Queries share a few UDP sockets per resolver (``udp.UdpChannel``); each
socket is replaced after ``CHANNEL_QUERIES`` queries, and every socket is
closed as soon as no query is in flight, so the source ports keep changing
and nothing is left open between runs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

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
from policy_host.check.udp import EDNS_PAYLOAD, Server, UdpChannel, question_wire

log = logging.getLogger(__name__)

# RFC 1034 resolvers limit CNAME chains; dnspython and unbound stop near here.
MAX_CHAIN = 16

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

# Sockets per resolver, and queries each one carries before it is replaced.
CHANNELS = 8
CHANNEL_QUERIES = 256


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
