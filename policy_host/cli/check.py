"""``policy-host check``: is every customer's DNS (and HTTPS) right?

The command layer only: arguments, choosing the resolver and the tenants,
progress on a terminal, the table or JSON, the exit status. The checks are
in ``policy_host.check``; the heavy imports (asyncio, dnspython) happen when the
command runs, not when the parser is built.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from policy_host.cli.guard import format_guard, guard_step
from policy_host.cli.output import EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, Progress
from policy_host.model import InvalidValue, hostname
from policy_host.read.config import ProviderConfig
from policy_host.read.values import parse_server

if TYPE_CHECKING:
    from policy_host.check.authoritative import Survey
    from policy_host.check.reasons import TenantReport
    from policy_host.model import Tenant

STATUS_ORDER = {"fail": 0, "warn": 1, "ok": 2}

DESCRIPTION = """\
Check, through a recursive resolver, that each tenant's DNS says what policy-host
serves: mta-sts.<domain> is a CNAME to the policy host; _mta-sts.<domain> is a
CNAME to <domain>.<id_zone>, where one valid v=STSv1 TXT record carries the id last
published; every MX host matches the policy (RFC 8461 section 4.1); _smtp._tls.<domain>
has one valid TLS-RPT record; no CAA record forbids the certificate authority. With
--https, also fetch each policy as a sender would and compare it byte for byte.
With an `authoritative` section in the config, also ask every authoritative server
of the id zone directly whether it lags behind the primary (SOA serial) or disagrees
with it (TXT records of the checked tenants).
"""

EPILOG = """\
Exit status: 0 no tenant failed (warnings are shown but pass unless --strict);
1 a tenant failed, an authoritative server lags, disagrees or does not answer, or
the guard raised an alert (MX drift of an enforce tenant, a rise of failures to one
MX); 2 usage or provider-config error. Every reason has a stable code
(see README, or --json).
"""


def _server_arg(text: str) -> tuple[str, int]:
    try:
        return parse_server(text)
    except InvalidValue as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _connect_arg(text: str) -> tuple[str, int]:
    try:
        return parse_server(text, default_port=443)
    except InvalidValue as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 10_000:
        raise argparse.ArgumentTypeError(f"expected a whole number 1..10000 (got {text!r})")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.1 <= value <= 60:
        raise argparse.ArgumentTypeError(f"expected seconds, 0.1..60 (got {text!r})")
    return value


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    """Add the ``check`` subcommand to the ``policy-host`` parser."""
    p = subparsers.add_parser(
        "check",
        parents=[common],
        help="check that each customer's DNS (and HTTPS) matches what is served",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("domains", nargs="*", metavar="DOMAIN", help="check only these tenants")
    p.add_argument(
        "--nameserver",
        action="append",
        type=_server_arg,
        metavar="IP[:PORT]",
        help="recursive resolver to ask (repeatable; default: dns.resolver from the config, "
        "else the system's)",
    )
    p.add_argument(
        "--timeout",
        type=_seconds,
        metavar="SECONDS",
        help="per lookup or fetch (default: dns.timeout)",
    )
    p.add_argument(
        "--concurrency",
        type=_positive,
        metavar="N",
        help="DNS queries in flight at most (default: check.concurrency)",
    )
    p.add_argument(
        "--jobs",
        type=_positive,
        metavar="N",
        help="processes sharing the tenants (default: one per core; runs of fewer than "
        "200 tenants use one)",
    )
    p.add_argument("--https", action="store_true", help="also fetch each policy over HTTPS")
    p.add_argument("--ca-file", type=Path, metavar="PATH", help="trust only this CA for --https")
    p.add_argument(
        "--connect",
        type=_connect_arg,
        metavar="IP[:PORT]",
        help="with --https, connect here (port 443 by default) instead of the address in "
        "DNS; SNI and Host stay mta-sts.<domain>",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("-v", "--verbose", action="store_true", help="each reason and what DNS said")
    p.add_argument("--strict", action="store_true", help="warnings fail too")
    p.add_argument(
        "--problems", action="store_true", help="list only tenants with warnings or failures"
    )
    p.add_argument(
        "--no-apply",
        action="store_true",
        help="after a guard step down (promote.step_down), leave 'policy-host apply' to the "
        "apply timer instead of running it at once",
    )
    p.set_defaults(handler=cmd_check)


def cmd_check(args: argparse.Namespace, config: ProviderConfig) -> int:
    from policy_host.certs.account import account_uris
    from policy_host.check import dnsclient
    from policy_host.check.authoritative import survey
    from policy_host.check.context import CheckContext
    from policy_host.check.parallel import run_checks
    from policy_host.check.reasons import invalid_tenant_report
    from policy_host.fetch import HttpsFetcher
    from policy_host.read.tenants import default_jobs
    from policy_host.state import published_ids

    try:
        servers = _servers(args, config)
        tenants, broken = _chosen_tenants(args, config)
    except _UsageError as exc:
        return _usage(str(exc))
    timeout = args.timeout or config.dns.timeout
    concurrency = args.concurrency or config.check.concurrency
    client = dnsclient.DnsClient(servers, timeout=timeout, concurrency=concurrency)
    fetcher = (
        HttpsFetcher(ca_file=args.ca_file, connect=args.connect, timeout=timeout)
        if args.https
        else None
    )
    ctx = CheckContext(
        config=config,
        lookup=client,
        expected_ids=published_ids(config),
        fetcher=fetcher,
        acme_accounts=account_uris(config.acme),
    )
    progress = Progress(sys.stderr, len(tenants), noun="tenants")
    started = time.monotonic()
    try:
        reports = run_checks(
            ctx,
            tenants,
            workers=concurrency,
            progress=lambda done, total: progress.step("checking", done, total),
            processes=args.jobs or default_jobs(),
        )
    finally:
        progress.finish()
        if fetcher is not None:
            fetcher.close()
    elapsed = time.monotonic() - started
    reports += [invalid_tenant_report(d, s) for d, s in broken.items()]
    reports.sort(key=lambda r: r.domain)
    now = time.time()
    _store_results(config, reports, now)
    guard = guard_step(config, tenants, reports, now, apply=not args.no_apply)
    authorities = survey(config, [config.id_record_target(t.domain) + "." for t in tenants])
    counts = _show(args, config, reports, servers, elapsed, client.queries, guard, authorities)
    if counts["fail"] or (args.strict and counts["warn"]) or guard["alerts"] or guard["errors"]:
        return EXIT_PROBLEMS
    if authorities is not None and not authorities.ok:
        return EXIT_PROBLEMS
    return EXIT_OK


def _store_results(config: ProviderConfig, reports: Sequence[TenantReport], now: float) -> None:
    """Keep each tenant's result for `promote`, the guard and the status page."""
    from policy_host.results import CheckResult, ResultsError, put_checks

    results = [
        CheckResult(
            r.domain,
            now,
            r.status,
            r.mode,
            tuple(reason.as_dict() for reason in r.reasons),
            tuple(r.observed["mx"]["hosts"]) if "mx" in r.observed else None,
        )
        for r in reports
    ]
    try:
        put_checks(config.results_db, results)
    except ResultsError as exc:
        # Checking still works; promote and the status page see older results.
        print(f"policy-host check: results not stored: {exc}", file=sys.stderr)


