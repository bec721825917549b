"""Load through nginx while `apply` changes policies, for as long as you like.

    sudo .venv/bin/python bench/load_bench.py [--tenants N] [--seconds S]
        [--clients N] [--changes-per-round N] [--per-connection N]
        [--reload-nginx-every N] [--sighup-every N] [--json]

Starts the production front in a network namespace of its own (root only;
``tests/support/front.py``): nginx with this project's config on 443, one
certificate per tenant, ``policy-host serve`` behind it, knotd taking the
TSIG-signed UPDATEs. Then, for ``--seconds``: ``--clients`` threads fetch
``https://mta-sts.<domain>/.well-known/mta-sts.txt`` over and over (SNI and
Host the tenant's name, many loopback source addresses), while a changer
rewrites ``--changes-per-round`` tenant files and runs ``policy-host apply``
in a loop, reloading nginx and the gunicorn master now and then.

Prints total requests, non-200 answers for hosted names (target 0), 5xx
(target 0), and how many bodies were verified to be a complete, valid
policy equal to the tenant's old or new version (target: all). Exit status
0 when every target is met, 1 otherwise. The suite runs a short version
(``tests/test_load.py``).

With ``--per-connection`` above 1, a request sent on a reused connection
that nginx closes without a byte (its old workers close idle keep-alive
connections on a reload) is retried on a new connection, as HTTP clients
do (RFC 9112 section 9.3.1), and counted apart; senders fetch one policy
per connection.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support.front import FRONT_BINARIES, Front  # noqa: E402
from support.loadrun import run_load, tenant_policy  # noqa: E402
from support.netns import netns_supported  # noqa: E402
from support.procs import MissingBinaryError, require_binary  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--changes-per-round", type=int, default=20)
    parser.add_argument("--per-connection", type=int, default=1, help="requests per TLS connection")
    parser.add_argument("--reload-nginx-every", type=int, default=3, help="apply rounds; 0: never")
    parser.add_argument("--sighup-every", type=int, default=4, help="apply rounds; 0: never")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    problems = [why for why in [netns_supported()] if why]
    for name in FRONT_BINARIES:
        try:
            require_binary(name)
        except MissingBinaryError as exc:
            problems.append(str(exc))
    if problems:
        print("load_bench: " + "; ".join(problems), file=sys.stderr)
        return 2

    domains = [f"tenant{n:05d}.example" for n in range(args.tenants)]
    with tempfile.TemporaryDirectory(prefix="load-bench-") as tmp:
        tenants = {domain: tenant_policy(domain, 0) for domain in domains}
        with Front(Path(tmp), tenants, workers=args.workers, verify_timeout=30) as front:
            first = front.cli("apply", timeout=600)
            if first.returncode != 0:
                print(first.stdout + first.stderr, file=sys.stderr)
                return 2
            report = run_load(
                front,
                domains,
                seconds=args.seconds,
                clients=args.clients,
                changes_per_round=args.changes_per_round,
                per_connection=args.per_connection,
                reload_nginx_every=args.reload_nginx_every,
                sighup_every=args.sighup_every,
            )
    if args.json:
        json.dump(
            {
                "seconds": round(report.seconds, 2),
                "tenants": report.tenants,
                "requests": report.requests,
                "non_200": report.non_200,
                "server_errors": report.server_errors,
                "verified": report.verified,
                "retried_keepalive": report.retried,
                "wrong": report.wrong,
                "statuses": {str(k): v for k, v in report.statuses.items()},
                "errors": dict(report.errors),
                "applies": report.applies,
                "changes": report.changes,
                "nginx_reloads": report.nginx_reloads,
                "gunicorn_reloads": report.gunicorn_reloads,
                "apply_failures": report.apply_failures,
                "ok": report.ok,
            },
            sys.stdout,
            indent=2,
        )
        print()
    else:
        print("\n".join(report.lines()))
        for line in report.wrong[:10]:
            print(f"wrong: {line}")
        for line in report.apply_failures[:3]:
            print(f"apply failed: {line}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
