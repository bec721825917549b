"""`apply`: make served policies and published ids match the tenant files.

RFC 8461 section 8 fixes the order: a sender that sees a new id fetches the
policy at once and caches it under that id, so a new policy must be served
*before* its id is published. Per run, under a lock:

1. validate every tenant (any error: stop, nothing changed);
2. plan (pure): new, changed and removed tenants, each with a new id;
3. record the pending changes in the state, reload the server and verify
   that every upstream serves the new bytes;
4. publish: one TSIG-signed RFC 2136 UPDATE per batch to the primary;
5. confirm by reading the TXT records back from the primary; commit.

A removed tenant is withdrawn: it is served ``mode: none`` under a new id
until the longest max_age it ever published has run out (senders may cache
a policy that long), then its TXT is deleted and it is no longer served.

Every step can be repeated, so a run that stops anywhere (an error, a
crash) is completed by the next one: a pending change whose bytes are still
wanted keeps its id; any other pending change gets a fresh one.
"""

from __future__ import annotations

import contextlib
import datetime
import difflib
import fcntl
import http.client
import logging
import os
import socket
import ssl
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import dns.update

from policy_host.errors import PolicyHostError, Problem
from policy_host.fetch import POLICY_PATH
from policy_host.model import Policy, Tenant
from policy_host.publish.update import (
    KeyFileError,
    Primary,
    PublishError,
    TsigKey,
    TxtChange,
    build_update,
    load_tsig_key,
    record_name,
    shows,
    txt_value,
    update_text,
)
from policy_host.read.config import ProviderConfig
from policy_host.read.parsecache import gc_paused
from policy_host.read.tenants import LoadResult, default_jobs, load_tenants
from policy_host.render import fingerprint, render
from policy_host.serve.snapshot import HOST_PREFIX, merge, served_policies
from policy_host.state import (
    ACTIVE,
    CHANGE,
    DELETE,
    GONE,
    NEW,
    PUBLISHED,
    SERVED,
    UNPUBLISHED,
    WITHDRAW,
    WITHDRAWING,
    Pending,
    Record,
    Store,
    fallback_policies,
    new_id,
    read_records,
)

log = logging.getLogger(__name__)

# Steps, in order; a failure names the one that stopped the run.
VALIDATE = "validate"
PLAN = "plan"
RECORD = "record"
RELOAD = "reload"
VERIFY = "verify"
PUBLISH = "publish"
CONFIRM = "confirm"
COMMIT = "commit"
UNSERVE = "unserve"
STEPS = (VALIDATE, PLAN, RECORD, RELOAD, VERIFY, PUBLISH, CONFIRM, COMMIT, UNSERVE)

# TXT changes per UPDATE message: well inside the 64 KiB DNS message limit.
BATCH_SIZE = 200
# Seconds between verification rounds, and for one HTTP fetch.
POLL_INTERVAL = 0.1
FETCH_TIMEOUT = 3.0
# Largest answer read while verifying (RFC 8461 section 3.3: 64 KiB).
MAX_FETCH = 64 * 1024 + 1
LOCK_NAME = "apply.lock"

Clock = Callable[[], float]
Reloader = Callable[[], None]
# (upstream base URL, Host header) -> (HTTP status, body)
Fetcher = Callable[[str, str], tuple[int, bytes]]
# Called with each step's name once it is done (tests inject crashes here).
Hook = Callable[[str], None]
# (step, done, total): progress of long steps.
Progress = Callable[[str, int, int], None]


class ApplyError(PolicyHostError):
    """A run stopped: which step, for which tenants, and why."""

    def __init__(self, step: str, domains: Sequence[str], reason: str) -> None:
        self.step = step
        self.domains = list(domains)
        self.reason = reason
        shown = ", ".join(self.domains[:5])
        if len(self.domains) > 5:
            shown += f" and {len(self.domains) - 5} more"
        who = f" for {shown}" if shown else ""
        super().__init__(f"apply stopped at step '{step}'{who}: {reason}")

    def as_dict(self) -> dict[str, object]:
        return {"step": self.step, "domains": self.domains, "message": self.reason}


