"""The ``policy-host`` command line.

Exit status: 0 all good; 1 problems found (invalid tenants, failed checks);
2 usage or provider-config errors; 3 anything else that stopped the command
(the server is not running, a file cannot be written).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence

from policy_host import __version__
from policy_host.cli.output import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_PROBLEMS,
    EXIT_USAGE,
    print_problems,
)
from policy_host.cli.owner import refusal
from policy_host.errors import ConfigError, PolicyHostError
from policy_host.model import POLICY_HOST_PREFIX, InvalidValue
from policy_host.read.config import (
    CONFIG_ENV,
    DEFAULT_CONFIG,
    ProviderConfig,
    config_path,
    load_config,
)
from policy_host.read.values import parse_bind

log = logging.getLogger("policy_host")


Handler = Callable[[argparse.Namespace, ProviderConfig], int]


def cmd_validate(args: argparse.Namespace, config: ProviderConfig) -> int:
    from policy_host.read.tenants import default_jobs, load_tenants

    # Every core: 100,000 files take seconds of CPU (docs/performance.md).
    result = load_tenants(config, jobs=default_jobs(), check_only=True)
    errors = len(result.errors)
    warnings = len(result.problems) - errors
    if args.json:
        json.dump(
            {
                "config": str(config.path),
                "tenants_dir": str(config.tenants_dir),
                "files": result.files,
                "valid": len(result.sources),
                "errors": errors,
                "warnings": warnings,
                "problems": [p.as_dict() for p in result.problems],
            },
            sys.stdout,
            indent=2,
        )
        print()
    else:
        print_problems(result.problems, sys.stdout)
        if not args.quiet:
            verdict = "ok" if errors == 0 else "FAILED"
            print(
                f"{config.path}: {verdict}: {result.files} tenant files, "
                f"{len(result.sources)} valid, {errors} errors, {warnings} warnings",
                file=sys.stderr,
            )
    # Like `nginx -t`, but a warning is a finding too: exit 0 only when clean.
    if errors or (warnings and not args.allow_warnings):
        return EXIT_PROBLEMS
    return EXIT_OK


def cmd_serve(args: argparse.Namespace, config: ProviderConfig) -> int:
    from policy_host.serve.server import PolicyServer  # gunicorn is only needed here

    config.state_dir.mkdir(parents=True, exist_ok=True)
    if args.pushed and not config.snapshot_path.exists():
        print(
            f"policy-host: {config.snapshot_path}: nothing pushed yet; on the control node run "
            "'policy-host nodes --push NAME' first",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    server = PolicyServer(
        config,
        bind=args.bind or config.serve.bind,
        workers=args.workers or config.serve.workers,
        threads=args.threads or config.serve.threads,
        access_log=args.access_log,
        pushed=args.pushed,
    )
    server.run()
    return EXIT_OK


def cmd_reload(args: argparse.Namespace, config: ProviderConfig) -> int:
    if args.changed:
        from policy_host.cli.changed import reload_changed

        status = reload_changed(config, args.changed, dry_run=args.dry_run)
        if status is not None:
            return status
    from policy_host.read.tenants import default_jobs, load_tenants
    from policy_host.serve.compiler import served_from_state
    from policy_host.serve.server import go_live, running_pid
    from policy_host.serve.snapshot import SnapshotMemo, merge, served_policies
    from policy_host.serve.web import WATCH_INTERVAL

    pid = running_pid(config)  # no server: nothing would go live, say so first
    memo = SnapshotMemo()  # the compile reuses what is read here
    if not args.dry_run:
        memo.load.scan_ahead(config, default_jobs())  # while what is served now is read
    found = served_policies(config.snapshot_path, memo)
    before = found[0] if found is not None else {}
    if args.dry_run:
        result = load_tenants(config)
        after, kept = merge(result, before, served_from_state(config, before))
    else:
        compiled = go_live(config, memo=memo)
        after, result, kept = compiled.snapshot, compiled.result, compiled.kept
    print_problems(result.problems, sys.stdout)
    for domain in sorted(result.broken):
        print(
            f"{domain}: not changed: "
            + ("its last good policy stays served" if domain in kept else "not served"),
            file=sys.stderr,
        )
    old = {h.removeprefix(POLICY_HOST_PREFIX): body for h, body in before.items()}
    changed = sorted(d for d, e in after.entries.items() if old.get(d) != e.body)
    removed = sorted(set(old) - set(after.entries))
    for domain in changed:
        print(f"{domain}: {'new' if domain not in old else 'changed'}", file=sys.stderr)
    for domain in removed:
        print(f"{domain}: no longer served", file=sys.stderr)
    verb = "would serve" if args.dry_run else "serving"
    print(
        f"{verb} {len(after.entries)} policies ({len(changed)} new or changed, "
        f"{len(removed)} removed); server pid {pid}"
        + ("" if args.dry_run else f" picks them up within {WATCH_INTERVAL} s"),
        file=sys.stderr,
    )
    return EXIT_PROBLEMS if result.errors else EXIT_OK


def _bind_arg(text: str) -> str:
    try:
        return parse_bind(text)
    except InvalidValue as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help=f"provider config (default: ${CONFIG_ENV}, then {DEFAULT_CONFIG})",
    )
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="log details and tracebacks"
    )
    parser = argparse.ArgumentParser(
        prog="policy-host",
        description="Serve and manage MTA-STS (RFC 8461) policies for many customer domains.",
        parents=[common],
        epilog="Exit status: 0 ok, 1 problems found, 2 usage or config error, 3 other failure.",
    )
    parser.add_argument("--version", action="version", version=f"policy-host {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "validate",
        parents=[common],
        help="check the provider config and every tenant file (like nginx -t)",
        description="Check the provider config and every tenant file. Prints each problem as "
        "path:line: message; changes nothing. Exit 0 only when clean, 1 when any tenant has an "
        "error or a warning (--allow-warnings: errors only), 2 when the provider config itself "
        "is broken.",
    )
    p.add_argument(
        "--allow-warnings", action="store_true", help="exit 0 when only warnings are found"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("-q", "--quiet", action="store_true", help="no summary line")
    p.set_defaults(handler=cmd_validate)

    p = sub.add_parser(
        "serve",
        parents=[common],
        help="run the policy server (gunicorn)",
        description="Run gunicorn serving /.well-known/mta-sts.txt for every tenant. It compiles "
        "the tenants on start; later changes go live with 'policy-host reload' or 'apply' (the "
        "workers read the served-policy database they update). A broken tenant file keeps "
        "its last good policy. SIGHUP to the master recompiles and replaces the workers: for "
        "code upgrades.",
    )
    p.add_argument(
        "--bind", type=_bind_arg, metavar="HOST:PORT", help="listen address (or unix:PATH)"
    )
    p.add_argument("--workers", type=int, metavar="N", help="worker processes")
    p.add_argument("--threads", type=int, metavar="N", help="threads per worker")
    p.add_argument("--access-log", action="store_true", help="log every request to stderr")
    p.add_argument(
        "--pushed",
        action="store_true",
        help="on a serving node: serve the snapshot the control node pushed; never compile",
    )
    p.set_defaults(handler=cmd_serve)

    p = sub.add_parser(
        "reload",
        parents=[common],
        help="make tenant changes live in the running server",
        description="Compile the tenants into the served-policy snapshot; the running server's "
        "workers serve it within a second, with no restart and no failed request. "
        "Broken tenants keep their last good policy. Exit 1 if any tenant has an error (the "
        "others still go live), 3 if no server is running. 'policy-host apply' does this too, "
        "and also rotates the published ids.",
    )
    p.add_argument("--dry-run", action="store_true", help="report what would change; write nothing")
    p.add_argument(
        "--changed",
        nargs="+",
        metavar="FILE",
        help="compile only these tenant files ('-': read the paths from stdin, one a line, as "
        "'git diff --name-only' prints them); files not ending .yaml are skipped. Falls back "
        "to compiling every file when that is needed",
    )
    p.set_defaults(handler=cmd_reload)

    from policy_host.cli.changed import register_watch

    register_watch(sub, common)

    from policy_host.cli import show as show_cli  # show: a tenant's policy and records

    show_cli.register(sub, common)

    from policy_host.cli import apply as apply_cli  # apply and zone: rotate and publish policy ids

    apply_cli.register(sub, common)

    from policy_host.cli import certs as certs_cli  # production stack: certificates and nginx
    from policy_host.cli import nginx as nginx_cli

    certs_cli.register(sub, common)
    nginx_cli.register(sub, common)

    from policy_host.cli import (
        check as checkcmd,  # check: each customer's DNS and HTTPS vs what is served
    )

    checkcmd.register(sub, common)

    from policy_host.cli import reports as reportscmd  # TLS reports: ingest and summaries

    reportscmd.register(sub, common)

    from policy_host.cli import promote as promotecmd  # promote: testing -> enforce on evidence

    promotecmd.register(sub, common)

    from policy_host.cli import status as statuscmd  # status: the staff page, read-only

    statuscmd.register(sub, common)

    from policy_host.cli import nodes as nodescmd  # nodes: what each serving node serves

    nodescmd.register(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    status = _main(argv)
    if argv is None:
        # Run as the command: all it wrote is closed. Skip freeing every
        # object one at a time on the way out (with 100,000 tenants loaded
        # that alone takes a second; docs/performance.md).
        logging.shutdown()
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(status)
    return status


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = getattr(args, "debug", False)
    logging.basicConfig(
        level=logging.DEBUG
        if debug
        else (logging.INFO if args.command == "serve" else logging.WARNING),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    path = config_path(getattr(args, "config", None))
    try:
        config = load_config(path)
        refused = refusal(args.command, config.state_dir, dry_run=getattr(args, "dry_run", False))
        if refused is not None:
            print(refused, file=sys.stderr)
            # An MTA's pipe must keep the message and retry, not bounce it.
            return _config_error_status(args)
        handler: Handler = args.handler
        return handler(args, config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        print(f"policy-host: the provider config {path} is not valid", file=sys.stderr)
        return _config_error_status(args)
    except PolicyHostError as exc:
        print(f"policy-host: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: one line for the user, the traceback in debug
        log.debug("unexpected error", exc_info=True)
        print(
            f"policy-host: internal error: {exc!r} (run with --debug for details)", file=sys.stderr
        )
        return EXIT_FAILURE


def _config_error_status(args: argparse.Namespace) -> int:
    """An MTA's pipe (`reports ingest` from standard input) bounces a message
    on any status but 0 and 75; a broken provider config is the provider's
    to fix, so the MTA should keep the message and retry (EX_TEMPFAIL)."""
    from policy_host.cli.reports import EX_TEMPFAIL, reads_stdin

    if args.command == "reports" and reads_stdin(args.args):
        return EX_TEMPFAIL
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
