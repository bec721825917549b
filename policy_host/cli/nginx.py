"""``policy-host nginx-conf``: arguments and the command (``certs.nginxconf``
does the work)."""

from __future__ import annotations

import argparse
import sys

from policy_host.read.config import ProviderConfig


def cmd_nginx_conf(args: argparse.Namespace, config: ProviderConfig) -> int:
    # Imported here: other commands start without it.
    from policy_host.certs.nginxconf import (
        has_certificate,
        hosted_domains,
        policy_host_name,
        render_conf,
        report,
        sync,
    )

    if args.print:
        hosts = [
            policy_host_name(d)
            for d in sorted(hosted_domains(config))
            if has_certificate(config.acme, policy_host_name(d))
        ]
        sys.stdout.write(render_conf(config, hosts).decode("ascii"))
        return 0
    result = sync(config, dry_run=args.dry_run, reload=not args.no_reload)
    report(result, dry_run=args.dry_run)
    return 0


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = sub.add_parser(
        "nginx-conf",
        parents=[common],
        help="write nginx's per-tenant server blocks, test and reload nginx",
        description="Generate nginx.tenants_conf: one server block per hosted mta-sts.<domain> "
        "that has a certificate (names without one are refused at the TLS handshake). When the "
        "file changes it is written atomically, `nginx -t` must pass (else the previous file is "
        "put back), then nginx is reloaded. `policy-host certs` does this too.",
    )
    p.add_argument("--dry-run", action="store_true", help="say what would change; write nothing")
    p.add_argument("--no-reload", action="store_true", help="write and test, but do not reload")
    p.add_argument("--print", action="store_true", help="print the generated file and exit")
    p.set_defaults(handler=cmd_nginx_conf)
