"""Asking authoritative DNS servers directly: TXT records, SOA serials, the NS set.

Every query goes to one named server with recursion off (RD clear), so the
answer is that server's own copy of the zone, never a cache: what `apply`
needs to confirm a change at the primary and at each secondary (RFC 8461
section 8), and what `check` and `zone --servers` compare. Secondaries
follow the primary by NOTIFY (RFC 1996) and IXFR/AXFR (RFC 1995, RFC 5936);
the SOA serial says which version of the zone a server holds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver

from policy_host.errors import PolicyHostError
from policy_host.records import txt_bytes

if TYPE_CHECKING:
    from policy_host.read.config import ProviderConfig

# RFC 1982 section 3.2: serials are compared in a 32-bit circle.
SERIAL_BITS = 32
DNS_PORT = 53

Server = tuple[str, int]
# A host name -> its addresses (A and AAAA), through a recursive resolver.
Resolve = Callable[[str], list[str]]


class AuthDnsError(PolicyHostError):
    """An authoritative server did not answer, or not as one should."""


def ask(server: Server, name: str, rdtype: str, timeout: float) -> dns.message.Message:
    """One non-recursive query to ``server`` (UDP, then TCP when truncated)."""
    address, port = server
    query = dns.message.make_query(name, rdtype)
    query.flags &= ~dns.flags.RD  # the server's own data, no recursion
    try:
        response = dns.query.udp(query, address, timeout=timeout, port=port)
        if response.flags & dns.flags.TC:
            response = dns.query.tcp(query, address, timeout=timeout, port=port)
    except (dns.exception.DNSException, OSError) as exc:
        raise AuthDnsError(f"no answer to {name} {rdtype}: {exc}") from exc
    return response


def txt_values(response: dns.message.Message, name: str) -> list[bytes]:
    """The TXT records at ``name`` in an answer, each with its strings joined."""
    qname = dns.name.from_text(name)
    values: list[bytes] = []
    for rrset in response.answer:
        if rrset.name == qname and rrset.rdtype == dns.rdatatype.TXT:
            values.extend(txt_bytes(rdata) for rdata in rrset)
    return values


def serial_behind(serial: int, reference: int) -> bool:
    """Is ``serial`` older than ``reference`` (RFC 1982 section 3.2)?"""
    half = 1 << (SERIAL_BITS - 1)
    return serial != reference and (reference - serial) % (1 << SERIAL_BITS) < half


@dataclass(frozen=True)
class Nameserver:
    """One authoritative server, asked directly; ``name`` from the NS set
    when it came from there."""

    server: Server
    timeout: float
    name: str | None = None
    primary: bool = False

    @property
    def label(self) -> str:
        address, port = self.server
        where = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        role = "primary " if self.primary else ""
        return f"{role}{self.name} ({where})" if self.name else f"{role}{where}"

    def _ask(self, name: str, rdtype: str) -> dns.message.Message:
        try:
            response = ask(self.server, name, rdtype, self.timeout)
        except AuthDnsError as exc:
            raise AuthDnsError(f"{self.label}: {exc}") from exc
        rcode = response.rcode()
        if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            text = dns.rcode.to_text(rcode)
            raise AuthDnsError(f"{self.label} answers {text} for {name} {rdtype}")
        if rcode == dns.rcode.NOERROR and not response.flags & dns.flags.AA:
            raise AuthDnsError(f"{self.label} is not authoritative for {name}")
        return response

    def txt(self, name: str) -> list[bytes]:
        """The TXT records at ``name`` on this server."""
        return txt_values(self._ask(name, "TXT"), name)

    def serial(self, zone: str) -> int:
        """The SOA serial of ``zone`` (its apex, absolute) on this server."""
        response = self._ask(zone, "SOA")
        apex = dns.name.from_text(zone)
        for rrset in response.answer:
            if rrset.name == apex and rrset.rdtype == dns.rdatatype.SOA:
                serial: int = rrset[0].serial
                return serial
        raise AuthDnsError(f"{self.label} has no SOA for {zone}")

    def apex(self, name: str) -> str:
        """The zone ``name`` belongs to on this server (the SOA's owner)."""
        response = self._ask(name, "SOA")
        for section in (response.answer, response.authority):
            for rrset in section:
                if rrset.rdtype == dns.rdatatype.SOA:
                    return str(rrset.name)
        raise AuthDnsError(f"{self.label} is not authoritative for {name} (no SOA)")

    def ns_names(self, zone: str) -> list[str]:
        """The zone's NS set as this server holds it."""
        response = self._ask(zone, "NS")
        apex = dns.name.from_text(zone)
        return sorted(
            {
                rdata.target.to_text()
                for rrset in response.answer
                if rrset.name == apex and rrset.rdtype == dns.rdatatype.NS
                for rdata in rrset
            }
        )

    def addresses(self, name: str) -> list[str]:
        """``name``'s A and AAAA records on this server (empty when it is
        not authoritative for them)."""
        found: list[str] = []
        for rdtype in ("A", "AAAA"):
            try:
                response = self._ask(name, rdtype)
            except AuthDnsError:
                return []
            qname = dns.name.from_text(name)
            found += [
                rdata.address
                for rrset in response.answer
                if rrset.name == qname and rrset.rdtype == dns.rdatatype.from_text(rdtype)
                for rdata in rrset
            ]
        return found


def recursive_resolve(servers: Sequence[Server], timeout: float) -> Resolve:
    """A ``Resolve`` through the given recursive resolvers (empty: the system's)."""

    def resolve(name: str) -> list[str]:
        resolver = dns.resolver.Resolver(configure=not servers)
        if servers:
            resolver.nameservers = [address for address, _ in servers]
            resolver.port = servers[0][1]
        resolver.lifetime = timeout
        found: list[str] = []
        for rdtype in ("A", "AAAA"):
            try:
                found += [r.to_text() for r in resolver.resolve(name, rdtype)]
            except dns.exception.DNSException:
                continue
        return found

    return resolve


def ns_servers(
    primary: Nameserver, zone: str, resolve: Resolve, *, port: int = DNS_PORT
) -> list[Nameserver]:
    """Every address of every name in ``zone``'s NS set (as the primary
    holds it): in-zone names from the primary itself, others through
    ``resolve``. A name with no address is an error: a sender's resolver
    could not reach it either, and its copy could not be confirmed."""
    found: list[Nameserver] = []
    for name in primary.ns_names(zone):
        addresses = primary.addresses(name) or resolve(name)
        if not addresses:
            raise AuthDnsError(f"{zone} NS {name}: the name has no address")
        found += [Nameserver((a, port), primary.timeout, name.rstrip(".")) for a in addresses]
    if not found:
        raise AuthDnsError(f"{primary.label} holds no NS records for {zone}")
    return found


def authoritative_servers(
    primary: Nameserver,
    zone: str,
    *,
    listed: Sequence[Server],
    from_ns: bool,
    resolve: Resolve,
    port: int = DNS_PORT,
) -> list[Nameserver]:
    """The servers to confirm a change of ``zone`` at: the primary first,
    then the listed ones or the NS set's (the primary's own address once)."""
    others = (
        ns_servers(primary, zone, resolve, port=port)
        if from_ns
        else [Nameserver(server, primary.timeout) for server in listed]
    )
    seen = {primary.server}
    servers = [primary]
    for other in others:
        if other.server not in seen:
            seen.add(other.server)
            servers.append(other)
    return servers


def configured_servers(config: ProviderConfig) -> Callable[[str], list[Nameserver]] | None:
    """zone apex -> the servers the config names for it (``authoritative``):
    the primary first, then the listed servers or the zone's NS set; None
    when there is no primary or nothing besides it is to be asked."""
    settings = config.authoritative
    if config.dns.primary is None or not settings.configured:
        return None
    primary = Nameserver(config.dns.primary, config.dns.timeout, primary=True)
    resolvers = [config.dns.resolver] if config.dns.resolver is not None else []
    resolve = recursive_resolve(resolvers, config.dns.timeout)

    def find(zone: str) -> list[Nameserver]:
        return authoritative_servers(
            primary, zone, listed=settings.servers, from_ns=settings.from_ns, resolve=resolve
        )

    return find
