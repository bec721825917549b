"""Checks of the two TXT records a sender reads: ``_mta-sts.<domain>``
through its CNAME to our id record (step 2, RFC 8461 section 3.1) and
``_smtp._tls.<domain>`` (step 4, RFC 8460 section 3). Record syntax is in
``records``."""

from __future__ import annotations

from policy_host.check import dnsclient, judge
from policy_host.check.context import CheckContext
from policy_host.check.reasons import FAIL, WARN, TenantReport, observed, shown
from policy_host.model import TLSRPT_PREFIX, Tenant
from policy_host.read.config import ProviderConfig
from policy_host.records import (
    STS_VERSION,
    TLSRPT_VERSION,
    chain_reaches,
    has_version,
    joined_txt,
    parse_sts_record,
    parse_tlsrpt_record,
    tlsrpt_record_value,
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
    """Step 4: one valid TLS-RPT record (RFC 8460 section 3); warnings only.

    The customer either points ``_smtp._tls.<domain>`` at our hosted record
    by CNAME (it must then hold what `apply` publishes) or keeps its own
    record; a tenant that expects reports from us (``expects_our_reports``)
    must then list one of our ``rua`` URIs.
    """
    name = TLSRPT_PREFIX + tenant.domain
    answer = await judge.resolve(ctx.lookup, name, "TXT")
    records = [joined_txt(r) for r in answer.records]
    report.observed["tlsrpt"] = observed(answer, records)
    if answer.failed:
        report.dns_failure(answer, WARN)
        return
    config = ctx.config
    target = config.tlsrpt_record_target(tenant.domain)
    hosted = target is not None and bool(answer.chain) and chain_reaches(answer.chain, target)
    report.observed["tlsrpt"]["hosted"] = hosted
    candidates = [text for text in records if has_version(text, TLSRPT_VERSION)]
    if not candidates:
        _tlsrpt_missing(ctx, tenant, name, hosted, report)
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
    if hosted:
        ours = list(config.tlsrpt.rua)
        if sorted(rua) != sorted(ours):
            report.add(
                "tlsrpt_hosted_stale",
                WARN,
                f"{name} leads to our hosted record, which sends reports to {', '.join(rua)} "
                f"instead of {', '.join(ours) or 'nowhere of ours'}; run 'policy-host apply'",
                subject=name,
            )
        return
    expected = tenant.tlsrpt_rua
    if expected and sorted(rua) != sorted(expected):
        report.add(
            "tlsrpt_rua_mismatch",
            WARN,
            f"{name} sends reports to {', '.join(rua)}; the tenant file expects "
            f"{', '.join(expected)}",
            subject=name,
        )
    elif expects_our_reports(config, tenant) and not set(rua) & set(config.tlsrpt.rua):
        report.add(
            "tlsrpt_not_ours",
            WARN,
            f"{name} sends reports to {', '.join(rua)}, none of them ours; no TLS report "
            f"for {tenant.domain} reaches the provider; {_tlsrpt_fix(ctx, tenant)}",
            subject=name,
        )


def expects_our_reports(config: ProviderConfig, tenant: Tenant) -> bool:
    """Does the tenant expect its TLS reports to reach us? When we run report
    destinations, unless its file names only destinations of its own."""
    ours = set(config.tlsrpt.rua)
    return bool(ours) and (not tenant.tlsrpt_rua or bool(ours & set(tenant.tlsrpt_rua)))


def _tlsrpt_fix(ctx: CheckContext, tenant: Tenant) -> str:
    """What the customer can do: the two ways of ``policy-host show``."""
    name = TLSRPT_PREFIX + tenant.domain
    config = ctx.config
    target = config.tlsrpt_record_target(tenant.domain)
    rua = tenant.tlsrpt_rua or config.tlsrpt.rua
    own = f"'{name}. TXT \"{tlsrpt_record_value(rua).decode('ascii')}\"'"
    if target is not None and config.tlsrpt.hosted:
        return f"the customer could set '{name}. CNAME {target}.' or {own}"
    return f"the customer could set {own}"


def _tlsrpt_missing(
    ctx: CheckContext, tenant: Tenant, name: str, hosted: bool, report: TenantReport
) -> None:
    if hosted:
        what = "leads to our hosted record, which is not published (run 'policy-host apply')"
    else:
        what = f"has no {TLSRPT_VERSION} record"
    hint = ""
    if not hosted and (tenant.tlsrpt_rua or ctx.config.tlsrpt.rua):
        hint = f"; {_tlsrpt_fix(ctx, tenant)}"
    report.add(
        "tlsrpt_missing",
        WARN,
        f"{name} {what}; nobody receives TLS failure reports{hint}",
        subject=name,
    )
