"""Everything `apply` does to the world, passed in: the server, HTTP, DNS.

``real_environment`` is production's: the running policy server (whose
compile says what it changed), a fetch of each upstream the way a sender
fetches (``fetch.fetch_from``) and the primary DNS server. Tests pass
fakes or real servers of their own.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import dns.update

from policy_host.authdns import configured_servers
from policy_host.fetch import client_context, fetch_app, fetch_from
from policy_host.publish.propagation import Authority
from policy_host.publish.update import KeyFileError, Primary, TsigKey, load_tsig_key
from policy_host.publish.workers import WorkerState, parse_state
from policy_host.read.config import ProviderConfig
from policy_host.read.tenants import LoadResult, default_jobs

if TYPE_CHECKING:
    from policy_host.serve.compiler import Compiled
    from policy_host.serve.snapshot import SnapshotMemo

if TYPE_CHECKING:
    from policy_host.publish.nodes import NodeOps

# Seconds for one HTTP fetch while verifying.
FETCH_TIMEOUT = 3.0

Clock = Callable[[], float]
# What a reload changed, by domain: the new bytes, or None when the domain
# is no longer served.
ChangedDomains = dict[str, bytes | None]
# (the validated load, whether to reload even when nothing changed) -> what
# the reload changed; None when nothing changed, nothing was to be served
# and so nothing was reloaded.
Reloader = Callable[[LoadResult, bool], ChangedDomains | None]
# (upstream base URL, Host header) -> (HTTP status, body)
Fetcher = Callable[[str, str], tuple[int, bytes]]
# Called with each step's name once it is done (tests inject crashes here).
Hook = Callable[[str], None]
# (step, done, total): progress of long steps.
Progress = Callable[[str, int, int], None]
# domain -> whether mta-sts.<domain> has a valid certificate now.
Certified = Callable[[str], bool]
# zone apex -> every authoritative server to confirm a change of it at,
# the primary first (``authoritative``).
Authorities = Callable[[str], Sequence[Authority]]


@dataclass(frozen=True)
class AppWorkers:
    """The app's workers, asked directly (``publish.workers``)."""

    # One request to the app's private listener: the answering worker's
    # state (None: the answer was not one).
    ask: Callable[[], WorkerState | None]
    # The id of the snapshot the reload wrote.
    want: Callable[[], str | None]


class UpdateClient(Protocol):
    """What `apply` needs from the primary (``update.Primary``, or a fake)."""

    key: TsigKey | None

    @property
    def server(self) -> tuple[str, int]: ...

    def zone_for(self, name: str) -> str: ...

    def send(self, update: dns.update.UpdateMessage) -> None: ...

    def txt(self, name: str) -> list[bytes]: ...


def _no_hook(step: str) -> None:
    pass


def _no_progress(step: str, done: int, total: int) -> None:
    pass


@dataclass
class Environment:
    """Everything `apply` does to the world, passed in (tests use fakes)."""

    # Serves the validated tenant files and the apply state as recorded.
    reload: Reloader
    fetch: Fetcher
    # None: no primary to publish to (the operator loads `policy-host zone`).
    dns: UpdateClient | None
    clock: Clock = time.time
    hook: Hook = _no_hook
    progress: Progress = _no_progress
    sleep: Callable[[float], None] = time.sleep
    # Seconds after ``reload`` by which every worker serves the new bytes.
    # One fetch that gets them proves only that *its* worker has them, so
    # nothing is published before this much time has passed as well.
    settle: float = 0.0
    # None: publish new tenants at once (no `acme` section: the provider
    # brings its certificates its own way); otherwise a new tenant's first
    # id waits until this says its name has a certificate.
    certified: Certified | None = None
    # None: the upstreams alone are verified.
    workers: AppWorkers | None = None
    # None: a change is confirmed at the primary alone.
    authorities: Authorities | None = None
    # None: no serving nodes (this box serves alone).
    nodes: NodeOps | None = None


def settle_time(watch_interval: float) -> float:
    """How long after a compile every worker watching every
    ``watch_interval`` seconds serves it, should the compile have left its
    database to them (``store.keep_up``): one look may fall just before
    the snapshot is replaced, the next one sees it."""
    return 2 * watch_interval


