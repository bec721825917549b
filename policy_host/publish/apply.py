"""`apply`: make served policies and published ids match the tenant files.

RFC 8461 section 8 fixes the order: a sender that sees a new id fetches the
policy at once and caches it under that id, so a new policy must be served
*before* its id is published. Per run, under a lock:

1. validate every tenant (any error: stop, nothing changed);
2. plan (pure, ``plan``): new, changed and removed tenants, each with a new id;
   a new tenant whose name has no valid certificate yet (with an ``acme``
   section) is served but held back: its first id waits for `certs`;
3. record the pending changes in the state, reload the server (the compile
   says what it changed) and verify that every upstream serves exactly
   those bytes, and those of every planned change, and that every worker
   of the app behind them holds the snapshot just written (``verify``);
4. with serving nodes, push to each and verify it serves them (``nodes``);
5. publish: one TSIG-signed RFC 2136 UPDATE per batch to the primary
   (``send``);
6. confirm by reading the TXT records back from the primary, then from
   every other authoritative server of the zone (``confirm``); commit;
7. stop serving the withdrawals whose TXT is gone; then the hosted
   TLS-RPT records, sent and confirmed the same way.

Every step can be repeated, so a run that stops anywhere (an error, a
crash) is completed by the next one.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from policy_host.errors import PolicyHostError
from policy_host.fileio import LockHeld, locked
from policy_host.publish.confirm import confirm_ids
from policy_host.publish.environment import ChangedDomains, Environment
from policy_host.publish.nodes import dry_run_note, push_and_verify, serve_on_nodes
from policy_host.publish.plan import Plan, make_plan
from policy_host.publish.report import Report
from policy_host.publish.send import (
    assumed_zone,
    id_updates,
    send_ids,
    send_tlsrpt,
    shown,
    tlsrpt_updates,
)
from policy_host.publish.steps import (
    COMMIT,
    CONFIRM,
    NODES,
    PLAN,
    PUBLISH,
    RECORD,
    RELOAD,
    TLSRPT,
    UNSERVE,
    VALIDATE,
    VERIFY,
    ApplyError,
)
from policy_host.publish.tlsrpt import plan_tlsrpt
from policy_host.publish.update import PublishError
from policy_host.publish.verify import verify_upstreams, verify_workers
from policy_host.read.config import ProviderConfig
from policy_host.read.parsecache import gc_paused
from policy_host.read.tenants import (
    LoadResult,
    default_jobs,
    load_named,
    load_tenants,
    named_domains,
)
from policy_host.serve.compiler import changed_hosts
from policy_host.serve.snapshot import merge, served_policies
from policy_host.state import (
    NEW,
    PUBLISHED,
    SERVED,
    Record,
    Store,
    fallback_policies,
    hosted_tlsrpt,
    read_records,
)

log = logging.getLogger(__name__)

LOCK_NAME = "apply.lock"


@contextlib.contextmanager
def apply_lock(state_dir: Path) -> Iterator[None]:
    """Hold ``state_dir/apply.lock``: two runs never overlap."""
    path = state_dir / LOCK_NAME
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(locked(path, write_pid=True))
        except LockHeld as held:
            raise PolicyHostError(
                f"another policy-host apply is running (pid {held.holder or '?'}, lock {path}); "
                "try again when it has finished"
            ) from None
        except OSError as exc:  # a full disk: say so, not "internal error"
            raise PolicyHostError(f"{path}: cannot take the apply lock: {exc.strerror}") from exc
        yield


def run(
    config: ProviderConfig,
    env: Environment,
    *,
    dry_run: bool = False,
    changed: list[str] | None = None,
) -> Report:
    """One `apply` run. A step that fails is in ``report.failure`` (with the
    tenants it stopped for); only a held lock or an unusable state raise.
    ``changed``: only these tenant files (names in the tenants folder, as
    a deploy hook names what changed) are validated, planned, served and
    published; every other tenant, and withdrawals already under way, wait
    for a run without it."""
    report = Report(dry_run=dry_run)
    try:
        if dry_run:
            _dry_run(config, env, report, changed)
        else:
            with apply_lock(config.state_dir):
                _run(config, env, report, changed)
    except ApplyError as exc:
        report.failure = exc
        log.info("%s", exc)  # the caller reports it
    return report


def _validated(config: ProviderConfig, report: Report, changed: list[str] | None) -> LoadResult:
    named = load_named(config, changed) if changed is not None else None
    if changed is not None and named is None:
        log.warning("the named tenant files cannot be applied alone; applying every tenant")
    result = named if named is not None else load_tenants(config, jobs=default_jobs())
    report.problems = result.problems
    if result.errors or not result.complete:
        count = len(result.errors)
        raise ApplyError(
            VALIDATE,
            sorted(result.broken),
            f"{count} error{'s' if count != 1 else ''} in the tenant files; nothing was changed",
        )
    return result


def _hold_uncertified(env: Environment, plan: Plan, report: Report) -> Plan:
    """The plan without the new tenants whose name has no valid certificate.

    RFC 8461 section 8: a policy is served, then its id published; a
    sender that sees the id fetches at once over HTTPS, and without a
    certificate for mta-sts.<domain> that fetch fails. Such a tenant is
    still served (the compile serves every valid tenant file, and verify
    checks it) but nothing is recorded for it, so the first run after
    `certs` publishes it. Changes to published tenants are never held,
    nor a new one an interrupted run left (its id may be in DNS already).
    """
    if env.certified is None:
        return plan
    certified = env.certified
    held = []
    for change in plan.changes:
        if change.kind != NEW or change.resumed:
            continue
        try:
            if not certified(change.domain):
                held.append(change.domain)
        except PolicyHostError as exc:
            raise ApplyError(PLAN, [change.domain], str(exc)) from None
    if not held:
        return plan
    report.held = held
    waiting = set(held)
    return replace(plan, changes=tuple(c for c in plan.changes if c.domain not in waiting))


def _records(result: LoadResult, store: Store | Path) -> dict[str, Record]:
    """The state's records: of the named tenants only after ``load_named``."""
    if isinstance(store, Path):
        records = read_records(store)
        if result.named is None:
            return records
        return {d: records[d] for d in named_domains(result) if d in records}
    if result.named is None:
        return store.records()
    return store.records_for(named_domains(result))


