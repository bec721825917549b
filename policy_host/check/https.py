"""Step 6: the policy as a sender fetches it over HTTPS, byte for byte."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from policy_host.check.context import CheckContext
from policy_host.check.reasons import CERT_EXPIRY_WARN_DAYS, FAIL, WARN, TenantReport
from policy_host.model import Tenant
from policy_host.render import render


async def check_https(
    ctx: CheckContext, tenant: Tenant, report: TenantReport, addresses: Sequence[str]
) -> None:
    """Step 6: the policy as a sender fetches it."""
    assert ctx.fetcher is not None
    result = await ctx.fetcher.fetch(tenant.policy_host, addresses)
    report.observed["https"] = {
        "address": f"{result.address}:{result.port}" if result.address else None,
        "status": result.status,
        "content_type": result.content_type,
        "certificate_not_after": result.not_after.isoformat() if result.not_after else None,
    }
    url = f"https://{tenant.policy_host}/.well-known/mta-sts.txt"
    if result.not_after is not None:
        left = result.not_after - ctx.clock()
        if left < dt.timedelta(days=CERT_EXPIRY_WARN_DAYS):
            report.add(
                "https_cert_expiring",
                WARN,
                f"the certificate for {tenant.policy_host} expires on "
                f"{result.not_after:%Y-%m-%d} ({max(left.days, 0)} days left); check certbot",
                subject=url,
            )
    if result.error_code is not None:
        report.add(result.error_code, FAIL, f"{url}: {result.error}", subject=url)
        return
    status = result.status
    if status is not None and 300 <= status < 400:
        report.add(
            "https_redirect",
            FAIL,
            f"{url} answers {status} redirecting to {result.location or '?'}; senders never "
            "follow redirects",
            subject=url,
        )
        return
    if status != 200:
        report.add("https_status", FAIL, f"{url} answers {status}, not 200", subject=url)
        return
    media = (result.content_type or "").split(";", 1)[0].strip().lower()
    if media != "text/plain":
        report.add(
            "https_content_type",
            FAIL,
            f"{url} is served as '{result.content_type or 'nothing'}', not text/plain",
            subject=url,
        )
    if result.too_large:
        report.add("https_too_large", FAIL, f"{url} is larger than 64 KiB", subject=url)
        return
    expected = render(tenant.policy)
    if result.body != expected:
        report.add(
            "https_policy_mismatch",
            FAIL,
            f"{url} serves a different policy: {body_difference(result.body, expected)}",
            subject=url,
        )


def body_difference(served: bytes, expected: bytes) -> str:
    """The first line that differs between two policy bodies, for a person
    (line ends shown, since CRLF against LF is a common difference)."""
    got = served.splitlines(keepends=True)
    want = expected.splitlines(keepends=True)
    for number in range(1, max(len(got), len(want)) + 1):
        a = got[number - 1] if number <= len(got) else None
        b = want[number - 1] if number <= len(want) else None
        if a != b:
            shown_a = _bytes(a) if a is not None else "missing"
            shown_b = _bytes(b) if b is not None else "the end of the body"
            return f"line {number} is {shown_a}, expected {shown_b}"
    return "the bytes differ"


def _bytes(line: bytes) -> str:
    return repr(line.decode("ascii", "backslashreplace"))
