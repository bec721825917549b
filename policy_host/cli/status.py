"""``policy-host status``: the read-only status page on a private listener."""

from __future__ import annotations

import argparse
import sys

from policy_host.cli.output import EXIT_OK, EXIT_USAGE
from policy_host.model import InvalidValue
from policy_host.read.config import ProviderConfig
from policy_host.read.values import parse_server

DEFAULT_STATUS_BIND = "127.0.0.1:8090"


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    p = subparsers.add_parser(
        "status",
        parents=[common],
        help="serve the read-only status page for staff (private listener)",
        description="Serve the status page: every tenant with its mode, id, last check, "
        "certificate expiry, TLS report totals, promotion readiness and guard events; a page "
        "per tenant. It reads the stores only, never DNS. Bind it to loopback or a private "
        "address and put nginx with authentication in front (README, 'Status page'); never "
        "serve it on the public policy names.",
    )
    p.add_argument(
        "--bind",
        default=DEFAULT_STATUS_BIND,
        metavar="HOST:PORT",
        help=f"listen address (default {DEFAULT_STATUS_BIND})",
    )
    p.set_defaults(handler=cmd_status)


def cmd_status(args: argparse.Namespace, config: ProviderConfig) -> int:
    from werkzeug.serving import run_simple

    from policy_host.status.app import create_app

    try:
        host, port = parse_server(args.bind, default_port=8090)
    except InvalidValue as exc:
        print(f"policy-host status: --bind: {exc}", file=sys.stderr)
        return EXIT_USAGE
    app = create_app(config)
    print(f"policy-host status: serving http://{host}:{port}/", file=sys.stderr, flush=True)
    run_simple(host, port, app, threaded=True)
    return EXIT_OK
