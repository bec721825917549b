"""What a customer's DNS (and, optionally, the live HTTPS) says vs what we serve.

For every tenant, through a recursive resolver:

1. ``mta-sts.<domain>`` is a CNAME (chain) to the provider's policy host;
2. ``_mta-sts.<domain>`` is a CNAME to ``<domain>.<id_zone>``, where exactly
   one valid ``v=STSv1`` TXT record carries the id the provider last
   published (RFC 8461 section 3.1);
3. every MX host matches a policy ``mx`` pattern (RFC 8461 section 4.1);
4. ``_smtp._tls.<domain>`` holds one valid TLS-RPT record (RFC 8460);
5. no CAA record (RFC 8659, RFC 8657) stops the provider's certificate
   authority from issuing for ``mta-sts.<domain>``;
6. optionally, the policy fetched over HTTPS is byte for byte ours.

Steps 1 and 5 are in ``hosts``, 2 and 4 in ``txt``, 3 in ``mx``, 6 in
``https``; findings are ``reasons.Reason``. The checks are pure apart from
the injected ``Lookup`` (DNS), fetcher (HTTPS) and clock, so tests run them
against real servers or fakes alike. DNS failures (timeouts, SERVFAIL,
loops, truncation) become reasons; a tenant always gets a report. Many
processes: ``parallel``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from policy_host.check.context import CheckContext
from policy_host.check.hosts import check_caa, check_policy_host
from policy_host.check.https import check_https
from policy_host.check.mx import check_mx
from policy_host.check.reasons import TenantReport, tidy
from policy_host.check.txt import check_tlsrpt, check_txt
from policy_host.model import Tenant

Progress = Callable[[int, int], None]


async def check_tenant(ctx: CheckContext, tenant: Tenant) -> TenantReport:
    """Every check for one tenant; the lookups run concurrently.

    Each check writes to a part of its own, joined in a fixed order, so the
    report does not depend on which answer came first.
    """
    parts = [TenantReport(tenant.domain, tenant.policy.mode) for _ in range(5)]

    async def host_and_https(report: TenantReport) -> None:
        addresses = await check_policy_host(ctx, tenant, report)
        if ctx.fetcher is not None and (addresses or ctx.fetcher.connect):
            await check_https(ctx, tenant, report, addresses)

    host, txt, mx, tlsrpt, caa = parts
    await asyncio.gather(
        host_and_https(host),
        check_txt(ctx, tenant, txt),
        check_mx(ctx, tenant, mx),
        check_tlsrpt(ctx, tenant, tlsrpt),
        check_caa(ctx, tenant, caa),
    )
    report = TenantReport(tenant.domain, tenant.policy.mode)
    for part in parts:
        report.reasons += part.reasons
        report.observed.update(part.observed)
    report.reasons = tidy(report.reasons)
    return report


async def check_all(
    ctx: CheckContext,
    tenants: Sequence[Tenant],
    *,
    workers: int,
    progress: Progress | None = None,
) -> list[TenantReport]:
    """Check every tenant, ``workers`` tenants at a time; reports in input order.

    A tenant's check never raises for DNS or HTTPS trouble; should it raise
    anyway (a bug), the exception propagates after the other workers stop.
    """
    reports: list[TenantReport | None] = [None] * len(tenants)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(len(tenants)):
        queue.put_nowait(index)
    done = 0

    async def worker() -> None:
        nonlocal done
        while True:
            try:
                index = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            reports[index] = await check_tenant(ctx, tenants[index])
            done += 1
            if progress is not None:
                progress(done, len(tenants))

    count = max(1, min(workers, len(tenants)))
    tasks = [asyncio.create_task(worker()) for _ in range(count)]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
    return [r for r in reports if r is not None]
