"""The `apply` and `zone` subcommands (registered by ``cli.build_parser``).

Exit status as everywhere in ``cli``: 0 ok; 1 a tenant file has an error
(nothing changed); 2 usage or config error (including an unsafe TSIG key
file); 3 a step failed (the report says which, for which tenants; rerun
`apply` once it is fixed and it takes up where this run stopped); 4 done,
but a new tenant's first id waits for its certificate (run `policy-host
certs DOMAIN`; the next `apply` publishes it). `zone --servers`: 0 every
authoritative server agrees with the primary; 1 one lags, disagrees or does
not answer; 2 no `authoritative` section or no primary to compare with.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any, TextIO

from policy_host.cli.output import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_PROBLEMS,
    EXIT_USAGE,
    EXIT_WAITING,
    PROGRESS_FROM,
    Progress,
    print_problems,
)
from policy_host.read.config import ProviderConfig

if TYPE_CHECKING:
    from policy_host.publish.plan import Change
    from policy_host.publish.report import Report
    from policy_host.publish.tlsrpt import TlsrptChange

# The publish and state modules (and dnspython under them) are imported by
# the handlers: every other command starts without them.


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add `apply` and `zone` to the `policy-host` subcommands."""
    p = subparsers.add_parser(
        "apply",
        parents=[common],
        help="serve changed policies, then publish their new ids in DNS",
        description="Validate the tenants; for each new, changed or removed tenant serve the "
        "new policy (reload the server, verify every upstream), then publish a new id with a "
        "TSIG-signed DNS UPDATE to the primary, confirm it there and at every other "
        "authoritative server of the zone (the config's authoritative section), then record "
        "it (RFC 8461 section 8). Removed tenants serve 'mode: none' until their longest "
        "max_age has run out, then their TXT is deleted. A run that stops is completed by "
        "the next one.",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (policy diffs, old and new ids, DNS UPDATE); change nothing",
    )
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.add_argument(
        "--changed",
        nargs="+",
        metavar="FILE",
        help="only these tenant files ('-': paths on stdin, one a line, as 'git diff "
        "--name-only' prints them); other tenants and withdrawals under way wait for a run "
        "without it",
    )
    p.set_defaults(handler=cmd_apply)

    p = subparsers.add_parser(
        "zone",
        parents=[common],
        help="the provider zone's TXT records, from the apply state (zone-file form)",
        description="Print every published <domain>.<id_zone> TXT record in zone-file form, "
        "for providers whose DNS takes no dynamic updates. Only ids whose policies apply has "
        "served and verified are printed. With --servers, instead ask every authoritative "
        "server of the id zone (the config's authoritative section) whether it lags behind "
        "the primary (SOA serial) or disagrees with it (the TXT records of every tenant in "
        "the state); exit status 1 when one does.",
    )
    p.add_argument(
        "--servers",
        action="store_true",
        help="compare every authoritative server of the id zone with the primary",
    )
    p.add_argument("--json", action="store_true", help="with --servers: machine-readable")
    p.set_defaults(handler=cmd_zone)


def cmd_apply(args: argparse.Namespace, config: ProviderConfig) -> int:
    from policy_host.publish.apply import run
    from policy_host.publish.environment import real_environment
    from policy_host.publish.steps import VALIDATE

    changed = None
    if args.changed:
        from policy_host.cli.changed import named_paths
        from policy_host.serve.incremental import problems_of, tenant_names

        named = tenant_names(config, named_paths(args.changed, sys.stdin))
        if named.outside:
            print_problems(problems_of(named), sys.stdout)
            return EXIT_USAGE
        changed = named.names
    env = real_environment(config)
    progress = Progress(sys.stderr, PROGRESS_FROM if not args.json else 0)
    env.progress = progress.step
    try:
        report = run(config, env, dry_run=args.dry_run, changed=changed)
    finally:
        progress.finish()
    if args.json:
        json.dump(report.as_dict(), sys.stdout, indent=2)
        print()
    else:
        print_report(report, config, sys.stdout)
    failure = report.failure
    if failure is None:
        return EXIT_WAITING if report.held else EXIT_OK
    if not args.json:
        for problem in report.problems if failure.step == VALIDATE else ():
            print(problem, file=sys.stderr)
        print(f"policy-host: {failure}", file=sys.stderr)
        if failure.step != VALIDATE:
            print(
                "policy-host: run 'policy-host apply' again once this is fixed: "
                "it takes up where this run stopped",
                file=sys.stderr,
            )
    return EXIT_PROBLEMS if failure.step == VALIDATE else EXIT_FAILURE