def real_environment(config: ProviderConfig) -> Environment:
    """The production environment: the running server, HTTP, the primary."""
    from policy_host.serve.pidfile import running_pid
    from policy_host.serve.snapshot import SnapshotMemo
    from policy_host.serve.workerinfo import WATCH_INTERVAL

    dns_client: UpdateClient | None = None
    if config.dns.primary is not None:
        if config.dns.tsig_key_file is None:
            raise KeyFileError(
                f"{config.path}: dns.tsig_key_file is not set: apply signs every UPDATE "
                "to dns.primary with TSIG"
            )
        key = load_tsig_key(config.dns.tsig_key_file, config.dns.tsig_algorithm)
        dns_client = Primary(config.dns.primary, key, config.dns.timeout)

    # One run's compiles share what they read and wrote.
    memo = SnapshotMemo()

    def reload(result: LoadResult, force: bool) -> ChangedDomains | None:
        # As `policy-host reload` does: the snapshot (tenant files as this
        # run validated them + apply state) is rewritten and so is the
        # database every worker reads, without a restart; the server must
        # be running for that.
        def proceed(changed: dict[str, bytes | None]) -> bool:
            if not changed and not force:
                return False
            running_pid(config)
            return True

        compiled = compile_loaded(config, result, memo=memo, proceed=proceed)
        return compiled.changed_domains() if compiled.written else None

    context: list[ssl.SSLContext] = []

    def fetch(upstream: str, host: str) -> tuple[int, bytes]:
        if upstream.startswith("https:") and not context:
            context.append(client_context())  # once: loading the CA store takes a while
        return fetch_from(
            upstream, host, timeout=FETCH_TIMEOUT, context=context[0] if context else None
        )

    nodes = None
    if config.nodes.serving:
        from policy_host.publish.nodes import node_ops

        nodes = node_ops(config)

    return Environment(
        nodes=nodes,
        reload=reload,
        fetch=fetch,
        dns=dns_client,
        settle=settle_time(WATCH_INTERVAL),
        certified=certificate_check(config) if config.acme.configured else None,
        workers=app_workers(config),
        # The primary, then the authoritative section's servers.
        authorities=configured_servers(config),
    )


def compile_loaded(
    config: ProviderConfig,
    result: LoadResult,
    *,
    memo: SnapshotMemo | None = None,
    proceed: Callable[[dict[str, bytes | None]], bool] | None = None,
) -> Compiled:
    """Serve what `apply` validated: ``go_live`` with it, or, for the
    named tenants of `apply --changed`, those alone
    (``serve.incremental``); what cannot be compiled alone is compiled
    whole, from the files (``result`` holds the named tenants only)."""
    from policy_host.serve.compiler import compile_snapshot
    from policy_host.serve.incremental import compile_changed

    if result.named is not None:
        alone = compile_changed(config, list(result.named), loaded=result, proceed=proceed)
        if alone is not None:
            return alone
        result_or_none = None
    else:
        result_or_none = result
    # As ``serve.server.go_live`` (not imported: it brings gunicorn).
    return compile_snapshot(
        config, jobs=default_jobs(), loaded=result_or_none, memo=memo, proceed=proceed
    )


def app_workers(config: ProviderConfig) -> AppWorkers:
    """The workers behind ``serve.bind``, asked over plain HTTP."""
    from policy_host.serve.snapshot import served_id
    from policy_host.serve.workerinfo import SNAPSHOT_PATH

    # Not a policy name: the app answers SNAPSHOT_PATH only for others.
    host = "localhost" if config.serve.bind.startswith("unix:") else config.serve.bind

    def ask() -> WorkerState | None:
        status, body = fetch_app(config.serve.bind, SNAPSHOT_PATH, host, timeout=FETCH_TIMEOUT)
        return parse_state(body.decode("ascii", "replace")) if status == 200 else None

    return AppWorkers(ask=ask, want=lambda: served_id(config.snapshot_path))


def certificate_check(config: ProviderConfig, clock: Clock = time.time) -> Certified:
    """Whether a domain's policy name has a valid certificate (``certs``
    keeps them; read as ``certs`` judges them)."""
    from policy_host.certs.certificate import has_valid_certificate
    from policy_host.model import POLICY_HOST_PREFIX

    def certified(domain: str) -> bool:
        return has_valid_certificate(config, POLICY_HOST_PREFIX + domain, clock())

    return certified