def _dry_run(
    config: ProviderConfig, env: Environment, report: Report, changed: list[str] | None
) -> None:
    result = _validated(config, report, changed)
    now = env.clock()
    plan = make_plan(
        result,
        _records(result, config.state_db),
        now,
        withdrawal_max_age=config.apply.withdrawal_max_age,
    )
    plan = _hold_uncertified(env, plan, report)
    report.plan = plan
    hosted = hosted_tlsrpt(config.state_db)
    if result.named is not None:
        hosted = {d: hosted[d] for d in named_domains(result) if d in hosted}
    report.tlsrpt = plan_tlsrpt(config, result.tenants, hosted)
    _dry_run_tlsrpt(config, env, report)
    if config.nodes.serving:
        report.notes.append(dry_run_note(config))
    # What the compile would serve once the changes are recorded (no
    # compile runs: nothing may change).
    from_state = dict(fallback_policies(config.state_db))
    from_state.update({c.domain: c.pending(now).body for c in plan.changes})
    found = served_policies(config.snapshot_path)
    current = found[0] if found is not None else None
    expected, _ = merge(result, current, from_state)
    wanted = expected.policies_by_host()
    if result.named is not None and current is not None:
        # Only the named tenants are compiled: the others stay as served.
        current = {h: b for h, b in current.items() if h in wanted}
    report.reload = bool(plan.changes or changed_hosts(current, wanted))
    if not plan.changes:
        return
    if env.dns is None:
        report.manual_dns = True
        return
    report.zone = assumed_zone(env.dns, config.id_zone, report.notes)
    for _, update in id_updates(config, env.dns, report.zone, plan.changes):
        report.updates.append(shown(env.dns, update))


def _dry_run_tlsrpt(config: ProviderConfig, env: Environment, report: Report) -> None:
    if not report.tlsrpt:
        return
    if env.dns is None:
        report.manual_dns = True
        return
    assert config.tlsrpt.zone is not None  # (planned only with a zone)
    zone = assumed_zone(env.dns, config.tlsrpt.zone, report.notes)
    for update in tlsrpt_updates(config, env.dns, zone, report.tlsrpt):
        report.updates.append(shown(env.dns, update))


def _run(
    config: ProviderConfig, env: Environment, report: Report, changed: list[str] | None
) -> None:
    result = _validated(config, report, changed)
    _done(env, report, VALIDATE)
    store = Store(config.state_db)
    try:
        _execute(config, env, report, result, store)
        _publish_tlsrpt(config, env, report, result, store)
    finally:
        store.close()


