"""Read the tenants folder: one ``<domain>.yaml`` per customer domain.

Every problem in every file is collected; a broken file never stops the
others from loading. Files unchanged since the parse cache saw them are not
read again; many changed files are read in a process per core.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from policy_host.errors import Problem
from policy_host.model import Policy, Tenant
from policy_host.read import scan
from policy_host.read.config import ProviderConfig
from policy_host.read.parsecache import (
    LoadedCaches,
    Outcome,
    ParseCache,
    cache_key,
    gc_paused,
    restore_problems,
    restore_tenant,
)
from policy_host.read.scan import ScanAhead
from policy_host.read.schema import Fields
from policy_host.read.tenantfile import (
    MAX_TENANT_BYTES,
    check_tenant,
    domain_from_filename,
    parse_tenant_body,
)
from policy_host.read.yamlfile import parse_mapping, read_limited
from policy_host.render import render

log = logging.getLogger(__name__)

# Below this many files to read, one process is quicker than several.
PARALLEL_MIN_FILES = 2000

_T = TypeVar("_T")


@dataclass
class LoadResult:
    """Every valid tenant by domain, every problem, and the domains whose
    file exists but is broken (their last good policy stays served)."""

    tenants: dict[str, Tenant] = field(default_factory=dict)
    # The policy bytes of each valid tenant (``render(tenant.policy)``,
    # mostly from the parse cache: rendering 100,000 again costs time).
    bodies: dict[str, bytes] = field(default_factory=dict)
    # The file each valid tenant comes from.
    sources: dict[str, str] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    broken: dict[str, str] = field(default_factory=dict)
    files: int = 0
    # False when the folder itself could not be listed: then nothing here
    # says which tenants exist, and nothing may be removed on its account.
    complete: bool = True
    # With load_tenants(save_cache=True): stores what was read in the parse
    # cache; True when the cache file was written.
    save_cache: Callable[[], bool] = field(default=lambda: False, repr=False, compare=False)
    # Set by ``load_named``: the file names this load covers; every other
    # tenant is neither here nor gone (None: the whole folder was read).
    named: tuple[str, ...] | None = None

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.is_error]


def _large_cache(config: ProviderConfig) -> bool:
    """A parse cache of more than ``PARALLEL_MIN_FILES`` files or so."""
    try:
        return os.stat(config.parse_cache_path).st_size >= PARALLEL_MIN_FILES * 200
    except OSError:
        return False


@dataclass
class LoadMemo:
    """What a run carries from one load of the tenants folder to the next.

    Owned by whoever loads more than once (`apply` validates, then
    compiles; `reload` starts looking at the folder while it reads what is
    served, then compiles) and passed to ``load_tenants``; dropping it frees
    what it holds (tens of megabytes with 100,000 tenants).
    """

    parse_caches: LoadedCaches = field(default_factory=LoadedCaches)
    ahead: ScanAhead | None = None

    def scan_ahead(self, config: ProviderConfig, jobs: int) -> None:
        """Start looking at the tenants folder now, in a forked child, for
        the next ``load_tenants`` of this folder to use, if that would do so
        (a large parse cache, more than one job). Only called where no other
        thread runs."""
        if jobs > 1 and self.ahead is None and _large_cache(config):
            self.ahead = ScanAhead.start(config.tenants_dir, config.snapshot_path)

    def take_ahead(self, folder: Path) -> ScanAhead | None:
        """The scan started for ``folder``, once, if still usable."""
        ahead = self.ahead
        if ahead is None or ahead.folder != folder:
            return None
        self.ahead = None
        return ahead if ahead.usable() else None


# What checking one tenant file gives (``check_file``): its domain (None:
# the file name is not a usable domain), whether it is valid, every problem.
Checked = tuple[str | None, bool, list[Problem]]


def _domain_and_bytes(
    path: Path | str, config: ProviderConfig, problems: list[Problem]
) -> tuple[str | None, bytes | None]:
    domain = domain_from_filename(path, config, problems)
    if domain is None:
        return None, None
    data = read_limited(path, MAX_TENANT_BYTES)
    if isinstance(data, Problem):
        problems.append(data)
        return domain, None
    return domain, data


def load_file(path: Path, config: ProviderConfig) -> Outcome:
    """Read and check one tenant file: its domain, the tenant if valid, and
    every problem (all but duplicates across files, which ``load_tenants``
    adds)."""
    problems: list[Problem] = []
    domain, data = _domain_and_bytes(path, config, problems)
    tenant = body = None
    if domain is not None and data is not None:
        tenant, body = parse_tenant_body(path, data, domain, problems)
    return domain, tenant, problems, body


def check_file(path: Path | str, config: ProviderConfig) -> Checked:
    """``load_file`` without the tenant and its policy bytes (``validate``:
    less to make, and less to send back from a worker process)."""
    problems: list[Problem] = []
    domain, data = _domain_and_bytes(path, config, problems)
    valid = domain is not None and data is not None and check_tenant(path, data, domain, problems)
    return domain, valid, problems


def _load_chunk(config: ProviderConfig, names: list[str]) -> list[Outcome]:
    return [load_file(config.tenants_dir / name, config) for name in names]


def _check_chunk(config: ProviderConfig, names: list[str]) -> list[Checked]:
    # Paths as text: a Path per file costs more than the checks of its name.
    base = os.path.join(config.tenants_dir, "")
    return [check_file(base + name, config) for name in names]


def _in_processes(
    chunk: Callable[[ProviderConfig, list[str]], list[_T]],
    config: ProviderConfig,
    names: list[str],
    jobs: int,
) -> list[_T]:
    """``chunk`` over every name, in ``jobs`` processes when it pays."""
    if jobs <= 1 or len(names) < PARALLEL_MIN_FILES:
        return chunk(config, names)
    # fork: the children inherit the loaded modules and start at once. Only
    # called where no other thread runs (the CLI, the gunicorn master before
    # it installs its signal handlers).
    context = multiprocessing.get_context("fork")
    size = max(PARALLEL_MIN_FILES // 4, len(names) // (jobs * 8) + 1)
    chunks = [names[i : i + size] for i in range(0, len(names), size)]
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        parts = pool.map(chunk, [config] * len(chunks), chunks)
        return [outcome for part in parts for outcome in part]


def load_named(config: ProviderConfig, names: list[str]) -> LoadResult | None:
    """Read only the tenant files ``names`` (file names in the tenants
    folder, as a deploy hook names what changed); names whose file is gone
    are only listed in ``named``. ``None`` when one file's name is not
    exactly its domain's: another file may then define the same domain,
    and only ``load_tenants`` can tell."""
    result = LoadResult(named=tuple(names))
    for name in names:
        path = config.tenants_dir / name
        if not path.exists():
            stem = name[: -len(scan.SUFFIX)]
            if not (stem.isascii() and stem == stem.lower()):
                return None  # gone: which domain it served only a full load knows
            continue
        domain, tenant, problems, body = load_file(path, config)
        result.problems.extend(problems)
        result.files += 1
        if domain is None:
            continue
        if domain + scan.SUFFIX != name:
            return None
        if tenant is None or body is None:
            result.broken[domain] = str(path)
            continue
        result.tenants[domain] = tenant
        result.bodies[domain] = body
        result.sources[domain] = str(path)
    result.problems.sort(key=lambda p: (p.path, p.line))
    return result


def named_domains(result: LoadResult) -> list[str]:
    """Every domain a ``load_named`` result speaks for: its files' and
    those of the named files that are gone."""
    gone = [n[: -len(scan.SUFFIX)] for n in result.named or () if n.endswith(scan.SUFFIX)]
    return sorted({*result.tenants, *result.broken, *gone})


def default_jobs() -> int:
    """Processes for reading many tenant files: one per core."""
    return max(1, os.cpu_count() or 1)


def load_tenants(
    config: ProviderConfig,
    *,
    jobs: int = 1,
    cache: bool = True,
    save_cache: bool = False,
    tenants: bool = True,
    check_only: bool = False,
    memo: LoadMemo | None = None,
) -> LoadResult:
    """Read every tenant file; never raises for a bad tenant.

    Files unchanged since the parse cache saw them are not read again
    (``cache``; ``parsecache``); the others are read in ``jobs`` processes
    when there are many. ``save_cache``: the result's ``save_cache()``
    stores what was read for next time (the compile calls it once the
    policies are live: it may write a file of tens of megabytes).
    With ``tenants=False`` the result has the policy bytes and source of
    every valid tenant (``bodies``, ``sources``) but no ``Tenant`` objects
    for the cached ones (the snapshot compile needs nothing more, and
    building 100,000 of them costs a few tenths of a second). With
    ``check_only`` it has neither (``validate``: the files are only
    checked, ``check_file``), only the source of each valid tenant, the
    problems and the broken. ``memo``: what this run's earlier loads left
    to reuse (``LoadMemo``).
    """
    with gc_paused():
        return _load_tenants(
            config,
            jobs,
            cache,
            save_cache and not check_only,
            tenants and not check_only,
            check_only,
            memo or LoadMemo(),
        )


def _load_tenants(
    config: ProviderConfig,
    jobs: int,
    cache: bool,
    save_cache: bool,
    want_tenants: bool,
    check_only: bool,
    memo: LoadMemo,
) -> LoadResult:
    result = LoadResult()
    folder = config.tenants_dir
    now_ns = time.time_ns()
    key = cache_key(_PARSING_MODULES, str(folder), config.id_zone)
    # With a large cache, the folder is looked at in a second process while
    # this one reads the cache (both take a few tenths of a second with
    # 100,000 tenants).
    scanned: scan.Scanned | None = None
    ahead = memo.take_ahead(folder)
    if ahead is not None:
        # The files were looked at from then on: racily clean entries are
        # judged from that earlier moment (parsecache.ParseCache.save).
        now_ns, scanned = min(now_ns, ahead.started_ns), ahead.result
    elif cache and jobs > 1 and _large_cache(config):
        scanned = scan.list_beside(folder)
    try:
        store = ParseCache.load(config.parse_cache_path if cache else None, key, memo.parse_caches)
    except BaseException:
        if scanned is not None:
            scan.reap(scanned)
        raise
    try:
        if scanned is not None:
            names = scanned()
        else:
            # Identities only matter to the cache (one stat per file).
            names = scan.list_folder(folder, identities=bool(store.items) or (save_cache and cache))
    except OSError as exc:
        result.problems.append(
            Problem(str(folder), 0, f"cannot read tenants folder: {exc.strerror}")
        )
        result.complete = False
        return result
    base = str(folder) + os.sep if str(folder) != os.sep else os.sep
    # Per name, in order: (domain, valid, tenant, problems, body) from the
    # cache, or None for a file to read. tenant may be None for a valid
    # cached file when not wanted. (This loop and the next run once per
    # tenant file on every reload: docs/performance.md.)
    files: list[tuple[str | None, bool, Tenant | None, list[Problem], bytes | None] | None] = []
    misses: list[str] = []
    items = store.items
    for name, ident in names:
        item = items.get(name) if ident is not None else None
        try:
            if item is None or tuple(item[0]) != ident:
                raise KeyError(name)
            domain, fields, shown, body = item[1]
            where = base + name
            files.append(
                (
                    domain,
                    fields is not None,
                    restore_tenant(domain, fields, where) if want_tenants and fields else None,
                    restore_problems(shown, where) if shown else [],
                    body.encode() if body is not None and not check_only else None,
                )
            )
        except (ValueError, TypeError, KeyError, IndexError, UnicodeError, AttributeError):
            files.append(None)  # not cached, changed, or a damaged entry: read it
            misses.append(name)
    fresh: dict[str, Outcome] = {}
    checked: dict[str, Checked] = {}
    if misses:
        log.debug("reading %d of %d tenant files", len(misses), len(names))
        if check_only:
            found_now = _in_processes(_check_chunk, config, misses, jobs)
            checked = dict(zip(misses, found_now, strict=True))
        else:
            fresh = dict(zip(misses, _in_processes(_load_chunk, config, misses, jobs), strict=True))
    if save_cache and cache:
        identities = {n: i for n, i in names if i is not None}
        result.save_cache = lambda: store.save(identities, fresh, now_ns)

    owners: dict[str, str] = {}
    tenants, bodies, sources, broken = result.tenants, result.bodies, result.sources, result.broken
    problems = result.problems
    for (name, _), known in zip(names, files, strict=True):
        if check_only and known is None:
            domain, valid, found = checked[name]
            tenant = body = None
        elif known is None:
            domain, tenant, found, body = fresh[name]
            valid = tenant is not None
        else:
            domain, valid, tenant, found, body = known
        problems.extend(found)
        if domain is None:
            continue
        where = base + name
        if domain in owners:
            problems.append(
                Problem(
                    where,
                    1,
                    f"domain '{domain}' is already defined by {owners[domain]}; "
                    "keep one file per domain",
                )
            )
            broken[domain] = where
            tenants.pop(domain, None)
            bodies.pop(domain, None)
            sources.pop(domain, None)
            continue
        owners[domain] = where
        if not valid:
            broken[domain] = where
            continue
        if tenant is not None:
            tenants[domain] = tenant
        if body is not None:  # always, unless check_only
            bodies[domain] = body
        sources[domain] = where
    result.files = len(names)
    result.problems.sort(key=lambda p: (p.path, p.line))
    return result


# The modules whose code decides what a tenant file reads as: the parse
# cache is only valid for the exact files it was made with.
_PARSING_MODULES = (
    sys.modules[__name__],
    sys.modules[Fields.__module__],
    sys.modules[Policy.__module__],
    sys.modules[render.__module__],
    sys.modules[parse_mapping.__module__],
    sys.modules[Problem.__module__],
    sys.modules[ParseCache.__module__],
    sys.modules[parse_tenant_body.__module__],
)
