"""Checks of the two TXT records a sender reads: ``_mta-sts.<domain>``
through its CNAME to our id record (step 2, RFC 8461 section 3.1) and
``_smtp._tls.<domain>`` (step 4, RFC 8460 section 3). Record syntax is in
``records``."""

from __future__ import annotations

from policy_host.check import dnsclient, judge
from policy_host.check.context import CheckContext
from policy_host.check.reasons import FAIL, WARN, TenantReport, observed, shown
from policy_host.model import TLSRPT_PREFIX, Tenant
from policy_host.records import (
    STS_VERSION,
    TLSRPT_VERSION,
    chain_reaches,
    has_version,
    joined_txt,
    parse_sts_record,
    parse_tlsrpt_record,
)


async def check_txt(ctx: CheckContext, tenant: Tenant, report: TenantReport) -> None:
    """Step 2: the CNAME to our id record and the id behind it."""
    name = tenant.id_record_name
    target = ctx.config.id_record_target(tenant.domain)
    answer = await judge.resolve(ctx.lookup, name, "TXT")
    records = [joined_txt(r) for r in answer.records]
    report.observed["txt"] = observed(answer, records)
    if answer.failed:
        report.dns_failure(answer, FAIL)
        return
    fix = f"the customer should set '{name}. CNAME {target}.'"
    if not answer.chain:
        if records:
            what = f"has its own TXT record ({shown(records)}) instead of a CNAME"
        elif answer.status == dnsclient.NXDOMAIN:
            what = "does not exist"
        else:
            what = "has no CNAME"
        report.add(
            "txt_cname_missing",
            FAIL,
            f"{name} {what}; policy changes cannot be announced to senders; {fix}",
            subject=name,
        )
        return
    if not chain_reaches(answer.chain, target):
        report.add(
            "txt_cname_elsewhere",
            FAIL,
            f"{name} is a CNAME to {' -> '.join(answer.chain)}, not to {target}; {fix}",
            subject=name,
        )
        return
    policy_id = _id_record(answer.final_name, records, report)
    if policy_id is not None:
        _compare_id(ctx, tenant, answer.final_name, policy_id, report)


def _id_record(final_name: str, records: list[str], report: TenantReport) -> str | None:
    """The id of the one valid ``v=STSv1`` record (RFC 8461 section 3.1) at
    the end of the chain; None, with the reason, when there is none."""
    candidates = [text for text in records if has_version(text, STS_VERSION)]
    if not candidates:
        seen = f" (found: {shown(records)})" if records else ""
        report.add(
            "txt_missing",
            FAIL,
            f"{final_name} has no {STS_VERSION} TXT record{seen}; senders see no policy "
            "(a provider problem: run 'policy-host apply')",
            subject=final_name,
        )
        return None
    if len(candidates) > 1:
        report.add(
            "txt_multiple",
            FAIL,
            f"{final_name} has {len(candidates)} {STS_VERSION} TXT records "
            f"({shown(candidates)}); senders treat that as no policy (RFC 8461 section 3.1)",
            subject=final_name,
        )
        return None
    policy_id, problem = parse_sts_record(candidates[0])
    report.observed["txt"]["id"] = policy_id
    if problem == "bad id":
        report.add(
            "txt_bad_id",
            FAIL,
            f"{final_name}: id '{policy_id}' must be 1 to 32 letters and digits "
            "(RFC 8461 section 3.1); senders ignore the record",
            subject=final_name,
        )
        return None
    if problem is not None or policy_id is None:
        report.add(
            "txt_invalid",
            FAIL,
            f"{final_name}: TXT record {shown(candidates)} is not valid: {problem}; "
            "senders ignore it",
            subject=final_name,
        )
        return None
    return policy_id


def _compare_id(
    ctx: CheckContext, tenant: Tenant, final_name: str, policy_id: str, report: TenantReport
) -> None:
    """The id in DNS against the one the provider last published."""
    name = tenant.id_record_name
    expected = ctx.expected_ids.get(tenant.domain)
    report.observed["txt"]["expected_id"] = expected
    if expected is None:
        report.add(
            "txt_unpublished",
            WARN,
            f"no id is recorded as published for {tenant.domain} (run 'policy-host apply'); "
            f"DNS says id={policy_id}, not compared",
            subject=name,
        )
    elif policy_id != expected:
        report.add(
            "txt_stale_id",
            FAIL,
            f"{final_name} says id={policy_id} but the provider last published "
            f"id={expected}; senders will not fetch the current policy",
            subject=final_name,
        )


async def check_tlsrpt(ctx: CheckContext, tenant: Tenant, report: TenantReport) -> None:
    """Step 4: one valid TLS-RPT record (RFC 8460 section 3); warnings only."""
    name = TLSRPT_PREFIX + tenant.domain
    answer = await judge.resolve(ctx.lookup, name, "TXT")
    records = [joined_txt(r) for r in answer.records]
    report.observed["tlsrpt"] = observed(answer, records)
    if answer.failed:
        report.dns_failure(answer, WARN)
        return
    candidates = [text for text in records if has_version(text, TLSRPT_VERSION)]
    expected = tenant.tlsrpt_rua
    hint = f" '{name}. TXT \"{TLSRPT_VERSION}; rua={','.join(expected)}\"'" if expected else ""
    if not candidates:
        report.add(
            "tlsrpt_missing",
            WARN,
            f"{name} has no {TLSRPT_VERSION} record; nobody receives TLS failure reports"
            + (f"; the customer could add{hint}" if hint else ""),
            subject=name,
        )
        return
    if len(candidates) > 1:
        report.add(
            "tlsrpt_multiple",
            WARN,
            f"{name} has {len(candidates)} {TLSRPT_VERSION} records; senders then send no reports",
            subject=name,
        )
        return
    rua, problem = parse_tlsrpt_record(candidates[0])
    report.observed["tlsrpt"]["rua"] = rua
    if problem is not None:
        report.add(
            "tlsrpt_invalid",
            WARN,
            f"{name}: {shown(candidates)} is not valid: {problem}",
            subject=name,
        )
        return
    if expected and sorted(rua) != sorted(expected):
        report.add(
            "tlsrpt_rua_mismatch",
            WARN,
            f"{name} sends reports to {', '.join(rua)}; the tenant file expects "
            f"{', '.join(expected)}",
            subject=name,
        )