def _change_line(change: Change, dry_run: bool) -> str:
    from policy_host.state import DELETE, NEW, WITHDRAW

    would = "would " if dry_run else ""
    again = " (taking up an interrupted run)" if change.resumed else ""
    if change.kind == DELETE:
        return (
            f"{change.domain}: delete: withdrawal over; {would}delete its TXT (id "
            f"{change.old_id}) and stop serving it{again}"
        )
    if change.kind == WITHDRAW:
        return (
            f"{change.domain}: withdraw: tenant file removed; {would}serve mode none under id "
            f"{change.new_id} (was {change.old_id or '-'}){again}"
        )
    verb = "publish" if change.kind == NEW else "change id"
    ids = change.new_id if change.kind == NEW else f"{change.old_id or '-'} -> {change.new_id}"
    return f"{change.domain}: {change.kind}: {would}{verb} {ids}{again}"


def _tlsrpt_line(change: TlsrptChange, dry_run: bool) -> str:
    would = "would " if dry_run else ""
    if change.value is None:
        return f"{change.domain}: tlsrpt: {would}delete the hosted record {change.name}"
    value = change.value.decode("ascii")
    return f"{change.domain}: tlsrpt: {would}set the hosted record {change.name} to {value!r}"


def print_report(report: Report, config: ProviderConfig, out: TextIO) -> None:
    """The human report: per tenant what changed, then notes and a summary."""
    from policy_host.publish.plan import iso
    from policy_host.publish.update import id_record_value, record_name, txt_rdata

    plan = report.plan
    dry = report.dry_run
    stopped = f" [not done: stopped at step '{report.failure.step}']" if report.failure else ""
    for change in plan.changes:
        print(_change_line(change, dry) + stopped, file=out)
        if dry:
            for line in change.diff():
                print(f"    {line}", file=out)
    for hosted in report.tlsrpt:
        print(_tlsrpt_line(hosted, dry) + stopped, file=out)
    for withdrawal in plan.withdrawing:
        print(
            f"{withdrawal.domain}: withdrawing: serving mode none (id {withdrawal.policy_id}) "
            f"until {iso(withdrawal.ends)}, then its TXT is deleted",
            file=out,
        )
    for domain in report.held:
        print(
            f"{domain}: new: served, not published: waiting for a certificate: "
            f"run policy-host certs {domain}",
            file=out,
        )
    for note in (*plan.notes, *report.notes):
        print(f"note: {note}", file=out)
    if dry and report.reload:
        print(
            f"would reload the server and verify at {', '.join(config.upstreams) or '(none)'}",
            file=out,
        )
    if dry and report.updates:
        print(f"DNS UPDATE to the primary ({len(report.updates)} message(s)):", file=out)
        for text in report.updates:
            for line in text.splitlines():
                print(f"    {line}", file=out)
    if report.manual_dns and (plan.changes or report.tlsrpt):
        print(
            ("after apply, " if dry else "")
            + "dns.primary is not set: load these records into the provider zone yourself "
            "('policy-host zone' prints them all):",
            file=out,
        )
        for change in plan.changes:
            name = record_name(config, change.domain)
            if change.new_id is None:
                print(f"    ; delete {name} TXT", file=out)
            else:
                rdata = txt_rdata(id_record_value(change.new_id)).to_text()
                print(f"    {name} {config.dns.txt_ttl} IN TXT {rdata}", file=out)
        for hosted in report.tlsrpt:
            if hosted.value is None:
                print(f"    ; delete {hosted.name} TXT", file=out)
            else:
                rdata = txt_rdata(hosted.value).to_text()
                print(f"    {hosted.name} {config.dns.txt_ttl} IN TXT {rdata}", file=out)
    _print_propagation(report, out)
    if report.failure is not None:
        return
    count = len(plan.changes)
    summary = f"{count} change{'s' if count != 1 else ''}, {len(plan.unchanged)} unchanged"
    if report.tlsrpt:
        summary += f", {len(report.tlsrpt)} hosted TLS-RPT record(s) set or deleted"
    if report.held:
        summary += f", {len(report.held)} waiting for a certificate"
    if dry:
        shown = " (the new ids shown are examples)" if count else ""
        print(f"dry run: {summary}; nothing was changed{shown}", file=sys.stderr)
    elif count and not report.manual_dns:
        print(f"apply: {summary}; served, published and confirmed", file=sys.stderr)
    else:
        print(f"apply: {summary}", file=sys.stderr)