class _UsageError(Exception):
    """Options or arguments that cannot work together (exit 2)."""


def _servers(args: argparse.Namespace, config: ProviderConfig) -> list[tuple[str, int]]:
    """The resolvers to ask; the options checked on the way."""
    from policy_host.check import dnsclient

    if (args.connect or args.ca_file) and not args.https:
        raise _UsageError("--connect and --ca-file only make sense with --https")
    if args.ca_file and not args.ca_file.is_file():
        raise _UsageError(f"--ca-file {args.ca_file}: no such file")
    if args.nameserver:
        return list(args.nameserver)
    if config.dns.resolver is not None:
        return [config.dns.resolver]
    try:
        return dnsclient.system_servers()
    except ValueError as exc:
        raise _UsageError(f"{exc}; give --nameserver or dns.resolver in the config") from None


def _chosen_tenants(
    args: argparse.Namespace, config: ProviderConfig
) -> tuple[list[Tenant], dict[str, str]]:
    """The valid tenants to check, and the broken ones (domain: source)."""
    from policy_host.read.tenants import load_tenants

    try:
        domains = [hostname(d.rstrip("."), what="domain").ascii for d in args.domains]
    except InvalidValue as exc:
        raise _UsageError(str(exc)) from None
    result = load_tenants(config)
    known = set(result.tenants) | set(result.broken)
    unknown = [d for d in domains if d not in known]
    if unknown:
        raise _UsageError(f"no tenant file for {', '.join(unknown)} in {config.tenants_dir}")
    wanted = set(domains) or known
    tenants = [t for d, t in sorted(result.tenants.items()) if d in wanted]
    broken = {
        d: s for d, s in sorted(result.broken.items()) if d in wanted and d not in result.tenants
    }
    return tenants, broken


