"""The DNS judgements `check` and `certs` share, so both always agree:
does ``mta-sts.<domain>`` lead to our policy host, and which CAA set is
relevant for it (RFC 8659 section 3).

Each takes a ``Lookup`` (``DnsClient`` or a test's fake) and returns what
it found; the callers word their own messages.
"""

from __future__ import annotations

from dataclasses import dataclass

from policy_host.check import dnsclient
from policy_host.check.dnsclient import DnsAnswer, Lookup
from policy_host.records import caa_names, chain_reaches

# How many CNAME steps a loop diagnosis follows.
TRACE_LIMIT = 12

# What mta-sts.<domain> is, seen through a recursive resolver.
HOST_OK = "ok"
HOST_FAILED = "failed"  # no answer: timeout, SERVFAIL, loop, ...
HOST_NXDOMAIN = "nxdomain"
HOST_NO_CNAME = "no-cname"  # the name exists with neither CNAME nor address
HOST_ADDRESSES = "addresses"  # addresses of its own instead of a CNAME
HOST_ELSEWHERE = "elsewhere"  # a CNAME chain that never reaches the policy host
HOST_NO_ADDRESS = "no-address"  # reaches the policy host, which has no address


async def resolve(lookup: Lookup, name: str, rdtype: str) -> DnsAnswer:
    """``lookup.lookup``, and for a SERVFAIL, walk the CNAME chain one step
    at a time: a loop is the likely cause (resolvers answer SERVFAIL for
    one) and is worth saying as such."""
    answer = await lookup.lookup(name, rdtype)
    if answer.status != dnsclient.SERVFAIL:
        return answer
    current, chain, seen = answer.name, [], {answer.name}
    for _ in range(TRACE_LIMIT):
        step = await lookup.lookup(current, "CNAME")
        if step.status != dnsclient.OK or not step.records:
            return answer
        target = dnsclient.cname_target(step.records[0])
        if target is None:
            return answer
        current = dnsclient.text_of(target)
        chain.append(current)
        if current in seen:
            loop = " -> ".join([answer.name, *chain])
            return DnsAnswer(
                answer.name,
                answer.rdtype,
                dnsclient.LOOP,
                tuple(chain),
                detail=f"CNAME loop: {loop}",
            )
        seen.add(current)
    return answer


def host_state(answer: DnsAnswer, target: str) -> str:
    """Which ``HOST_*`` an A lookup of ``mta-sts.<domain>`` shows: the
    policy host must be reached through CNAMEs (``chain_reaches``)."""
    if answer.failed:
        return HOST_FAILED
    if not answer.chain:
        if answer.status == dnsclient.NXDOMAIN:
            return HOST_NXDOMAIN
        return HOST_NO_CNAME if answer.status == dnsclient.NODATA else HOST_ADDRESSES
    if not chain_reaches(answer.chain, target):
        return HOST_ELSEWHERE
    return HOST_OK if answer.records else HOST_NO_ADDRESS


@dataclass(frozen=True)
class CaaFinding:
    """Where the climb stopped: ``name`` and its ``answer`` (failed, or with
    records); ``answer`` None when no name up to the top holds CAA."""

    name: str
    answer: DnsAnswer | None


async def relevant_caa(lookup: Lookup, host: str) -> CaaFinding:
    """RFC 8659 section 3: the first non-empty CAA set climbing from
    ``host``. The lookup at each name follows its CNAME (so CAA at the
    provider's policy host counts); the climb goes through ``host``'s own
    parents. A failed lookup stops the climb: a CA must not issue then
    either (RFC 8659 section 3)."""
    for name in caa_names(host):
        answer = await resolve(lookup, name, "CAA")
        if answer.failed or answer.records:
            return CaaFinding(name, answer)
    return CaaFinding(host, None)