def _print_propagation(report: Report, out: TextIO) -> None:
    """Per authoritative server: the delay until it showed the run's
    changes, or what it answered instead."""
    by_zone: dict[tuple[str, str], list[str]] = {}
    for arrival in report.propagation:
        by_zone.setdefault((arrival.zone, arrival.step), []).append(arrival.describe())
    for (zone, step), lines in by_zone.items():
        what = "hosted TLS-RPT records" if step == "tlsrpt" else "ids"
        print(f"authoritative servers of {zone}, {what} (delay since the UPDATE):", file=out)
        for line in lines:
            print(f"    {line}", file=out)


def _zone_servers(args: argparse.Namespace, config: ProviderConfig, names: list[str]) -> int:
    """`zone --servers`: each authoritative server against the primary."""
    from policy_host.check.authoritative import survey

    found = survey(config, names)
    if found is None:
        print(
            "policy-host zone: --servers needs dns.primary and an authoritative section "
            "(servers: a list, or ns for the zone's NS set)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.json:
        json.dump(found.as_dict(), sys.stdout, indent=2)
        print()
    else:
        print(f"authoritative servers of {found.zone} ({len(names)} names compared):")
        for line in found.lines():
            print(f"  {line}")
    return EXIT_OK if found.ok else EXIT_PROBLEMS


def cmd_zone(args: argparse.Namespace, config: ProviderConfig) -> int:
    from policy_host.publish.plan import iso
    from policy_host.publish.update import id_record_value, record_name, txt_rdata
    from policy_host.state import ACTIVE, WITHDRAWING, hosted_tlsrpt, read_records

    records = read_records(config.state_db)
    if args.servers:
        return _zone_servers(args, config, [record_name(config, d) for d in records])
    if args.json:
        print("policy-host zone: --json goes with --servers", file=sys.stderr)
        return EXIT_USAGE
    out = sys.stdout
    print(f"; MTA-STS id records (RFC 8461 section 3.1) below {config.id_zone}.", file=out)
    print(f"; From {config.state_db}; 'policy-host apply' rotates the ids.", file=out)
    for domain, record in records.items():
        if record.pending is not None:
            print(
                f"; {domain}: an apply run was interrupted here; run 'policy-host apply'",
                file=out,
            )
        if record.status not in (ACTIVE, WITHDRAWING) or record.policy_id is None:
            continue
        if record.status == WITHDRAWING:
            ends = record.withdrawal_ends()
            until = iso(ends) if ends is not None else "?"
            print(f"; {domain}: withdrawing (mode none) until {until}", file=out)
        rdata = txt_rdata(id_record_value(record.policy_id)).to_text()
        print(f"{record_name(config, domain)} {config.dns.txt_ttl} IN TXT {rdata}", file=out)
    hosted = hosted_tlsrpt(config.state_db)
    if hosted and config.tlsrpt.zone is not None:
        print(
            f"; Hosted TLS-RPT records (RFC 8460 section 3) below {config.tlsrpt.zone}.", file=out
        )
        for domain, value in hosted.items():
            name = config.tlsrpt_record_target(domain)
            rdata = txt_rdata(value).to_text()
            print(f"{name}. {config.dns.txt_ttl} IN TXT {rdata}", file=out)
    return EXIT_OK
