"""Checks of the policy host's name ``mta-sts.<domain>``: its CNAME to the
provider (step 1) and the CAA records that govern its certificate (step 5).
The rules themselves are in ``check.judge`` and ``records``, shared with
``certs``."""

from __future__ import annotations

import dns.rdtypes.IN.A

from policy_host.check import judge
from policy_host.check.context import CheckContext
from policy_host.check.dnsclient import DnsAnswer
from policy_host.check.reasons import FAIL, WARN, TenantReport, observed
from policy_host.model import Tenant
from policy_host.records import AcmeIdentity, CaaProperty, caa_properties, judge_caa


def _addresses(answer: DnsAnswer) -> list[str]:
    return sorted(str(r.address) for r in answer.records if isinstance(r, dns.rdtypes.IN.A.A))


async def check_policy_host(ctx: CheckContext, tenant: Tenant, report: TenantReport) -> list[str]:
    """Step 1; returns the policy host's addresses (for the HTTPS fetch)."""
    name = tenant.policy_host
    target = ctx.config.policy_host
    answer = await judge.resolve(ctx.lookup, name, "A")
    report.observed["policy_host"] = observed(answer)
    state = judge.host_state(answer, target)
    fix = f"the customer should set '{name}. CNAME {target}.'"
    if state == judge.HOST_FAILED:
        report.dns_failure(answer, FAIL)
    elif state == judge.HOST_NXDOMAIN:
        report.add("policy_host_nxdomain", FAIL, f"{name} does not exist; {fix}", subject=name)
    elif state == judge.HOST_NO_CNAME:
        report.add(
            "policy_host_cname_missing",
            FAIL,
            f"{name} has no CNAME and no address; {fix}",
            subject=name,
        )
    elif state == judge.HOST_ADDRESSES:
        addresses = _addresses(answer)
        await _own_addresses(ctx, name, addresses, fix, report)
        return addresses
    elif state == judge.HOST_ELSEWHERE:
        report.add(
            "policy_host_cname_elsewhere",
            FAIL,
            f"{name} is a CNAME to {' -> '.join(answer.chain)}, not to {target}; {fix}",
            subject=name,
        )
    elif state == judge.HOST_NO_ADDRESS:
        report.add(
            "policy_host_no_address",
            FAIL,
            f"{name} points to {target} correctly, but {answer.final_name} has no address "
            "(a provider problem: check the provider's own zone)",
            subject=name,
        )
    else:
        return _addresses(answer)
    return []


async def _own_addresses(
    ctx: CheckContext, name: str, addresses: list[str], fix: str, report: TenantReport
) -> None:
    """A records instead of the CNAME: a warning while they equal ours."""
    target = ctx.config.policy_host
    ours = _addresses(await ctx.lookup.lookup(target, "A"))
    if ours and addresses == ours:
        report.add(
            "policy_host_a_record",
            WARN,
            f"{name} has A records ({', '.join(addresses)}) equal to {target}'s today, "
            f"but will break when the provider's addresses change; {fix}",
            subject=name,
        )
    else:
        report.add(
            "policy_host_a_record",
            FAIL,
            f"{name} has A records ({', '.join(addresses)}), not a CNAME to {target}; "
            f"senders fetch the policy from the wrong server; {fix}",
            subject=name,
        )


async def check_caa(ctx: CheckContext, tenant: Tenant, report: TenantReport) -> None:
    """Step 5: may the CA issue for ``mta-sts.<domain>`` (RFC 8659 section 3,
    RFC 8657)? Warnings only: the certificate in use keeps working."""
    found = await judge.relevant_caa(ctx.lookup, tenant.policy_host)
    answer = found.answer
    if answer is None:
        report.observed["caa"] = {"records": []}
        return
    if answer.failed:
        report.observed["caa"] = observed(answer)
        report.dns_failure(answer, WARN)
        return
    records = [r.to_text() for r in answer.records]
    report.observed["caa"] = {**observed(answer), "records": records}
    problem = caa_problem(caa_properties(answer.records), ctx.acme)
    if problem is not None:
        name = found.name
        where = f"{name} (via {answer.final_name})" if answer.chain else name
        report.add(
            "caa_forbids_ca",
            WARN,
            f"CAA at {where} ({'; '.join(records)}) {problem}; certificates for "
            f"{tenant.policy_host} will fail",
            subject=name,
        )


def caa_problem(properties: list[CaaProperty], us: AcmeIdentity) -> str | None:
    """Why a relevant CAA set stops us, as `check` says it; None if it does not."""
    verdict = judge_caa(properties, us)
    if verdict.allowed:
        return None
    if verdict.critical_tag is not None:
        return f"has a critical property '{verdict.critical_tag}' that CAs do not understand"
    allowed = sorted({entry for entry in verdict.entries if entry})
    who = ", ".join(allowed) if allowed else "no CA at all"
    return f"allows {who}, not {' or '.join(us.issuers)}{verdict.shortfall}"
