"""``policy-host promote``: which `testing` tenants are ready for `enforce`.

    policy-host promote [DOMAIN...] [--json] [--write [--auto] [--apply] [--dry-run]]

Reads the stores only (apply state, check and certs results, TLS reports);
``--write`` changes ``mode: testing`` to ``mode: enforce`` in each ready
tenant's file (one line), which `apply` then publishes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from policy_host.cli.output import EXIT_OK, EXIT_USAGE
from policy_host.cli.owner import refusal
from policy_host.model import InvalidValue, hostname
from policy_host.read.config import ProviderConfig

if TYPE_CHECKING:
    from policy_host.promote.evidence import Assessment

DESCRIPTION = """\
For each tenant in mode testing, say whether it is ready for enforce, with every
reason it is held back: in testing at least max_age and promote.min_testing_days;
the last check found every MX host matching the policy; the policy name has a
certificate valid for promote.min_certificate_days more; TLS reports over
promote.report_days show promote.min_sessions successful sessions from
promote.min_organizations organisations, to every MX host in DNS, a failure
rate under promote.max_failure_rate and no failure about the policy host. It reads
what check, certs, apply and the report ingester stored; it never asks DNS.
"""

EPILOG = """\
--write edits the tenant file of each ready tenant (mode: testing -> mode: enforce,
that line only, with a comment saying when) and records the evidence; run
'policy-host apply' to publish. With --auto only tenants whose promote.auto is true;
with --apply, 'apply' runs at once when a file was edited (policy-host-promote.timer
runs 'promote --write --auto --apply'). Exit 0; 1 if a file could not be edited;
2 usage error; otherwise apply's exit status.
"""


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    p = subparsers.add_parser(
        "promote",
        parents=[common],
        help="which testing tenants are ready for enforce (and promote them)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("domains", nargs="*", metavar="DOMAIN", help="only these tenants")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--write", action="store_true", help="set ready tenants to enforce")
    p.add_argument("--auto", action="store_true", help="with --write: only promote.auto tenants")
    p.add_argument(
        "--apply",
        action="store_true",
        help="with --write: run 'policy-host apply' when a tenant file was edited",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="with --write: show the edits, change nothing"
    )
    p.set_defaults(handler=cmd_promote)


def cmd_promote(args: argparse.Namespace, config: ProviderConfig) -> int:
    from policy_host.promote.act import carry_out, plan, promotion
    from policy_host.promote.edit import EditError
    from policy_host.promote.evidence import assess
    from policy_host.read.tenants import load_tenants

    if args.apply and not args.write:
        print("policy-host promote: --apply goes with --write", file=sys.stderr)
        return EXIT_USAGE
    # apply writes files the server reads: only their owner may (cli.owner).
    refused = refusal("apply", config.state_dir, dry_run=args.dry_run or not args.apply)
    if refused:
        print(refused, file=sys.stderr)
        return EXIT_USAGE
    try:
        wanted = {hostname(d.rstrip("."), what="domain").ascii for d in args.domains}
    except InvalidValue as exc:
        print(f"policy-host promote: {exc}", file=sys.stderr)
        return EXIT_USAGE
    loaded = load_tenants(config)
    unknown = sorted(wanted - set(loaded.tenants))
    if unknown:
        print(f"policy-host promote: no valid tenant {', '.join(unknown)}", file=sys.stderr)
        return EXIT_USAGE
    now = time.time()
    chosen = [
        t
        for d, t in sorted(loaded.tenants.items())
        if (d in wanted or not wanted) and t.policy.mode == "testing"
    ]
    assessments = assess(config, chosen, now)
    changes = [
        promotion(a.tenant.domain, Path(a.tenant.source), a.readiness.evidence, now)
        for a in assessments
        if args.write and a.readiness.ready and (a.settings.auto or not args.auto)
    ]
    status = EXIT_OK
    edits: dict[str, str] = {}
    try:
        if args.dry_run:
            for change in changes:
                edits[change.domain] = plan(change).diff()
        elif changes:
            lock = config.state_dir / "promote.lock"
            for change, edit in carry_out(changes, lock, config.results_db, now):
                edits[change.domain] = edit.diff()
    except EditError as exc:
        print(f"policy-host promote: {exc}", file=sys.stderr)
        status = 1
    if args.apply and edits and not args.dry_run and status == EXIT_OK:
        status = _apply(config)
    if args.json:
        out = [
            {**a.readiness.as_dict(), "written": a.tenant.domain in edits and not args.dry_run}
            for a in assessments
        ]
        json.dump(
            {"tenants": out, "ready": sum(a.readiness.ready for a in assessments)},
            sys.stdout,
            indent=2,
        )
        print()
    else:
        _print(assessments, edits, args.dry_run)
    return status


def _print(assessments: Sequence[Assessment], edits: dict[str, str], dry_run: bool) -> None:
    for a in assessments:
        r = a.readiness
        if r.ready:
            print(f"ready  {r.domain}")
        else:
            print(f"held   {r.domain}")
            for hold in r.holds:
                print(f"       {hold.code}: {hold.message}")
        if r.domain in edits:
            sys.stdout.write(edits[r.domain])
    ready = sum(a.readiness.ready for a in assessments)
    verb = "would promote" if dry_run else "promoted"
    print(
        f"{len(assessments)} tenants in testing: {ready} ready; {verb} {len(edits)}",
        file=sys.stderr,
    )


def _apply(config: ProviderConfig) -> int:
    """`apply` after a promotion, its report on stderr (stdout stays
    promote's, so --json output is one document)."""
    from policy_host.cli.apply import cmd_apply

    print("policy-host promote: running apply for the promoted tenants", file=sys.stderr)
    with contextlib.redirect_stdout(sys.stderr):
        return cmd_apply(argparse.Namespace(dry_run=False, json=False, changed=None), config)