class DnsClient(Protocol):
    """What `apply` needs from the primary (``publish.Primary``, or a fake)."""

    key: TsigKey | None

    @property
    def server(self) -> tuple[str, int]: ...

    def zone_for(self, name: str) -> str: ...

    def send(self, update: dns.update.UpdateMessage) -> None: ...

    def txt(self, name: str) -> list[bytes]: ...


# -- the plan (pure) -------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One tenant's change: serve ``new_body``, publish ``new_id``.

    ``delete`` has neither: its TXT is deleted, then it is no longer served.
    """

    domain: str
    kind: str
    old_id: str | None
    new_id: str | None
    old_body: bytes | None
    new_body: bytes | None
    max_age: int
    # Takes up a pending change an interrupted run left (same id).
    resumed: bool = False

    @property
    def txt(self) -> bytes | None:
        return txt_value(self.new_id) if self.new_id else None

    def pending(self, now: float) -> Pending:
        # A deletion keeps serving the withdrawal policy until committed.
        body = self.new_body if self.new_body is not None else self.old_body or b""
        return Pending(self.kind, self.new_id, fingerprint(body), body, self.max_age, since=now)

    def diff(self) -> list[str]:
        def lines(body: bytes | None) -> list[str]:
            return body.decode("ascii").splitlines() if body else []

        return list(
            difflib.unified_diff(
                lines(self.old_body),
                lines(self.new_body),
                f"{self.domain} id {self.old_id or '-'} (served now)",
                f"{self.domain} id {self.new_id or '-'} (after apply)",
                lineterm="",
            )
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "domain": self.domain,
            "action": self.kind,
            "old_id": self.old_id,
            "new_id": self.new_id,
            "resumed": self.resumed,
            "policy": self.new_body.decode("ascii") if self.new_body else None,
            "diff": self.diff(),
        }


@dataclass(frozen=True)
class Withdrawal:
    """A removed tenant served ``mode: none`` until ``ends``."""

    domain: str
    policy_id: str | None
    ends: float

    def as_dict(self) -> dict[str, object]:
        return {"domain": self.domain, "policy_id": self.policy_id, "ends": iso(self.ends)}


@dataclass(frozen=True)
class Plan:
    now: float
    changes: tuple[Change, ...] = ()
    withdrawing: tuple[Withdrawal, ...] = ()
    notes: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()

    @property
    def serves(self) -> tuple[Change, ...]:
        """Changes whose new bytes must be served before their id goes out."""
        return tuple(c for c in self.changes if c.kind != DELETE)

    @property
    def deletes(self) -> tuple[Change, ...]:
        return tuple(c for c in self.changes if c.kind == DELETE)


def iso(when: float) -> str:
    return datetime.datetime.fromtimestamp(when, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def withdrawal_policy(max_age: int) -> Policy:
    """What a removed tenant serves: RFC 8461 section 8, "mode: none"."""
    return Policy(mode="none", mx=(), max_age=max_age)


def _policy_fields(body: bytes) -> tuple[str, list[str], int]:
    """(mode, mx patterns, max_age) of a body ``render`` made."""
    mode, mx, max_age = "", [], 0
    for line in body.decode("ascii").splitlines():
        key, _, value = line.partition(": ")
        if key == "mode":
            mode = value
        elif key == "mx":
            mx.append(value)
        elif key == "max_age":
            max_age = int(value)
    return mode, mx, max_age


def _mx_note(domain: str, old_body: bytes, new: Policy, now: float) -> str | None:
    """RFC 8461 section 8: senders may keep the old policy for its max_age,
    so MX hosts dropped from it must keep working that long."""
    mode, old_mx, max_age = _policy_fields(old_body)
    dropped = [pattern for pattern in old_mx if pattern not in new.mx]
    if mode == "none" or not dropped:
        return None
    return (
        f"{domain}: mx no longer lists {', '.join(dropped)}; senders that cached the previous "
        f"policy may keep using it for up to its max_age of {max_age} s "
        f"(until {iso(now + max_age)}): "
        "keep those MX hosts accepting mail with valid TLS until then "
        f"(see 'policy-host show {domain}')"
    )


IdMaker = Callable[[float, str, str, Sequence[str]], str]


def make_plan(
    result: LoadResult,
    records: Mapping[str, Record],
    now: float,
    *,
    withdrawal_max_age: int,
    make_id: IdMaker = new_id,
) -> Plan:
    """What a run must do, from the valid tenants, the state and the time."""
    planner = _Planner(now, withdrawal_max_age, make_id)
    for domain in sorted(set(result.tenants) | set(records)):
        tenant = result.tenants.get(domain)
        if tenant is not None:
            planner.present(tenant, records.get(domain), result.bodies.get(domain))
        elif domain not in result.broken:  # (validation stops a run with broken files)
            planner.removed(records[domain])
    return planner.plan()


@dataclass
class _Planner:
    now: float
    withdrawal_max_age: int
    make_id: IdMaker
    changes: list[Change] = field(default_factory=list)
    withdrawing: list[Withdrawal] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    def plan(self) -> Plan:
        return Plan(
            self.now,
            tuple(self.changes),
            tuple(self.withdrawing),
            tuple(self.notes),
            tuple(self.unchanged),
        )

    def fresh_id(self, domain: str, body: bytes, record: Record | None) -> str:
        taken: list[str] = []
        if record is not None:
            pending_id = record.pending.policy_id if record.pending else None
            taken = [i for i in (record.policy_id, pending_id) if i]
        return self.make_id(self.now, domain, fingerprint(body), taken)

    def change(
        self,
        record: Record | None,
        domain: str,
        kind: str,
        new_id: str | None,
        body: bytes | None,
        max_age: int,
        resumed: bool = False,
    ) -> None:
        old_id, old_body = (record.policy_id, record.body) if record else (None, None)
        self.changes.append(
            Change(domain, kind, old_id, new_id, old_body, body, max_age, resumed=resumed)
        )

    def present(self, tenant: Tenant, record: Record | None, body: bytes | None = None) -> None:
        """A tenant with a (valid) file: publish its policy if it is new.
        (``body`` is ``render(tenant.policy)`` when the caller has it.)"""
        domain = tenant.domain
        body = body if body is not None else render(tenant.policy)
        pending = record.pending if record else None
        if pending is not None and pending.kind in (NEW, CHANGE) and pending.body == body:
            # Taken up where an interrupted run left it, with its id.
            max_age = tenant.policy.max_age
            self.change(record, domain, pending.kind, pending.policy_id, body, max_age, True)
        elif pending is None and record and record.status == ACTIVE and record.body == body:
            self.unchanged.append(domain)
            return
        else:
            # Also when the bytes equal the committed ones but another change
            # was pending: its id may be in DNS already, so the bytes wanted
            # now need an id of their own.
            kind = NEW if record is None or record.status in (UNPUBLISHED, GONE) else CHANGE
            policy_id = self.fresh_id(domain, body, record)
            self.change(record, domain, kind, policy_id, body, tenant.policy.max_age)
        if record is not None and record.status == ACTIVE and record.body is not None:
            note = _mx_note(domain, record.body, tenant.policy, self.now)
            if note:
                self.notes.append(note)

    def removed(self, record: Record) -> None:
        """A tenant whose file is gone: withdraw it, then delete it."""
        domain, pending, max_age = record.domain, record.pending, self.withdrawal_max_age
        body = render(withdrawal_policy(max_age))
        if pending is not None and pending.kind == DELETE:
            self.change(record, domain, DELETE, None, None, record.max_age or 0, resumed=True)
        elif pending is not None and pending.kind == WITHDRAW and pending.body == body:
            self.change(record, domain, WITHDRAW, pending.policy_id, body, max_age, resumed=True)
            ends = _ends(record, pending, self.now)
            self.withdrawing.append(Withdrawal(domain, pending.policy_id, ends))
        elif pending is None and record.status in (GONE, UNPUBLISHED):
            return
        elif pending is None and record.status == WITHDRAWING and record.body == body:
            deadline = record.withdrawal_ends()
            assert deadline is not None
            if self.now >= deadline:
                # RFC 8461 section 8: every earlier max_age has run out.
                self.change(record, domain, DELETE, None, None, record.max_age or 0)
            else:
                self.withdrawing.append(Withdrawal(domain, record.policy_id, deadline))
                self.unchanged.append(domain)
        else:
            # Just removed (or the withdrawal policy changed): serve
            # `mode: none` under a new id.
            policy_id = self.fresh_id(domain, body, record)
            self.change(record, domain, WITHDRAW, policy_id, body, max_age)
            self.withdrawing.append(Withdrawal(domain, policy_id, _ends(record, pending, self.now)))


def _ends(record: Record, pending: Pending | None, now: float) -> float:
    """When a withdrawal starting now (or already running) will end."""
    longest = record.longest_max_age
    if pending is not None and pending.kind in (NEW, CHANGE):
        longest = max(longest, pending.max_age)
    started = record.withdrawal_started if record.status == WITHDRAWING else None
    return (started or now) + longest


# -- I/O: the server ---------------------------------------------------------


class _SniConnection(http.client.HTTPSConnection):
    """HTTPS to an upstream address, with SNI and certificate check for the
    tenant's name (as a sender connects, RFC 8461 section 3.3)."""

    def __init__(self, host: str, port: int | None, sni: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._sni = sni
        self._tls = ssl.create_default_context()

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._tls.wrap_socket(sock, server_hostname=self._sni)


def fetch_policy(upstream: str, host: str, timeout: float = FETCH_TIMEOUT) -> tuple[int, bytes]:
    """GET the policy from ``upstream`` (a base URL) as ``host`` asks for it."""
    url = urllib.parse.urlsplit(upstream)
    conn: http.client.HTTPConnection
    if url.scheme == "https":
        conn = _SniConnection(url.hostname or "", url.port, host, timeout)
    else:
        conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=timeout)
    try:
        conn.request(
            "GET", url.path.rstrip("/") + POLICY_PATH, headers={"Host": host, "Connection": "close"}
        )
        response = conn.getresponse()
        return response.status, response.read(MAX_FETCH)
    finally:
        conn.close()


