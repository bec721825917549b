"""The `show` subcommand: a tenant's policy and the records it takes.

The customer adds two CNAME records (``mta-sts.`` and ``_mta-sts.``) and,
for TLS reports (RFC 8460), either a third CNAME to our hosted record or
our ``rua`` in a record of its own; the provider zone holds the id record
(and the hosted TLS-RPT record) that `apply` publishes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING, Any

from policy_host.cli.output import EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, print_problems
from policy_host.errors import Problem
from policy_host.model import (
    ID_RECORD_PREFIX,
    POLICY_HOST_PREFIX,
    TLSRPT_PREFIX,
    InvalidValue,
    Tenant,
    hostname,
)
from policy_host.read.config import ProviderConfig

if TYPE_CHECKING:
    from policy_host.results import Event

# TTL suggested for the records the customer adds.
CUSTOMER_TTL = 3600


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "show",
        parents=[common],
        help="a tenant's policy and the DNS records the customer must add",
        description="Print the policy served for DOMAIN and, in zone-file form, the two CNAME "
        "records the customer adds, the TXT name the provider publishes, and the two ways to "
        "send TLS reports to the provider (a third CNAME, or our rua in the customer's record).",
    )
    p.add_argument("domain", metavar="DOMAIN")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_show)


def tlsrpt_ways(config: ProviderConfig, domain: str, tenant: Tenant | None) -> dict[str, Any]:
    """The two ways a customer sends its TLS reports to us (RFC 8460 section
    3), and the hosted record `apply` published, if any."""
    from policy_host.publish.tlsrpt import hosted_value
    from policy_host.records import tlsrpt_record_value
    from policy_host.state import hosted_tlsrpt

    name = f"{TLSRPT_PREFIX}{domain}."
    target = config.tlsrpt_record_target(domain)
    hosted = hosted_value(config)
    rua = tenant.tlsrpt_rua if tenant is not None and tenant.tlsrpt_rua else config.tlsrpt.rua
    published = hosted_tlsrpt(config.state_db).get(domain)
    return {
        "name": name,
        "cname": f"{target}." if target is not None and hosted is not None else None,
        "hosted_value": hosted.decode("ascii") if hosted is not None else None,
        "published_value": published.decode("ascii") if published is not None else None,
        "own_record": tlsrpt_record_value(rua).decode("ascii") if rua else None,
    }


def _print_tlsrpt(ways: dict[str, Any], config: ProviderConfig) -> None:
    name = ways["name"]
    if ways["cname"] is None and ways["own_record"] is None:
        return
    print()
    print("; TLS reports (RFC 8460), one of these in the customer's zone:")
    if ways["cname"] is not None:
        print("; (a) a third CNAME; policy-host apply publishes the record it points to")
        print(f"{name}  {CUSTOMER_TTL}  IN  CNAME  {ways['cname']}")
    if ways["own_record"] is not None:
        print("; (b) the customer's own record, with this rua:")
        print(f'{name}  {CUSTOMER_TTL}  IN  TXT  "{ways["own_record"]}"')
    if ways["cname"] is not None:
        published = ways["published_value"] or "<not published yet: run 'policy-host apply'>"
        print("; Record in the provider zone for (a):")
        print(f'{ways["cname"]}  {config.dns.txt_ttl}  IN  TXT  "{published}"')


def cmd_show(args: argparse.Namespace, config: ProviderConfig) -> int:
    from policy_host.read.scan import SUFFIX
    from policy_host.read.tenantfile import MAX_TENANT_BYTES, domain_from_filename, parse_tenant
    from policy_host.read.yamlfile import read_limited
    from policy_host.render import render
    from policy_host.serve.snapshot import read_snapshot
    from policy_host.state import published_ids

    try:
        domain = hostname(args.domain.rstrip("."), what="domain").ascii
    except InvalidValue as exc:
        print(f"policy-host: {exc}", file=sys.stderr)
        return EXIT_USAGE
    path = config.tenants_dir / f"{domain}{SUFFIX}"
    problems: list[Problem] = []
    tenant = None
    if path.exists():
        data = read_limited(path, MAX_TENANT_BYTES)
        if isinstance(data, Problem):
            problems.append(data)
        elif domain_from_filename(path, config, problems) is not None:
            tenant = parse_tenant(path, data, domain, problems)
    snapshot = read_snapshot(config.snapshot_path)
    served = snapshot.entries.get(domain) if snapshot else None
    if tenant is None and served is None:
        print_problems(problems, sys.stderr)
        reason = "is not valid" if path.exists() else "does not exist"
        print(f"policy-host: {domain}: {path} {reason} and nothing is served", file=sys.stderr)
        return EXIT_PROBLEMS
    body = render(tenant.policy) if tenant else served.body  # type: ignore[union-attr]
    live = served is not None and served.body == body
    records = [
        (f"{POLICY_HOST_PREFIX}{domain}.", "CNAME", f"{config.policy_host}."),
        (f"{ID_RECORD_PREFIX}{domain}.", "CNAME", f"{config.id_record_target(domain)}."),
    ]
    txt_name = f"{config.id_record_target(domain)}."
    ways = tlsrpt_ways(config, domain, tenant)
    if args.json:
        json.dump(
            {
                "domain": domain,
                "url": f"https://mta-sts.{domain}/.well-known/mta-sts.txt",
                "policy": body.decode("ascii"),
                "served": live,
                "customer_records": [{"name": n, "type": t, "value": v} for n, t, v in records],
                "provider_txt_name": txt_name,
                "tlsrpt": ways,
                "problems": [p.as_dict() for p in problems],
                "events": [_event_dict(e) for e in mode_events(config, domain)],
            },
            sys.stdout,
            indent=2,
        )
        print()
        return EXIT_PROBLEMS if any(p.is_error for p in problems) else EXIT_OK
    print_problems(problems, sys.stderr)
    state = "served now" if live else "not served yet: run 'policy-host reload'"
    if tenant is None:
        state = "the file is broken; this is the last good policy, still served"
        if not path.exists():
            state = "tenant file removed: 'policy-host apply' withdraws it, then deletes it"
    print(f"; Policy for https://mta-sts.{domain}/.well-known/mta-sts.txt ({state})")
    sys.stdout.write(body.decode("ascii").replace("\r\n", "\n"))
    print()
    print(f"; Records the customer adds to the {domain} zone, once:")
    width = max(len(n) for n, _, _ in records)
    for name, rtype, value in records:
        print(f"{name:<{width}}  {CUSTOMER_TTL}  IN  {rtype}  {value}")
    print()
    print("; Record in the provider zone (policy-host apply publishes and rotates it):")
    policy_id = published_ids(config.state_db).get(domain, "<not published yet>")
    print(f'{txt_name}  {config.dns.txt_ttl}  IN  TXT  "v=STSv1; id={policy_id};"')
    if tenant is not None and tenant.policy.mode != "none":
        # RFC 8461 section 8: senders may hold the old policy for its max_age.
        print()
        print("; Moving MX hosts safely (RFC 8461 section 8): add the new MX to mx: and run")
        print(f"; 'policy-host apply'; wait max_age ({tenant.policy.max_age} s) so no sender")
        print("; still caches a policy without it; then change the MX records; then drop the")
        print("; old entry and apply again (apply warns whenever an mx entry is dropped).")
    for event in mode_events(config, domain)[:1]:
        # Whatever is served must be explainable from the tenant file and the state.
        when = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(event.at))
        print()
        print(f"; {event.kind} at {when}: {event.message}")
        print("; (policy-host promote and the check guard keep every such event with its evidence)")
    _print_tlsrpt(ways, config)
    return EXIT_PROBLEMS if any(p.is_error for p in problems) else EXIT_OK


def mode_events(config: ProviderConfig, domain: str) -> list[Event]:
    """Promotions and step downs of ``domain``, newest first."""
    from policy_host.results import PROMOTED, STEPPED_DOWN, read_events

    return [e for e in read_events(config.results_db, domain) if e.kind in (PROMOTED, STEPPED_DOWN)]


def _event_dict(event: Event) -> dict[str, object]:
    return {"at": event.at, "kind": event.kind, "message": event.message}