def _publish_tlsrpt(
    config: ProviderConfig, env: Environment, report: Report, result: LoadResult, store: Store
) -> None:
    """Set or delete the hosted TLS-RPT records (``publish.tlsrpt``), confirm
    them (``send``), record them."""
    named = named_domains(result) if result.named is not None else None
    changes = plan_tlsrpt(config, result.tenants, store.tlsrpt_values(named))
    report.tlsrpt = changes
    if not changes:
        return
    if env.dns is None:
        report.manual_dns = True
    else:
        send_tlsrpt(
            config, env, env.dns, changes, updates=report.updates, arrivals=report.propagation
        )
    store.set_tlsrpt({c.domain: c.value for c in changes})
    _done(env, report, TLSRPT)


def _done(env: Environment, report: Report, step: str) -> None:
    log.info("apply: step %s done", step)
    report.steps.append(step)
    env.hook(step)


def _execute(
    config: ProviderConfig, env: Environment, report: Report, result: LoadResult, store: Store
) -> None:
    now = env.clock()
    # A few objects per tenant (100,000 at scale) and no cycles: without a
    # pause the cyclic GC walks them again and again (a second at scale).
    # Only here: the DNS steps need it (their sockets are closed by it).
    with gc_paused():
        plan = make_plan(
            result, _records(result, store), now, withdrawal_max_age=config.apply.withdrawal_max_age
        )
    plan = _hold_uncertified(env, plan, report)
    report.plan = plan
    changes = list(plan.changes)
    domains = [c.domain for c in changes]
    serves = {c.domain: c.new_body for c in plan.serves}
    # Check what can be checked before anything changes.
    if serves and not config.upstreams:
        raise ApplyError(
            PLAN,
            list(serves),
            "no upstream to verify the served policies at: set apply.upstreams",
        )
    if changes and env.dns is not None:
        try:
            report.zone = env.dns.zone_for(config.id_zone + ".")
        except PublishError as exc:
            raise ApplyError(PLAN, domains, str(exc)) from None
    _done(env, report, PLAN)

    if changes:
        store.begin({c.domain: c.pending(now) for c in changes}, now)
        _done(env, report, RECORD)

    # Serve first (RFC 8461 section 8): the compile serves the tenant files
    # as validated and the state just recorded, and says what it changed;
    # that, and every planned change, is verified at every upstream.
    changed = _reload(env, result, bool(serves), list(serves))
    if changed is not None:
        report.reload = True
        reloaded = time.monotonic()
        _done(env, report, RELOAD)
        verify_upstreams(config, env, {**changed, **serves})
        verify_workers(config, env, sorted({*changed, *serves}))
        settled = reloaded + env.settle - time.monotonic()
        if settled > 0:
            env.sleep(settled)
        store.mark(serves, SERVED, env.clock())
        _done(env, report, VERIFY)
    if env.nodes is not None:
        # Every serving node too, before any id (RFC 8461 section 8).
        serve_on_nodes(config, env.nodes, env, serves, domains)
        _done(env, report, NODES)

    if not changes:
        return
    if env.dns is None:
        report.manual_dns = True
    else:
        assert report.zone is not None
        sent = time.monotonic()
        send_ids(config, env.dns, report.zone, changes, report.updates)
        store.mark(domains, PUBLISHED, env.clock())
        _done(env, report, PUBLISH)
        confirm_ids(config, env, report.zone, changes, sent=sent, arrivals=report.propagation)
        _done(env, report, CONFIRM)
    store.commit(domains, env.clock(), confirmed=env.dns is not None)
    _done(env, report, COMMIT)

    if plan.deletes:
        # The TXT is gone: now stop serving the withdrawal policy.
        gone: ChangedDomains = {c.domain: None for c in plan.deletes}
        changed = _reload(env, result, True, list(gone))
        verify_upstreams(config, env, {**(changed or {}), **gone})
        if env.nodes is not None:
            push_and_verify(config, env.nodes, {}, list(gone), sleep=env.sleep)
        _done(env, report, UNSERVE)


def _reload(
    env: Environment, result: LoadResult, force: bool, domains: list[str]
) -> ChangedDomains | None:
    try:
        return env.reload(result, force)
    except PolicyHostError as exc:
        raise ApplyError(RELOAD, domains, str(exc)) from None