# -- running it --------------------------------------------------------------


def _no_hook(step: str) -> None:
    pass


def _no_progress(step: str, done: int, total: int) -> None:
    pass


@dataclass
class Environment:
    """Everything `apply` does to the world, passed in (tests use fakes)."""

    reload: Reloader
    fetch: Fetcher
    # None: no primary to publish to (the operator loads `policy-host zone`).
    dns: DnsClient | None
    clock: Clock = time.time
    hook: Hook = _no_hook
    progress: Progress = _no_progress
    sleep: Callable[[float], None] = time.sleep
    # Seconds after ``reload`` by which every worker serves the new bytes.
    # One fetch that gets them proves only that *its* worker has them, so
    # nothing is published before this much time has passed as well.
    settle: float = 0.0
    # ``reload`` serving the tenant files as this run validated them (no
    # second read of every file: with 100,000 tenants that is a second);
    # None: ``reload`` is called.
    reload_loaded: Callable[[LoadResult], None] | None = None


def real_environment(config: ProviderConfig) -> Environment:
    """The production environment: the running server, HTTP, the primary."""
    from policy_host.serve.server import WATCH_INTERVAL, go_live, running_pid

    dns_client: DnsClient | None = None
    if config.dns.primary is not None:
        if config.dns.tsig_key_file is None:
            raise KeyFileError(
                f"{config.path}: dns.tsig_key_file is not set: apply signs every UPDATE "
                "to dns.primary with TSIG"
            )
        key = load_tsig_key(config.dns.tsig_key_file, config.dns.tsig_algorithm)
        dns_client = Primary(config.dns.primary, key, config.dns.timeout)

    def reload() -> None:
        # As `policy-host reload` does: the server must be running; then the
        # snapshot (tenant files + apply state) is rewritten and every worker
        # swaps it in memory (server.WATCH_INTERVAL), without a restart.
        running_pid(config)
        go_live(config)

    def reload_loaded(result: LoadResult) -> None:
        running_pid(config)
        go_live(config, loaded=result)

    # Each worker looks at the snapshot every WATCH_INTERVAL seconds.
    settle = 2 * WATCH_INTERVAL
    return Environment(
        reload=reload,
        fetch=fetch_policy,
        dns=dns_client,
        settle=settle,
        reload_loaded=reload_loaded,
    )


