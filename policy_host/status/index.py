"""What the status page lists: one row per tenant, from the stores only.

The apply state gives the mode and id served, the results store the last
check, the certificate expiry and the events; readiness comes from
``promote.evidence``. Never DNS. Building the rows for 100,000 tenants
takes seconds, so ``status.refresh`` keeps them and rebuilds them aside.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from policy_host.certs.attempts import recorded_certificates
from policy_host.model import MODES, POLICY_HOST_PREFIX, InvalidValue, Policy, Tenant
from policy_host.promote.evidence import assess_from, policy_mode, published_of
from policy_host.read.config import ProviderConfig
from policy_host.read.promotion import DAY
from policy_host.results import Event, latest_event_per_domain, read_checks
from policy_host.state import WITHDRAWING, read_records

FILTERS = ("all", "problems", "ready", "withdrawal")
SORTS = ("domain", "mode", "check", "certificate", "event")
CERT_WARN_DAYS = 21


@dataclass(frozen=True)
class Row:
    domain: str
    mode: str | None
    policy_id: str | None
    withdrawing: bool
    check_status: str | None
    check_at: float | None
    check_codes: tuple[str, ...]
    cert_not_after: float | None
    ready: bool | None  # None: not in testing
    holds: tuple[str, ...]
    event: Event | None
    problem: bool


def policy_of(body: bytes) -> Policy | None:
    """The fields of a rendered policy (RFC 8461 section 3.2)."""
    fields: dict[str, list[str]] = {}
    for line in body.decode("ascii", "replace").split("\r\n"):
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), []).append(value.strip())
    try:
        return Policy(
            fields.get("mode", ["?"])[0],
            tuple(fields.get("mx", [])),
            int(fields.get("max_age", ["-1"])[0]),
        )
    except (InvalidValue, ValueError):
        return None


def build_rows(config: ProviderConfig, now: float) -> list[Row]:
    """Every tenant's row, in domain order. Each store is read once, in
    bulk; readiness is judged from that same evidence."""
    records = read_records(config.state_db)
    checks = read_checks(config.results_db)
    certs = recorded_certificates(config.certs_db)
    events = latest_event_per_domain(config.results_db)
    testing: list[Tenant] = []
    modes: dict[str, str] = {}
    for domain, rec in records.items():
        body = rec.pending.body if rec.pending is not None else rec.body
        # The mode alone for the list; a full (validating) parse only for
        # the testing tenants readiness judges: a tenth of them, typically.
        mode = policy_mode(body) if body else None
        if mode not in MODES:
            continue
        assert mode is not None and body is not None
        if mode == "testing" and rec.status != WITHDRAWING:
            policy = policy_of(body)
            if policy is None:
                continue
            testing.append(Tenant(domain, policy, str(config.tenants_dir / f"{domain}.yaml")))
        modes[domain] = mode
    # Readiness needs the published policy of the testing tenants only.
    published = published_of({t.domain: records[t.domain] for t in testing})
    judged = assess_from(config, testing, now, published, checks, certs)
    readiness = {a.tenant.domain: a.readiness for a in judged}
    rows = []
    for domain in sorted(records.keys() | checks.keys()):
        record = records.get(domain)
        check = checks.get(domain)
        mode = modes.get(domain)
        cert = certs.get(POLICY_HOST_PREFIX + domain)
        ready = readiness.get(domain)
        withdrawing = record is not None and record.status == WITHDRAWING
        event = events.get(domain)
        # A certificate we hold that runs out soon (a tenant without a record
        # of one, e.g. certificates brought by the provider, is not judged).
        cert_bad = mode is not None and cert is not None and cert - now < CERT_WARN_DAYS * DAY
        problem = (
            (check is not None and check.status != "ok")
            or cert_bad
            or (event is not None and event.kind == "guard-alert" and event.at > now - DAY)
        )
        rows.append(
            Row(
                domain,
                mode,
                record.policy_id if record else None,
                withdrawing,
                check.status if check else None,
                check.checked if check else None,
                tuple(check.codes) if check else (),
                cert,
                None if ready is None else ready.ready,
                tuple(ready.codes) if ready else (),
                event,
                bool(problem),
            )
        )
    return rows


def select(rows: Sequence[Row], query: str, kind: str, sort: str, descending: bool) -> list[Row]:
    """The rows a search, a filter and a sort leave; ``rows`` in domain
    order (as ``build_rows`` gives them), so that order costs no sort."""
    q = query.strip().lower()
    chosen = [r for r in rows if q in r.domain] if q else list(rows)
    if kind == "problems":
        chosen = [r for r in chosen if r.problem]
    elif kind == "ready":
        chosen = [r for r in chosen if r.ready]
    elif kind == "withdrawal":
        chosen = [r for r in chosen if r.withdrawing]
    keys: dict[str, Callable[[Row], object]] = {
        "domain": lambda r: r.domain,
        "mode": lambda r: (r.mode or "", r.domain),
        "check": lambda r: ({"fail": 0, "warn": 1, "ok": 2}.get(r.check_status or "", 3), r.domain),
        "certificate": lambda r: (r.cert_not_after or 0.0, r.domain),
        "event": lambda r: (r.event.at if r.event else 0.0, r.domain),
    }
    if sort == "domain":
        return chosen[::-1] if descending else chosen
    chosen.sort(key=keys[sort], reverse=descending)  # type: ignore[arg-type]
    return chosen
