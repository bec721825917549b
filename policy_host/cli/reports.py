"""``policy-host reports``: ingest TLS reports, and say what they mean.

    policy-host reports [DOMAIN...] [--since 7d|DATE] [--until DATE] [--json] [--problems] [-v]
    policy-host reports ingest [PATH...|-]
    policy-host reports prune [--dry-run]

``ingest`` with ``-`` or no path reads one message from standard input: the
command an MTA pipes report mail into. Its exit status is what MTAs expect
(sysexits.h): 0 when the message is kept, whatever it held (a message that is
not a report is kept aside, never bounced to a sender that may be forged);
75 (EX_TEMPFAIL) when it could not be stored, so the MTA tries again.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from policy_host.cli.output import EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE
from policy_host.model import InvalidValue, hostname
from policy_host.read.config import ProviderConfig

if TYPE_CHECKING:
    from policy_host.reports.summary import TenantSummary

# The store and the summaries are imported by the subcommand that uses
# them: the parser is built for every command, and every other command's
# start-up would pay for them (docs/performance.md, "Command start-up").

log = logging.getLogger(__name__)

EX_TEMPFAIL = 75  # sysexits.h: the MTA keeps the message and retries
DAY = 86_400.0
DEFAULT_SINCE = "7d"


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = sub.add_parser(
        "reports",
        parents=[common],
        help="TLS reports (RFC 8460): ingest them; per tenant, what they say",
        description="Per tenant: successful and failed sessions, failures by result type, by "
        "receiving MX and by reporting organisation, and the policy versions senders used; "
        "failures about the policy host itself first. 'reports ingest PATH...' stores report "
        "files (.json, .json.gz), messages (.eml) and Maildir folders; with '-' or no path it "
        "reads one message from standard input (for an MTA's pipe: exit 0 kept, 75 try again). "
        "'reports prune' drops what is older than the configured retention.",
        epilog="Exit status of the summary: 0 ok, 1 a tenant crosses tlsrpt.max_failure_rate or "
        "has failures about the policy host, 2 usage error, 3 other failure.",
    )
    p.add_argument("args", nargs="*", metavar="DOMAIN | ingest PATH... | prune | metrics")
    p.add_argument(
        "--output",
        metavar="PATH",
        help="metrics: write here atomically (node_exporter's textfile folder), not stdout",
    )
    p.add_argument("--since", default=DEFAULT_SINCE, help="Nd or YYYY-MM-DD (default 7d)")
    p.add_argument("--until", help="YYYY-MM-DD, exclusive (default: now)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--problems", action="store_true", help="only tenants with problems")
    p.add_argument(
        "--verified", action="store_true", help="only DKIM-verified mail reports (not HTTPS)"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="by MX, reporter and policy")
    p.add_argument(
        "--dry-run", action="store_true", help="prune: say what would be dropped, change nothing"
    )
    p.set_defaults(handler=cmd_reports)


def cmd_reports(args: argparse.Namespace, config: ProviderConfig) -> int:
    words: list[str] = args.args
    if args.dry_run and words[:1] != ["prune"]:
        # Only prune has a dry run; a dry run is also let through by the
        # owner check (policy_host.cli.owner), so nothing else may run.
        print("policy-host: --dry-run is for 'reports prune' only", file=sys.stderr)
        return EXIT_USAGE
    if words and words[0] == "ingest":
        return cmd_ingest([Path(p) for p in words[1:]], config)
    if words and words[0] == "prune":
        return cmd_prune(config, dry_run=args.dry_run)
    if words and words[0] == "metrics":
        return cmd_metrics(args, config)
    return cmd_summary(args, config)


# -- ingest ------------------------------------------------------------------


def reads_stdin(words: list[str]) -> bool:
    """Is this `reports ingest` with ``-`` or no path (an MTA's pipe)?"""
    return bool(words) and words[0] == "ingest" and words[1:] in ([], ["-"])


def cmd_ingest(paths: list[Path], config: ProviderConfig) -> int:
    if not paths or paths == [Path("-")]:
        return _ingest_pipe(config)
    # Here, not at the top: the DKIM and DNS modules would cost every
    # command's start-up otherwise.
    from policy_host.read.tenants import default_jobs
    from policy_host.reports import batch
    from policy_host.reports.ingest import Outcome
    from policy_host.reports.schema import DUPLICATE, NOT_REPORT, REFUSED, STORED, StoreError
    from policy_host.reports.sources import make_ingester, message_cap
    from policy_host.reports.store import Store

    job = batch.Job(config.tlsrpt, config.dns.resolver, config.dns.timeout, message_cap(config))

    def say(name: str, outcome: Outcome) -> None:
        if outcome.outcome not in (STORED, DUPLICATE):
            print(f"{name}: {outcome.outcome}: {outcome.reason}", file=sys.stderr)

    try:
        with Store(config.reports_db) as store:
            counts = batch.run(make_ingester(config, store), paths, job, default_jobs(), say)
    except StoreError as exc:
        print(f"policy-host: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    print(
        "ingested: " + (", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "nothing"),
        file=sys.stderr,
    )
    bad = counts[REFUSED] + counts[NOT_REPORT] + counts["unreadable"]
    return EXIT_PROBLEMS if bad else EXIT_OK


def _ingest_pipe(config: ProviderConfig) -> int:
    """One message from standard input, committed before exit 0."""
    from policy_host.reports.sources import ingest_one, make_ingester, read_stdin
    from policy_host.reports.store import Store

    try:
        item = read_stdin(sys.stdin.buffer, config)
        with Store(config.reports_db) as store:
            ingester = make_ingester(config, store)
            with store.transaction() as conn:
                outcome = ingest_one(ingester, conn, item)
    except Exception as exc:  # anything at all: the MTA retries, never bounces
        log.debug("ingest failed", exc_info=True)
        print(f"policy-host: report not stored, try again later: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    print(f"{outcome.outcome}: {outcome.reason or outcome.report_id}", file=sys.stderr)
    return EXIT_OK


def cmd_prune(config: ProviderConfig, *, dry_run: bool = False) -> int:
    from policy_host.reports.retention import would_prune
    from policy_host.reports.schema import StoreError
    from policy_host.reports.store import Store

    settings = config.tlsrpt
    keep = (time.time(), settings.retention_days * DAY, settings.raw_retention_days * DAY)
    try:
        if dry_run:
            reports, raws = would_prune(config.reports_db, *keep)
        else:
            with Store(config.reports_db) as store:
                reports, raws = store.prune(*keep)
    except StoreError as exc:
        print(f"policy-host: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    verb = "would prune" if dry_run else "pruned"
    print(f"{verb} {reports} reports and {raws} other inputs", file=sys.stderr)
    return EXIT_OK


def cmd_metrics(args: argparse.Namespace, config: ProviderConfig) -> int:
    """Prometheus text format over the --since window (default 7d)."""
    from policy_host.fileio import replace_file
    from policy_host.reports.metrics import exposition
    from policy_host.reports.schema import StoreError
    from policy_host.reports.store import Store
    from policy_host.reports.summary import Limits

    now = time.time()
    try:
        since = parse_when(args.since, now)
    except ValueError as exc:
        print(f"policy-host: {exc}", file=sys.stderr)
        return EXIT_USAGE
    limits = Limits(config.tlsrpt.max_failure_rate, config.tlsrpt.min_sessions)
    try:
        with Store(config.reports_db) as store:
            text = exposition(store.conn, now, now - since, limits)
    except StoreError as exc:
        print(f"policy-host: {exc}", file=sys.stderr)
        return exc.exit_status
    text += guard_metrics(config, now, now - since)
    if args.output:
        replace_file(Path(args.output), text, mode=0o644)
    else:
        sys.stdout.buffer.write(text)
    return EXIT_OK


def guard_metrics(config: ProviderConfig, now: float, window: float) -> bytes:
    """The guard's open alerts and promotion readiness, from the stores and
    the tenant files (never DNS): what `check` and `promote` would say now."""
    from policy_host.promote.evidence import assess
    from policy_host.promote.metrics import exposition
    from policy_host.promote.watch import judge
    from policy_host.read.tenants import load_tenants
    from policy_host.results import count_events, read_checks

    tenants = list(load_tenants(config).tenants.values())
    checks = read_checks(
        config.results_db, [t.domain for t in tenants if t.policy.mode == "enforce"]
    )
    alerts = judge(config, tenants, {d: c.mx_hosts for d, c in checks.items()}, now)
    testing = [t for t in tenants if t.policy.mode == "testing"]
    readiness = [a.readiness for a in assess(config, testing, now)]
    events = count_events(config.results_db, now - window)
    return exposition(alerts, readiness, events, window)


# -- summary -----------------------------------------------------------------


def parse_when(text: str, now: float) -> float:
    """``Nd`` (days before now) or ``YYYY-MM-DD`` (UTC midnight)."""
    match = re.fullmatch(r"(\d{1,5})d", text)
    if match:
        return now - int(match.group(1)) * DAY
    try:
        day = datetime.date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"expected Nd or YYYY-MM-DD (got {text!r})") from None
    return datetime.datetime(day.year, day.month, day.day, tzinfo=datetime.UTC).timestamp()


def cmd_summary(args: argparse.Namespace, config: ProviderConfig) -> int:
    from policy_host.reports.schema import StoreError
    from policy_host.reports.store import Store
    from policy_host.reports.summary import Limits, summarise

    now = time.time()
    try:
        since = parse_when(args.since, now)
        until = parse_when(args.until, now) if args.until else now
        domains = [hostname(d.rstrip("."), what="domain").ascii for d in args.args]
    except (ValueError, InvalidValue) as exc:
        print(f"policy-host: {exc}", file=sys.stderr)
        return EXIT_USAGE
    limits = Limits(config.tlsrpt.max_failure_rate, config.tlsrpt.min_sessions)
    try:
        with Store(config.reports_db) as store:
            tenants = summarise(
                store.conn,
                domains or None,
                since,
                until,
                limits,
                verified_only=args.verified,
                problems_only=args.problems,
                detail=args.verbose or args.json or bool(domains),
            )
    except StoreError as exc:
        print(f"policy-host: {exc}", file=sys.stderr)
        return exc.exit_status
    if args.json:
        json.dump([t.as_dict() for t in tenants], sys.stdout, indent=2)
        print()
    else:
        for tenant in tenants:
            _print_tenant(tenant, args.verbose)
        missing = sorted(set(domains) - {t.domain for t in tenants})
        for domain in missing:
            print(f"{domain}: no reports in this range")
        if not tenants and not missing:
            print("no problems" if args.problems else "no reports in this range")
    return EXIT_PROBLEMS if any(t.problems for t in tenants) else EXIT_OK


def _counts(items: dict[str, int]) -> str:
    return ", ".join(f"{k} {n}" for k, n in sorted(items.items(), key=lambda kv: (-kv[1], kv[0])))


def _print_tenant(t: TenantSummary, verbose: bool) -> None:
    from policy_host.reports.model import OUR_SIDE

    flag = "  PROBLEM: " + "; ".join(t.problems) if t.problems else ""
    print(
        f"{t.domain}: {t.sessions} sessions, {t.failure} failed ({t.rate:.2%}) "
        f"in {t.reports} reports{flag}"
    )
    ours = {k: n for k, n in t.by_type.items() if k in OUR_SIDE}
    theirs = {k: n for k, n in t.by_type.items() if k not in OUR_SIDE}
    if ours:
        print(f"  policy host: {_counts(ours)}")
    if theirs:
        print(f"  customer side: {_counts(theirs)}")
    if verbose:
        if t.by_mx:
            print(f"  by MX: {_counts(t.by_mx)}")
        for org, (ok, failed) in sorted(t.by_reporter.items()):
            print(f"  from {org}: {ok} successful, {failed} failed")
    for (match, policy_id), (count, orgs) in sorted(t.policies.items()):
        if verbose or match not in ("current", "previous", "not-sts"):
            who = ", ".join(str(o) for o in orgs) if isinstance(orgs, list) else ""
            print(f"  policy {policy_id or '-'}: {match} in {count} reports ({who})")