@dataclass
class Report:
    """What a run did (or, with ``dry_run``, would do)."""

    dry_run: bool
    problems: list[Problem] = field(default_factory=list)
    # Empty until the run got as far as planning.
    plan: Plan = field(default_factory=lambda: Plan(now=0.0))
    zone: str | None = None
    updates: list[str] = field(default_factory=list)
    reload: bool = False
    manual_dns: bool = False
    steps: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failure: ApplyError | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None

    def as_dict(self) -> dict[str, object]:
        plan = self.plan
        return {
            "dry_run": self.dry_run,
            "ok": self.ok,
            "changes": [c.as_dict() for c in plan.changes],
            "unchanged": len(plan.unchanged),
            "withdrawing": [w.as_dict() for w in plan.withdrawing],
            "notes": [*plan.notes, *self.notes],
            "zone": self.zone,
            "dns_updates": self.updates,
            "reload": self.reload,
            "manual_dns": self.manual_dns,
            "steps_done": self.steps,
            "problems": [p.as_dict() for p in self.problems],
            "failure": self.failure.as_dict() if self.failure else None,
        }


@contextlib.contextmanager
def apply_lock(state_dir: Path) -> Iterator[None]:
    """Hold ``state_dir/apply.lock`` (flock): two runs never overlap."""
    path = state_dir / LOCK_NAME
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise PolicyHostError(f"{path}: cannot take the apply lock: {exc.strerror}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            raise PolicyHostError(
                f"another policy-host apply is running (pid {holder or '?'}, lock {path}); "
                "try again when it has finished"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:  # a full disk: say so, not "internal error"
            raise PolicyHostError(f"{path}: cannot take the apply lock: {exc.strerror}") from exc
        yield
    finally:
        os.close(fd)  # closing releases the lock


def run(config: ProviderConfig, env: Environment, *, dry_run: bool = False) -> Report:
    """One `apply` run. A step that fails is in ``report.failure`` (with the
    tenants it stopped for); only a held lock or an unusable state raise."""
    report = Report(dry_run=dry_run)
    try:
        if dry_run:
            _dry_run(config, env, report)
        else:
            with apply_lock(config.state_dir):
                _run(config, env, report)
    except ApplyError as exc:
        report.failure = exc
        log.info("%s", exc)  # the caller reports it
    return report


def _validated(config: ProviderConfig, report: Report) -> LoadResult:
    result = load_tenants(config, jobs=default_jobs())
    report.problems = result.problems
    if result.errors or not result.complete:
        count = len(result.errors)
        raise ApplyError(
            VALIDATE,
            sorted(result.broken),
            f"{count} error{'s' if count != 1 else ''} in the tenant files; nothing was changed",
        )
    return result


def _served(config: ProviderConfig) -> Mapping[str, bytes] | None:
    """What the server serves now (``mta-sts.<domain>`` -> body)."""
    found = served_policies(config.snapshot_path)
    return found[0] if found is not None else None


def _expected_snapshot(
    result: LoadResult, current: Mapping[str, bytes] | None, from_state: Mapping[str, bytes]
) -> dict[str, bytes]:
    expected, _ = merge(result, current, from_state)
    return {domain: entry.body for domain, entry in expected.entries.items()}


def _out_of_date(
    current: Mapping[str, bytes] | None, expected: Mapping[str, bytes]
) -> dict[str, bytes | None]:
    """Domains (of ``expected``) the server does not serve as it should
    (None: must be 404). ``current`` is by host, as ``_served`` gives it."""
    current = current or {}
    wrong: dict[str, bytes | None] = {
        d: b for d, b in expected.items() if current.get(HOST_PREFIX + d) != b
    }
    skip = len(HOST_PREFIX)
    wrong.update({h[skip:]: None for h in current if h[skip:] not in expected})
    return wrong


def _batches(changes: Sequence[Change]) -> Iterator[Sequence[Change]]:
    for start in range(0, len(changes), BATCH_SIZE):
        yield changes[start : start + BATCH_SIZE]


def _txt_changes(config: ProviderConfig, batch: Sequence[Change]) -> list[TxtChange]:
    return [TxtChange(record_name(config, c.domain), c.txt) for c in batch]


def _dry_run(config: ProviderConfig, env: Environment, report: Report) -> None:
    result = _validated(config, report)
    now = env.clock()
    plan = make_plan(
        result,
        read_records(config.state_db),
        now,
        withdrawal_max_age=config.apply.withdrawal_max_age,
    )
    report.plan = plan
    # What the server would be told to serve once the changes are recorded.
    from_state = dict(fallback_policies(config.state_db))
    from_state.update({c.domain: c.pending(now).body for c in plan.changes})
    current = _served(config)
    stale = _out_of_date(current, _expected_snapshot(result, current, from_state))
    report.reload = bool(plan.changes or stale)
    if not plan.changes:
        return
    if env.dns is None:
        report.manual_dns = True
        return
    try:
        report.zone = env.dns.zone_for(config.id_zone + ".")
    except PublishError as exc:
        report.zone = config.id_zone + "."
        report.notes.append(f"the zone was not looked up ({exc}); assuming {report.zone}")
    for batch in _batches(plan.changes):
        update = build_update(
            report.zone, _txt_changes(config, batch), config.dns.txt_ttl, env.dns.key
        )
        report.updates.append(update_text(update, env.dns.server, env.dns.key))


def _run(config: ProviderConfig, env: Environment, report: Report) -> None:
    result = _validated(config, report)
    _done(env, report, VALIDATE)
    store = Store(config.state_db)
    try:
        _execute(config, env, report, result, store)
    finally:
        store.close()


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
            result, store.records(), now, withdrawal_max_age=config.apply.withdrawal_max_age
        )
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

    # Serve first (RFC 8461 section 8). The server compiles the same
    # snapshot from the tenant files and the state just recorded.
    current = _served(config)
    with gc_paused():
        expected = _expected_snapshot(result, current, fallback_policies(config.state_db))
    want: dict[str, bytes | None] = dict(_out_of_date(current, expected))
    want.update(serves)
    if want:
        report.reload = True
        reloaded = time.monotonic()
        _reload(env, list(want), result)
        _done(env, report, RELOAD)
        _verify(config, env, want)
        settled = reloaded + env.settle - time.monotonic()
        if settled > 0:
            env.sleep(settled)
        store.mark(serves, SERVED, env.clock())
        _done(env, report, VERIFY)

    if not changes:
        return
    if env.dns is None:
        report.manual_dns = True
    else:
        assert report.zone is not None
        for batch in _batches(changes):
            update = build_update(
                report.zone, _txt_changes(config, batch), config.dns.txt_ttl, env.dns.key
            )
            report.updates.append(update_text(update, env.dns.server, env.dns.key))
            try:
                env.dns.send(update)
            except PublishError as exc:
                raise ApplyError(PUBLISH, [c.domain for c in batch], str(exc)) from None
        store.mark(domains, PUBLISHED, env.clock())
        _done(env, report, PUBLISH)
        _confirm(config, env, changes)
        _done(env, report, CONFIRM)
    store.commit(domains, env.clock(), confirmed=env.dns is not None)
    _done(env, report, COMMIT)

    if plan.deletes:
        # The TXT is gone: now stop serving the withdrawal policy.
        gone: dict[str, bytes | None] = {c.domain: None for c in plan.deletes}
        _reload(env, list(gone), result)
        _verify(config, env, gone)
        _done(env, report, UNSERVE)