def _show(
    args: argparse.Namespace,
    config: ProviderConfig,
    reports: Sequence[TenantReport],
    servers: Sequence[tuple[str, int]],
    elapsed: float,
    queries: int,
    guard: dict[str, Any],
    authorities: Survey | None,
) -> dict[str, int]:
    """The table or the JSON, and the summary line; the count per status."""
    resolver = ", ".join(f"{a}:{p}" for a, p in servers)
    counts = {status: sum(r.status == status for r in reports) for status in STATUS_ORDER}
    if args.json:
        json.dump(
            {
                "config": str(config.path),
                "resolver": resolver,
                "https": bool(args.https),
                "elapsed_seconds": round(elapsed, 3),
                "queries": queries,
                "summary": {"tenants": len(reports), **counts},
                "tenants": [r.as_dict() for r in reports],
                "guard": guard,
                "authoritative": authorities.as_dict() if authorities is not None else None,
            },
            sys.stdout,
            indent=2,
        )
        print()
    else:
        shown = [r for r in reports if r.status != "ok"] if args.problems else reports
        sys.stdout.write(format_table(shown, verbose=args.verbose))
        sys.stdout.write(format_guard(guard))
        if authorities is not None:
            print(f"authoritative servers of {authorities.zone}:")
            for line in authorities.lines():
                print(f"  {line}")
    print(
        f"checked {len(reports)} tenants in {elapsed:.1f} s through {resolver}: "
        f"{counts['ok']} ok, {counts['warn']} warn, {counts['fail']} fail",
        file=sys.stderr,
    )
    return counts


def _usage(message: str) -> int:
    print(f"policy-host check: {message}", file=sys.stderr)
    return EXIT_USAGE


def format_table(reports: Sequence[TenantReport], *, verbose: bool = False) -> str:
    """One line per tenant (failures first): status, domain, reasons.

    With ``verbose``, each reason on its own line and what DNS answered.
    """
    ordered = sorted(reports, key=lambda r: (STATUS_ORDER[r.status], r.domain))
    width = max((len(r.domain) for r in ordered), default=0)
    lines = []
    for report in ordered:
        if verbose or not report.reasons:
            lines.append(f"{report.status:<4}  {report.domain}".rstrip())
        else:
            said = " | ".join(f"{r.code}: {r.message}" for r in report.reasons)
            lines.append(f"{report.status:<4}  {report.domain:<{width}}  {said}")
        if verbose:
            for reason in report.reasons:
                lines.append(f"      {reason.label} {reason.code}: {reason.message}")
            lines.extend(f"      . {line}" for line in _observed_lines(report))
    return "".join(line + "\n" for line in lines)


def _observed_lines(report: TenantReport) -> list[str]:
    lines = []
    for key in ("policy_host", "txt", "mx", "tlsrpt", "caa"):
        seen = report.observed.get(key)
        if not isinstance(seen, dict) or "name" not in seen:
            continue
        path = " -> ".join([seen["name"], *seen.get("chain", [])])
        records = seen.get("records") or []
        shown = ", ".join(str(r) for r in records) if records else seen["status"]
        lines.append(f"{path} {seen['type']}: {shown}")
    https = report.observed.get("https")
    if isinstance(https, dict):
        lines.append(
            f"https {https.get('address')}: status {https.get('status')}, "
            f"{https.get('content_type')}, certificate until {https.get('certificate_not_after')}"
        )
    return lines
