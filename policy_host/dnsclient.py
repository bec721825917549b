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
import dns.rdatatype
import dns.rdtypes.ANY.CNAME
import dns.resolver

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
    response: dns.message.Message,
    qname: dns.name.Name | None = None,
) -> DnsAnswer:
    """Turn a recursive resolver's response into a ``DnsAnswer``.

    Follows the CNAME chain in the answer section from ``name`` (a resolver
    puts the whole chain there), so an NXDOMAIN whose answer section holds a
    CNAME says "the CNAME exists, its target does not".
    """
    rcode = response.rcode()
    if rcode == dns.rcode.SERVFAIL:
        return DnsAnswer(name, rdtype, SERVFAIL, detail="the resolver answered SERVFAIL")
    if rcode == dns.rcode.REFUSED:
        return DnsAnswer(name, rdtype, REFUSED, detail="the resolver refused the query")
    if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        text = dns.rcode.to_text(rcode)
        return DnsAnswer(name, rdtype, ERROR, detail=f"the resolver answered {text}")
    wanted = dns.rdatatype.from_text(rdtype)
    current = qname if qname is not None else dns.name.from_text(name)
    seen = {current}
    chain: list[str] = []
    records: tuple[dns.rdata.Rdata, ...] = ()
    while True:
        found = _rrset(response, current, wanted)
        if found is not None:
            records = tuple(found)
            break
        cname = _rrset(response, current, dns.rdatatype.CNAME)
        if cname is None or wanted == dns.rdatatype.CNAME:
            break
        target = cname_target(cname[0])
        if target is None:
            break
        chain.append(text_of(target))
        if target in seen or len(chain) > MAX_CHAIN:
            shown = " -> ".join([name, *chain])
            return DnsAnswer(name, rdtype, LOOP, tuple(chain), detail=f"CNAME loop: {shown}")
        seen.add(target)
        current = target
    if records:
        status = OK
    elif rcode == dns.rcode.NXDOMAIN:
        status = NXDOMAIN
    else:
        status = NODATA
    return DnsAnswer(name, rdtype, status, tuple(chain), records)


def cname_target(rdata: dns.rdata.Rdata) -> dns.name.Name | None:
    if isinstance(rdata, dns.rdtypes.ANY.CNAME.CNAME):
        target: dns.name.Name = rdata.target
        return target
    return None


def _rrset(
    response: dns.message.Message, name: dns.name.Name, rdtype: dns.rdatatype.RdataType
) -> list[dns.rdata.Rdata] | None:
    for rrset in response.answer:
        if rrset.name == name and rrset.rdtype == rdtype and len(rrset) > 0:
            return list(rrset)
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

    async def lookup(self, name: str, rdtype: str) -> DnsAnswer:
        query = dns.message.make_query(name, rdtype, use_edns=0, payload=EDNS_PAYLOAD)
        attempts = [server for _ in range(2) for server in self.servers]
        per_try = self.timeout / len(attempts)
        last = DnsAnswer(name, rdtype, TIMEOUT, detail=f"no answer within {self.timeout:g} s")
        async with self.semaphore:
            for address, port in attempts:
                self.queries += 1
                answer = await self._ask(query, name, rdtype, address, port, per_try)
                if answer.status in ANSWERED or answer.status in (LOOP, TRUNCATED):
                    return answer
                if answer.status != TIMEOUT:
                    last = answer
        return last

    async def _ask(
        self,
        query: dns.message.Message,
        name: str,
        rdtype: str,
        address: str,
        port: int,
        timeout: float,
    ) -> DnsAnswer:
        try:
            response = await dns.asyncquery.udp(query, address, timeout=timeout, port=port)
        except dns.exception.Timeout:
            return DnsAnswer(name, rdtype, TIMEOUT, detail=f"no answer within {self.timeout:g} s")
        except (dns.exception.DNSException, OSError, ValueError) as exc:
            return DnsAnswer(name, rdtype, ERROR, detail=f"{address}:{port}: {_reason(exc)}")
        if response.flags & dns.flags.TC:
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
        return interpret(name, rdtype, response, query.question[0].name)


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
