"""``policy-host certs``: arguments and the command (``certs.run`` does the work)."""

from __future__ import annotations

import argparse

from policy_host.read.config import ProviderConfig


def cmd_certs(args: argparse.Namespace, config: ProviderConfig) -> int:
    from policy_host.certs.run import run_certs  # dnspython and sqlite only when it runs

    status = run_certs(
        config,
        dry_run=args.dry_run,
        only=args.domains,
        delete_removed=args.delete_removed,
        ignore_backoff=args.ignore_backoff,
        reload_nginx=not args.no_reload,
    )
    if not args.dry_run:
        # What the serving nodes get at the next push (`apply`, `nodes --push`).
        from policy_host.nodes.certcopy import copy_certificates

        copy_certificates(config)
    return status


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = sub.add_parser(
        "certs",
        parents=[common],
        help="get a certificate per mta-sts.<domain> (certbot), update nginx",
        description="For each hosted domain whose mta-sts.<domain> is a CNAME to policy_host "
        "(and whose CAA allows the CA), run `certbot certonly --webroot` unless a valid "
        "certificate exists, the last order failed within acme.backoff seconds, or "
        "acme.orders_per_hour orders were made in the last hour. Then regenerate nginx's "
        "server blocks (nginx -t, reload). Exit 1 if an order failed.",
    )
    p.add_argument("domains", nargs="*", metavar="DOMAIN", help="only these domains")
    p.add_argument(
        "--dry-run", action="store_true", help="print the certbot commands; change nothing"
    )
    p.add_argument(
        "--delete-removed",
        action="store_true",
        help="delete certificates of names no longer hosted (after nginx stopped using them)",
    )
    p.add_argument(
        "--ignore-backoff", action="store_true", help="retry names whose last order failed"
    )
    p.add_argument("--no-reload", action="store_true", help="do not reload nginx")
    p.set_defaults(handler=cmd_certs)