def _reload(env: Environment, domains: list[str], result: LoadResult) -> None:
    try:
        if env.reload_loaded is not None:
            env.reload_loaded(result)
        else:
            env.reload()
    except PolicyHostError as exc:
        raise ApplyError(RELOAD, domains, str(exc)) from None


def _describe(upstream: str, status: int, body: bytes, expected: bytes | None) -> str:
    if status == 200:
        return f"{upstream} still serves other bytes ({len(body)} bytes, not the new policy)"
    if expected is None:
        return f"{upstream} still answers {status} (expected 404)"
    return f"{upstream} answers HTTP {status}"


def _verify(config: ProviderConfig, env: Environment, want: Mapping[str, bytes | None]) -> None:
    """Poll every upstream until each domain's answer is the wanted one
    (bytes: 200 with exactly these bytes; None: 404)."""
    todo = {(domain, up): body for domain, body in want.items() for up in config.upstreams}
    total = len(todo)
    last: dict[tuple[str, str], str] = {}
    deadline = time.monotonic() + config.apply.verify_timeout
    while True:
        for (domain, upstream), body in list(todo.items()):
            try:
                status, got = env.fetch(upstream, f"mta-sts.{domain}")
            except (OSError, http.client.HTTPException) as exc:
                last[domain, upstream] = f"{upstream}: {exc}"
                continue
            if (status == 200 and got == body) or (body is None and status == 404):
                del todo[domain, upstream]
            else:
                last[domain, upstream] = _describe(upstream, status, got, body)
        env.progress(VERIFY, total - len(todo), total)
        if not todo:
            return
        if time.monotonic() >= deadline:
            failed = sorted({domain for domain, _ in todo})
            reason = last.get(next(iter(todo)), "no answer")
            raise ApplyError(
                VERIFY,
                failed,
                f"{reason} after {config.apply.verify_timeout:g} s; nothing was published",
            )
        env.sleep(POLL_INTERVAL)


def _confirm(config: ProviderConfig, env: Environment, changes: Sequence[Change]) -> None:
    """Read every changed TXT back from the primary until it shows the change."""
    assert env.dns is not None
    todo = {record_name(config, c.domain): c for c in changes}
    total = len(todo)
    last: dict[str, str] = {}
    deadline = time.monotonic() + config.dns.timeout
    while True:
        for name, change in list(todo.items()):
            try:
                values = env.dns.txt(name)
            except PublishError as exc:
                last[name] = str(exc)
                continue
            if shows(values, change.txt):
                del todo[name]
            else:
                seen = b" | ".join(values).decode("ascii", "replace") or "no TXT record"
                last[name] = f"the primary answers {seen!r} for {name}"
        env.progress(CONFIRM, total - len(todo), total)
        if not todo:
            return
        if time.monotonic() >= deadline:
            name, change = next(iter(todo.items()))
            wanted = repr(change.txt.decode("ascii")) if change.txt else "no TXT record"
            raise ApplyError(
                CONFIRM,
                sorted(c.domain for c in todo.values()),
                f"{last.get(name, 'no answer')}; expected {wanted}",
            )
        env.sleep(POLL_INTERVAL)
