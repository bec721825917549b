"""Before an order: would the CA's HTTP-01 check reach us, and may it issue?

The same judgements as `check` (``check.judge``, ``records``), through the
same resolver client, so a name `check` passes is one `certs` orders and
the other way round; only the wording is `certs`' own.
"""

from __future__ import annotations

import asyncio

from policy_host.certs.certificate import CertsError
from policy_host.check import judge
from policy_host.check.dnsclient import DnsClient, Lookup, system_servers
from policy_host.read.config import ProviderConfig
from policy_host.records import AcmeIdentity, caa_properties, judge_caa

# certs asks about one name at a time.
CONCURRENCY = 4


def make_lookup(config: ProviderConfig) -> DnsClient:
    """A client of ``dns.resolver`` from the config, else of the system's resolvers."""
    if config.dns.resolver is not None:
        servers = [config.dns.resolver]
    else:
        try:
            servers = system_servers()
        except ValueError as exc:
            raise CertsError(f"{exc}; set dns.resolver in the config") from None
    return DnsClient(servers, timeout=config.dns.timeout, concurrency=CONCURRENCY)


def order_problem(lookup: Lookup, host: str, target: str, us: AcmeIdentity) -> str | None:
    """Why an order for ``host`` would fail (None when it should not)."""
    return asyncio.run(_order_problem(lookup, host, target, us))


async def _order_problem(lookup: Lookup, host: str, target: str, us: AcmeIdentity) -> str | None:
    problem = await host_problem(lookup, host, target)
    if problem is None:
        problem = await caa_problem(lookup, host, us)
    return problem


async def host_problem(lookup: Lookup, host: str, target: str) -> str | None:
    """Why ``host`` does not lead to ``target`` (None when it does)."""
    answer = await judge.resolve(lookup, host, "A")
    state = judge.host_state(answer, target)
    if state == judge.HOST_FAILED:
        return f"DNS error looking up {host}: {answer.detail or answer.status}"
    if state == judge.HOST_NXDOMAIN:
        return f"{host} does not exist (NXDOMAIN); the customer has not added its CNAME yet"
    if state in (judge.HOST_NO_CNAME, judge.HOST_ADDRESSES):
        return f"{host} is not a CNAME (expected one to {target})"
    if state == judge.HOST_ELSEWHERE:
        return f"{host} is a CNAME to {' -> '.join(answer.chain)}, not to {target}"
    if state == judge.HOST_NO_ADDRESS:
        return (
            f"{host} leads to {target}, but {answer.final_name} has no address, "
            "so the CA cannot reach us"
        )
    return None


async def caa_problem(lookup: Lookup, host: str, us: AcmeIdentity) -> str | None:
    """Why CAA (RFC 8659, RFC 8657) stops every CA in ``us.issuers`` from
    issuing for ``host`` by HTTP-01 with our account. A lookup error is a
    reason too: a CA must not issue then either."""
    found = await judge.relevant_caa(lookup, host)
    answer = found.answer
    if answer is None:
        return None
    if answer.failed:
        return f"DNS error looking up CAA at {found.name}: {answer.detail or answer.status}"
    verdict = judge_caa(caa_properties(answer.records), us)
    if verdict.allowed:
        return None
    if verdict.critical_tag is not None:
        return f"CAA at {found.name} has an unknown critical property {verdict.critical_tag!r}"
    where = f"{found.name} (via {answer.final_name})" if answer.chain else found.name
    shown = ", ".join(sorted({entry or "nobody" for entry in verdict.entries}))
    return f"CAA at {where} allows only {shown}, not {', '.join(us.issuers)}{verdict.shortfall}"
