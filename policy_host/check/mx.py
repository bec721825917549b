"""Step 3: every MX host must match a policy ``mx`` pattern (RFC 8461
section 4.1), with a hint for Microsoft 365's hosts."""

from __future__ import annotations

import dns.rdtypes.ANY.MX

from policy_host.check import dnsclient, judge
from policy_host.check.context import CheckContext
from policy_host.check.reasons import FAIL, WARN, TenantReport, observed
from policy_host.model import Tenant, mx_matches

# Microsoft 365's newer MX hosts: <tenant>.<region>.mx.microsoft.
MICROSOFT_MX_SUFFIX = "mx.microsoft"


def microsoft_pattern(host: str) -> str | None:
    """The pattern covering a Microsoft 365 ``*.mx.microsoft`` host.

    Those hosts sit two labels below ``mx.microsoft`` (``example-com.a-v1
    .mx.microsoft``), so ``*.mx.microsoft`` misses them; the wildcard must
    replace only the first label.
    """
    host = host.lower().rstrip(".")
    labels = host.split(".")
    if host.endswith("." + MICROSOFT_MX_SUFFIX) and len(labels) >= 4:
        return "*." + ".".join(labels[1:])
    return None


async def check_mx(ctx: CheckContext, tenant: Tenant, report: TenantReport) -> None:
    """Step 3: every MX host must match a policy pattern (RFC 8461 section 4.1)."""
    policy = tenant.policy
    if policy.mode == "none":
        return
    answer = await judge.resolve(ctx.lookup, tenant.domain, "MX")
    hosts = sorted(
        {
            dnsclient.text_of(r.exchange) or "."
            for r in answer.records
            if isinstance(r, dns.rdtypes.ANY.MX.MX)
        }
    )
    report.observed["mx"] = {**observed(answer), "hosts": hosts, "patterns": list(policy.mx)}
    severity = FAIL if policy.mode == "enforce" else WARN
    consequence = (
        "mail from MTA-STS senders to it will bounce"
        if policy.mode == "enforce"
        else "senders report it as a failure (mode testing)"
    )
    if answer.failed:
        report.dns_failure(answer, severity)
        return
    if answer.status == dnsclient.NXDOMAIN and not answer.chain:
        report.add(
            "domain_nxdomain",
            FAIL,
            f"the domain {tenant.domain} does not exist in DNS",
            subject=tenant.domain,
        )
        return
    if not hosts:
        report.add(
            "mx_missing",
            severity,
            f"{tenant.domain} has no MX records; no MX host can match the policy",
            subject=tenant.domain,
        )
        return
    if hosts == ["."]:
        report.add(
            "mx_null",
            WARN,
            f"{tenant.domain} has a null MX (RFC 7505): it accepts no mail, so its "
            "MTA-STS policy has nothing to protect",
            subject=tenant.domain,
        )
        return
    patterns = ", ".join(policy.mx)
    for host in hosts:
        if host == "." or any(mx_matches(pattern, host) for pattern in policy.mx):
            continue
        suggestion = microsoft_pattern(host)
        if suggestion is not None:
            report.add(
                "mx_mismatch_microsoft",
                severity,
                f"MX host {host} (Microsoft 365) matches no mx pattern ({patterns}); "
                f"{consequence}; add 'mx: \"{suggestion}\"' ('*.{MICROSOFT_MX_SUFFIX}' "
                "does not cover it: a wildcard stands for one label)",
                subject=host,
            )
        else:
            report.add(
                "mx_mismatch",
                severity,
                f"MX host {host} matches no mx pattern ({patterns}); {consequence}; "
                "add it to the tenant's mx list",
                subject=host,
            )
