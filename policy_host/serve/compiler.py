"""Compile the served policies: tenant files + apply state -> snapshot.

The compile merges what the tenant files say with what was served before
(a broken file keeps its last good policy) and with the apply state (a
tenant without a file: ``state.fallback_policies``), then writes, in this
order, the policy files nginx serves (``files``), the change journal
(``journal``) and the snapshot (``snapshot``), all under one lock, then
brings the database the workers read up to them (``store``). The gunicorn
master compiles on start and on ``SIGHUP``; `reload` and `apply` compile
from the command line.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from policy_host.errors import PolicyHostError
from policy_host.model import POLICY_HOST_PREFIX
from policy_host.read.config import ProviderConfig
from policy_host.read.parsecache import gc_paused
from policy_host.read.tenants import LoadResult, load_tenants
from policy_host.serve import files as static
from policy_host.serve.journal import changes, journal_path, write_journal
from policy_host.serve.snapshot import (
    Snapshot,
    SnapshotMemo,
    merge,
    served_policies,
    write_snapshot,
)
from policy_host.serve.store import keep_up
from policy_host.state import fallback_policies

log = logging.getLogger(__name__)

# ``mta-sts.<domain>`` -> its new bytes, or None when no longer served.
ChangedHosts = dict[str, bytes | None]


@dataclass(frozen=True)
class Compiled:
    """What a compile found and did."""

    snapshot: Snapshot
    # The load result: its problems and broken files (it holds ``bodies``,
    # not ``Tenant`` objects: see ``load_tenants(tenants=False)``).
    result: LoadResult
    # Domains served from their last good policy.
    kept: list[str]
    # What differs from the snapshot served before (everything when there
    # was none).
    changed: ChangedHosts
    # False when ``proceed`` said not to write.
    written: bool = True

    def changed_domains(self) -> dict[str, bytes | None]:
        """``changed`` by domain rather than by host."""
        skip = len(POLICY_HOST_PREFIX)
        return {host[skip:]: body for host, body in self.changed.items()}


def compile_snapshot(
    config: ProviderConfig,
    *,
    jobs: int = 1,
    loaded: LoadResult | None = None,
    memo: SnapshotMemo | None = None,
    proceed: Callable[[ChangedHosts], bool] | None = None,
) -> Compiled:
    """Load tenants, merge with the last snapshot, write the result.

    Every served policy is also written as a file nginx serves by itself
    (``static``), before the snapshot, so that both say the same once this
    returns. Tenant files unchanged since the parse cache saw them are not
    read again; the others are read in ``jobs`` processes when many.
    ``loaded`` is a load of the tenant files the caller already made (and
    checked): `apply` serves exactly what it validated and planned.
    ``proceed`` is asked, under the lock, with what would change, before
    anything is written: False writes nothing (`apply` reloads only when
    something is to be served).
    """
    with compiling(config):
        return _compile(config, jobs, loaded, memo or SnapshotMemo(), proceed)


@contextlib.contextmanager
def compiling(config: ProviderConfig) -> Iterator[None]:
    """Hold the compile lock (one compile at a time writes the served
    files, snapshot and journal) with the garbage collector paused."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(static.locked(config.www_dir))
        except OSError as exc:  # TimeoutError too
            raise PolicyHostError(f"{config.www_dir}: cannot compile: {exc}") from exc
        stack.enter_context(gc_paused())
        yield


def _compile(
    config: ProviderConfig,
    jobs: int,
    loaded: LoadResult | None,
    memo: SnapshotMemo,
    proceed: Callable[[ChangedHosts], bool] | None,
) -> Compiled:
    # After a compile that died half way, only the journal steps up to
    # what was served before it count (``files.dirty_base``).
    found = served_policies(config.snapshot_path, memo, static.dirty_base(config.www_dir))
    served, previous_id = found if found is not None else (None, "")
    if loaded is not None:
        result = loaded
    else:
        result = load_tenants(config, jobs=jobs, save_cache=True, tenants=False, memo=memo.load)
    if not result.complete:
        raise PolicyHostError(
            "; ".join(str(p) for p in result.problems) + " (the served policies are unchanged)"
        )
    snapshot, kept = merge(result, served, served_from_state(config, served))
    for problem in result.problems:
        (log.error if problem.is_error else log.warning)("%s", problem)
    for domain in result.broken:
        if domain in kept:
            log.warning("%s: file is broken; still serving its last good policy", domain)
        else:
            log.error("%s: file is broken and no earlier policy exists; not served", domain)
    wanted = snapshot.policies_by_host()
    put, drop = changes(served, wanted)
    changed = _changed(put, drop, wanted)
    if proceed is not None and not proceed(changed):
        return Compiled(snapshot, result, kept, changed, written=False)
    try:
        static.sync(config.www_dir, wanted, served, previous_id)
    except OSError as exc:
        raise PolicyHostError(
            f"{config.www_dir}: cannot write the policy files nginx serves: {exc}"
        ) from exc
    journal = journal_path(config.snapshot_path)
    try:
        # Before the snapshot: see ``journal``.
        write_journal(journal, previous_id, snapshot.id, put, drop)
    except OSError as exc:
        raise PolicyHostError(f"{journal}: cannot write the change journal: {exc}") from exc
    try:
        write_snapshot(config.snapshot_path, snapshot, wanted, memo)
    except OSError as exc:
        # A full disk: the workers reach this compile's policies through the
        # journal, as nginx serves them; the next compile starts again from
        # the old snapshot on disk (and its dirty marker: ``static``).
        raise PolicyHostError(
            f"{config.snapshot_path}: cannot write the served-policy snapshot: {exc}"
        ) from exc
    static.done(config.www_dir)
    # The workers read the database made from the snapshot: it follows
    # at once (a journal step, or a new database when there is none).
    keep_up(config.snapshot_path, (wanted, snapshot.id))
    result.save_cache()  # last: the policies are live already
    log.info(
        "compiled %d policies from %d tenant files (%d problems, %d kept at last good)",
        len(snapshot.entries),
        result.files,
        len(result.errors),
        len(kept),
    )
    return Compiled(snapshot, result, kept, changed)


def changed_hosts(served: Mapping[str, bytes] | None, wanted: Mapping[str, bytes]) -> ChangedHosts:
    """What serving ``wanted`` changes where ``served`` was served (None:
    nothing known, so everything)."""
    return _changed(*changes(served, wanted), wanted)


def _changed(
    put: dict[str, bytes] | None, drop: Sequence[str], wanted: Mapping[str, bytes]
) -> ChangedHosts:
    changed: ChangedHosts = dict(put if put is not None else wanted)
    changed.update(dict.fromkeys(drop))
    return changed


def served_from_state(
    config: ProviderConfig, served: Mapping[str, bytes] | None
) -> Mapping[str, bytes]:
    """``state.fallback_policies``; if the state cannot be read, what was
    ``served`` before (so a withdrawal never stops because of it)."""
    try:
        return fallback_policies(config.state_db)
    except PolicyHostError as exc:
        log.error("%s; tenants without a file keep the policy served before", exc)
        return {h.removeprefix(POLICY_HOST_PREFIX): b for h, b in served.items()} if served else {}
