"""Compile only the tenant files named as changed.

A full compile looks at every tenant file and what was served for each
(with 1,000,000 tenants: a million file identities, the parse cache and
the snapshot; docs/performance.md). Told which files changed (`reload
--changed`, for example from ``git diff --name-only`` in a deploy hook),
this reads those files only, takes what is served for their hosts from the
policy files nginx serves (the same compile writes both), and writes, under
the same lock and in the same order as a full compile: the changed policy
files, then one journal step, which goes into the database the workers
read (``store``) at once. The snapshot is not written again: its steps stay in
the journal (``journal.JOURNAL_PINNED_STEPS``) until the next full compile,
and every reader of what is served applies them (``snapshot.served_policies``).

The rules are the full compile's: a valid file is served; a broken one
keeps its last good policy (or the apply state's); a file that is gone is
served from the apply state if `apply` still serves it, else no longer
served. Whatever this cannot decide alone (no snapshot yet, a compile that
died half way, a file name that is not its domain's, a journal too long)
makes it return ``None``: the caller runs the full compile instead.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from policy_host.errors import PolicyHostError, Problem
from policy_host.model import POLICY_HOST_PREFIX
from policy_host.read.config import ProviderConfig
from policy_host.read.scan import SUFFIX
from policy_host.read.tenants import LoadResult, load_named, named_domains
from policy_host.serve import files as static
from policy_host.serve.compiler import ChangedHosts, Compiled, compiling
from policy_host.serve.journal import (
    JournalFull,
    journal_path,
    pinned_room,
    read_journal,
    write_journal,
)
from policy_host.serve.snapshot import (
    STATE_SOURCE,
    Entry,
    Snapshot,
    new_snapshot_id,
    snapshot_id,
)
from policy_host.serve.store import keep_up
from policy_host.state import fallback_policies

log = logging.getLogger(__name__)


@dataclass
class Named:
    """The tenant file names a change names, and what cannot be one."""

    names: list[str] = field(default_factory=list)
    # Paths outside the tenants folder: an error, nothing is compiled.
    outside: list[str] = field(default_factory=list)


def tenant_names(config: ProviderConfig, paths: Iterable[str]) -> Named:
    """The tenant file names among ``paths`` (relative to the current
    folder, as ``git diff --name-only`` prints them from the top of the
    work tree). Paths that are not ``*.yaml`` are skipped: a deploy hook
    passes every file the commit changed."""
    named = Named()
    folder = os.path.realpath(config.tenants_dir)
    for raw in paths:
        raw = raw.strip()
        if not raw or not raw.endswith(SUFFIX):
            continue
        path = Path(raw)
        if os.path.realpath(path.parent) != folder or path.name.startswith("."):
            named.outside.append(raw)
            continue
        named.names.append(path.name)
    named.names = sorted(set(named.names))
    return named


def compile_changed(
    config: ProviderConfig,
    names: list[str],
    *,
    loaded: LoadResult | None = None,
    proceed: Callable[[ChangedHosts], bool] | None = None,
) -> Compiled | None:
    """Compile the tenant files ``names`` (file names in the tenants folder)
    and make the result live; ``None`` when only a full compile can (see
    the module docstring). The ``Compiled`` holds the named tenants only:
    ``snapshot`` their entries (under the new step's id), ``result`` their
    load. ``loaded``: ``load_named(config, names)`` made by the caller
    (`apply` serves what it validated). ``proceed`` as in
    ``compile_snapshot``."""
    with compiling(config):
        return _compile_changed(config, names, loaded, proceed)


def _compile_changed(
    config: ProviderConfig,
    names: list[str],
    loaded: LoadResult | None,
    proceed: Callable[[ChangedHosts], bool] | None,
) -> Compiled | None:
    www, path = config.www_dir, config.snapshot_path
    on_disk = snapshot_id(path)
    if on_disk is None or static.is_dirty(www):
        return None
    journal_file = journal_path(path)
    try:
        journal = read_journal(journal_file)
    except PolicyHostError:
        return None
    # The steps from the snapshot to the journal's head; None when the
    # head is a step no snapshot leads to: a full compile sorts that out.
    steps = journal.since(on_disk) if journal is not None else []
    if steps is None:
        return None
    head = steps[-1].id if steps else on_disk
    result = loaded if loaded is not None else load_named(config, names)
    if result is None:
        return None
    gone = [d for d in named_domains(result) if d not in result.tenants and d not in result.broken]
    from_state = fallback_policies(config.state_db, [*result.broken, *gone])
    entries: dict[str, Entry] = {}
    kept: list[str] = []
    for domain, body in result.bodies.items():
        entries[domain] = Entry(body, result.sources[domain])
    for domain, source in result.broken.items():
        last = static.read_policy(www, POLICY_HOST_PREFIX + domain) or from_state.get(domain)
        if last is not None:
            entries[domain] = Entry(last, source, stale=True)
            kept.append(domain)
    for domain in gone:
        if domain in from_state:
            entries[domain] = Entry(from_state[domain], STATE_SOURCE)
    changed: ChangedHosts = {}
    for domain in [*result.bodies, *result.broken, *gone]:
        host = POLICY_HOST_PREFIX + domain
        entry = entries.get(domain)
        wanted = entry.body if entry is not None else None
        if static.read_policy(www, host) != wanted:
            changed[host] = wanted
    snapshot = Snapshot(dict(sorted(entries.items())), new_snapshot_id())
    if not pinned_room(journal, on_disk, len(changed)):
        return None
    if proceed is not None and not proceed(changed):
        return Compiled(snapshot, result, kept, changed, written=False)
    if changed:
        _write(config, changed, head, snapshot, on_disk)
    else:
        snapshot = Snapshot(snapshot.entries, head)
    log.info("compiled %d changed tenant files (%d policies changed)", len(names), len(changed))
    return Compiled(snapshot, result, sorted(kept), changed)


def _write(
    config: ProviderConfig, changed: ChangedHosts, head: str, snapshot: Snapshot, on_disk: str
) -> None:
    www = config.www_dir
    try:
        static.put(www, changed, head)
    except OSError as exc:
        raise PolicyHostError(f"{www}: cannot write the policy files nginx serves: {exc}") from exc
    put = {host: body for host, body in changed.items() if body is not None}
    drop = sorted(host for host, body in changed.items() if body is None)
    sources = {POLICY_HOST_PREFIX + d: e.source for d, e in snapshot.entries.items()}
    journal_file = journal_path(config.snapshot_path)
    try:
        write_journal(
            journal_file,
            head,
            snapshot.id,
            put,
            drop,
            pinned=on_disk,
            sources={host: sources[host] for host in put},
        )
    except JournalFull as exc:  # checked before; another writer holds no lock
        raise PolicyHostError(f"{journal_file}: {exc}") from exc
    except OSError as exc:
        raise PolicyHostError(f"{journal_file}: cannot write the change journal: {exc}") from exc
    static.done(www)
    keep_up(config.snapshot_path)  # the step, into the database the workers read


def problems_of(named: Named) -> list[Problem]:
    """The paths named that are not in the tenants folder, as problems."""
    return [Problem(raw, 0, "not a file in the tenants folder") for raw in named.outside]
