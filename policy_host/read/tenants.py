"""Read the tenants folder: one ``<domain>.yaml`` per customer domain.

The domain comes from the file name (an optional ``domain:`` key must agree
with it). Every problem in every file is collected; a broken file never stops
the others from loading.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import pickle
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from policy_host.errors import Problem, Severity
from policy_host.fileio import Identity as FileIdentity
from policy_host.fileio import identity_if_readable
from policy_host.model import (
    MAX_AGE_ENFORCE_RECOMMENDED,
    MAX_AGE_LIMIT,
    MAX_AGE_WARN_BELOW,
    MAX_NAME_LENGTH,
    MAX_POLICY_BYTES,
    MODES,
    TLSRPT_PREFIX,
    InvalidValue,
    Policy,
    Tenant,
    check_rua,
    hostname,
    mx_pattern,
)
from policy_host.read.config import ProviderConfig
from policy_host.read.parsecache import (
    Identity,
    Outcome,
    ParseCache,
    cache_key,
    gc_paused,
    identity,
    restore_problems,
    restore_tenant,
)
from policy_host.read.schema import Fields
from policy_host.read.yamlfile import parse_mapping, read_limited
from policy_host.render import render

log = logging.getLogger(__name__)

SUFFIX = ".yaml"
MAX_TENANT_BYTES = 256 * 1024
# Below this many files to read, one process is quicker than several.
PARALLEL_MIN_FILES = 2000
KEYS = ("mode", "mx", "max_age", "domain", "note", "tlsrpt_rua")


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

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.is_error]


def domain_from_filename(path: Path, config: ProviderConfig, problems: list[Problem]) -> str | None:
    """The customer domain a tenant file is for, checked as a DNS name."""
    written = path.name[: -len(SUFFIX)]
    where = str(path)
    try:
        host = hostname(written, what="domain (from the file name)")
    except InvalidValue as exc:
        problems.append(Problem(where, 1, str(exc)))
        return None
    domain = host.ascii
    if host.written:
        problems.append(
            Problem(
                where,
                1,
                f"domain '{written}' is served as its A-label '{domain}'",
                Severity.WARNING,
            )
        )
    # RFC 1035 limits: the longest names derived from the domain must fit.
    for derived in (config.id_record_target(domain), TLSRPT_PREFIX + domain):
        if len(derived) > MAX_NAME_LENGTH:
            problems.append(
                Problem(
                    where,
                    1,
                    f"domain '{domain}' is too long: '{derived[:40]}...' would be "
                    f"{len(derived)} characters; the DNS limit is {MAX_NAME_LENGTH}",
                )
            )
            return None
    return domain


def parse_tenant(path: Path, data: bytes, domain: str, problems: list[Problem]) -> Tenant | None:
    """Check one tenant file's bytes; append problems; the Tenant if valid."""
    return _parse_tenant(path, data, domain, problems)[0]


def _parse_tenant(
    path: Path, data: bytes, domain: str, problems: list[Problem]
) -> tuple[Tenant | None, bytes | None]:
    """``parse_tenant``, and the policy bytes of a valid tenant."""
    before = sum(p.is_error for p in problems)
    entries, parse_problems = parse_mapping(path, data)
    problems.extend(parse_problems)
    if entries is None:
        return None, None
    f = Fields(path, entries, KEYS, problems)

    written_domain = f.text("domain")
    if written_domain is not None:
        try:
            if hostname(written_domain, what="domain").ascii != domain:
                f.error(
                    f.line("domain"),
                    f"domain: '{written_domain}' does not match the file name "
                    f"(which says '{domain}'); rename the file or fix the key",
                )
        except InvalidValue as exc:
            f.error(f.line("domain"), str(exc))

    mode = f.text("mode", required=True)
    if mode is not None and mode not in MODES:
        hint = " (write it in lower case)" if mode.lower() in MODES else ""
        f.error(f.line("mode"), f"mode: expected one of {', '.join(MODES)} (got {mode!r}){hint}")
        mode = None

    patterns: list[str] = []
    items = f.text_list("mx", required=mode in ("enforce", "testing"))
    seen: dict[str, int] = {}
    for text, line in items or []:
        try:
            pattern = mx_pattern(text)
        except InvalidValue as exc:
            f.error(line, str(exc))
            continue
        if pattern.written:
            f.warn(line, f"mx '{pattern.written}' is served as its A-label form '{pattern.ascii}'")
        if pattern.ascii in seen:
            f.error(line, f"mx '{text}' is listed twice (first on line {seen[pattern.ascii]})")
            continue
        seen[pattern.ascii] = line
        patterns.append(pattern.ascii)
    if "mx" in entries and entries["mx"].value == [] and mode in ("enforce", "testing"):
        f.error(f.line("mx"), f"mx: at least one pattern is required in mode {mode}")

    max_age = f.integer("max_age", required=True)
    if max_age is not None:
        line = f.line("max_age")
        if not 0 <= max_age <= MAX_AGE_LIMIT:
            f.error(line, f"max_age: expected 0..{MAX_AGE_LIMIT} seconds (got {max_age})")
            max_age = None
        elif max_age < MAX_AGE_WARN_BELOW:
            f.warn(
                line,
                f"max_age {max_age} is under a day ({MAX_AGE_WARN_BELOW}); "
                "some senders ignore such short policies",
            )
        elif mode == "enforce" and max_age < MAX_AGE_ENFORCE_RECOMMENDED:
            f.warn(
                line,
                f"max_age {max_age} is under a week; {MAX_AGE_ENFORCE_RECOMMENDED} or more "
                "is recommended for enforce",
            )

    note = f.text("note")
    rua: list[str] = []
    for text, line in f.text_list("tlsrpt_rua", allow_single=True) or []:
        try:
            rua.append(check_rua(text))
        except InvalidValue as exc:
            f.error(line, str(exc))

    if sum(p.is_error for p in problems) > before or mode is None or max_age is None:
        return None, None
    policy = Policy(mode=mode, mx=tuple(patterns), max_age=max_age)
    body = render(policy)
    if len(body) > MAX_POLICY_BYTES:
        f.error(f.line("mx"), f"policy would be {len(body)} bytes; the limit is {MAX_POLICY_BYTES}")
        return None, None
    tenant = Tenant(
        domain=domain, policy=policy, source=str(path), note=note, tlsrpt_rua=tuple(rua)
    )
    return tenant, body


def tenant_files(folder: Path) -> list[Path]:
    return [folder / name for name, _ in _scan(folder)]


def _scan(folder: Path, identities: bool = True) -> list[tuple[str, Identity | None]]:
    """Tenant file names in order, each with its identity (None when it
    vanished or cannot be looked at, and without ``identities``)."""
    # listdir and a stat relative to the open folder: with 100,000 files this
    # takes half the time of os.scandir and DirEntry.stat.
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        names = sorted(n for n in os.listdir(fd) if n.endswith(SUFFIX) and not n.startswith("."))
        if not identities:
            return [(name, None) for name in names]
        found: list[tuple[str, Identity | None]] = []
        stat = os.stat
        for name in names:
            try:
                st = stat(name, dir_fd=fd)
            except OSError:  # reading it will say why
                found.append((name, None))
                continue
            found.append((name, identity(st)))
        return found
    finally:
        os.close(fd)


def _large_cache(config: ProviderConfig) -> bool:
    """A parse cache of more than ``PARALLEL_MIN_FILES`` files or so."""
    try:
        return os.stat(config.parse_cache_path).st_size >= PARALLEL_MIN_FILES * 200
    except OSError:
        return False


Scanned = Callable[[], list[tuple[str, Identity | None]]]


@dataclass(frozen=True)
class _Ahead:
    """A scan started by ``scan_ahead`` for the next ``load_tenants``."""

    folder: Path
    started_ns: int  # time.time_ns() when it began
    result: Scanned
    # The snapshot's identity then: if another compile replaces it before
    # the load, the scan may miss what that compile served (a file made
    # since) or bring back what it dropped, so it is not used.
    snapshot: Path
    snapshot_identity: FileIdentity | None


_ahead: _Ahead | None = None


def scan_ahead(config: ProviderConfig, jobs: int) -> None:
    """Start looking at the tenants folder now, in a forked child, for the
    next ``load_tenants`` of this folder to use, if that would do so (a
    large parse cache, more than one job): a command that reads the
    snapshot before it compiles (`reload`) has it done meanwhile. Only
    called where no other thread runs."""
    global _ahead
    if jobs > 1 and _ahead is None and _large_cache(config):
        snapshot = config.snapshot_path
        identity = identity_if_readable(snapshot)
        started = time.time_ns()
        scanned = _scan_beside(config.tenants_dir)
        _ahead = _Ahead(config.tenants_dir, started, scanned, snapshot, identity)


def _take_scan_ahead(folder: Path) -> tuple[int, Scanned] | None:
    global _ahead
    if _ahead is None or _ahead.folder != folder:
        return None
    ahead, _ahead = _ahead, None
    if identity_if_readable(ahead.snapshot) != ahead.snapshot_identity:
        log.info("another compile ran since the tenants folder was looked at; looking again")
        with contextlib.suppress(Exception):
            ahead.result()  # reap the child
        return None
    return ahead.started_ns, ahead.result


def _scan_beside(folder: Path) -> Scanned:
    """Start ``_scan(folder)`` in a forked child; the returned function waits
    for its result (and raises the child's OSError). Only called where no
    other thread runs (as ``_load_many``). If the child fails otherwise, the
    folder is scanned here."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: scan, send, and leave without cleaning up
        try:
            os.close(read_end)
            try:
                outcome: object = _scan(folder)
            except OSError as exc:
                outcome = exc
            with os.fdopen(write_end, "wb") as pipe:
                pipe.write(pickle.dumps(outcome, pickle.HIGHEST_PROTOCOL))
        finally:
            os._exit(0)
    os.close(write_end)

    def result() -> list[tuple[str, Identity | None]]:
        with os.fdopen(read_end, "rb") as pipe:
            data = pipe.read()
        os.waitpid(pid, 0)
        try:
            # Our own child's bytes, over a pipe only it and we hold.
            outcome = pickle.loads(data)
        except Exception:  # the child died before it sent anything
            log.warning("scanning %s in a second process failed; scanning it here", folder)
            return _scan(folder)
        if isinstance(outcome, OSError):
            raise outcome
        found: list[tuple[str, Identity | None]] = outcome
        return found

    return result


def load_file(path: Path, config: ProviderConfig) -> Outcome:
    """Read and check one tenant file: its domain, the tenant if valid, and
    every problem (all but duplicates across files, which ``load_tenants``
    adds)."""
    problems: list[Problem] = []
    domain = domain_from_filename(path, config, problems)
    tenant = body = None
    if domain is not None:
        data = read_limited(path, MAX_TENANT_BYTES)
        if isinstance(data, Problem):
            problems.append(data)
        else:
            tenant, body = _parse_tenant(path, data, domain, problems)
    return domain, tenant, problems, body


def _load_chunk(config: ProviderConfig, names: list[str]) -> list[Outcome]:
    return [load_file(config.tenants_dir / name, config) for name in names]


def _load_many(config: ProviderConfig, names: list[str], jobs: int) -> list[Outcome]:
    """``load_file`` for every name, in ``jobs`` processes when it pays."""
    if jobs <= 1 or len(names) < PARALLEL_MIN_FILES:
        return _load_chunk(config, names)
    # fork: the children inherit the loaded modules and start at once. Only
    # called where no other thread runs (the CLI, the gunicorn master before
    # it installs its signal handlers).
    context = multiprocessing.get_context("fork")
    size = max(PARALLEL_MIN_FILES // 4, len(names) // (jobs * 8) + 1)
    chunks = [names[i : i + size] for i in range(0, len(names), size)]
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        parts = pool.map(_load_chunk, [config] * len(chunks), chunks)
        return [outcome for part in parts for outcome in part]


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
    building 100,000 of them costs a few tenths of a second).
    """
    with gc_paused():
        return _load_tenants(config, jobs, cache, save_cache, tenants)


def _load_tenants(
    config: ProviderConfig, jobs: int, cache: bool, save_cache: bool, want_tenants: bool
) -> LoadResult:
    result = LoadResult()
    folder = config.tenants_dir
    now_ns = time.time_ns()
    key = cache_key(_PARSING_MODULES, str(folder), config.id_zone)
    # With a large cache, the folder is looked at in a second process while
    # this one reads the cache (both take a few tenths of a second with
    # 100,000 tenants).
    scanned: Scanned | None = None
    ahead = _take_scan_ahead(folder)
    if ahead is not None:
        # The files were looked at from then on: racily clean entries are
        # judged from that earlier moment (parsecache.ParseCache.save).
        now_ns, scanned = min(now_ns, ahead[0]), ahead[1]
    elif cache and jobs > 1 and _large_cache(config):
        scanned = _scan_beside(folder)
    try:
        store = ParseCache.load(config.parse_cache_path if cache else None, key)
    except BaseException:
        if scanned is not None:  # reap the child
            with contextlib.suppress(Exception):
                scanned()
        raise
    try:
        if scanned is not None:
            names = scanned()
        else:
            # Identities only matter to the cache (one stat per file).
            names = _scan(folder, identities=bool(store.items) or (save_cache and cache))
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
                    body.encode() if body is not None else None,
                )
            )
        except (ValueError, TypeError, KeyError, IndexError, UnicodeError, AttributeError):
            files.append(None)  # not cached, changed, or a damaged entry: read it
            misses.append(name)
    fresh: dict[str, Outcome] = {}
    if misses:
        log.debug("reading %d of %d tenant files", len(misses), len(names))
        fresh = dict(zip(misses, _load_many(config, misses, jobs), strict=True))
    if save_cache and cache:
        identities = {n: i for n, i in names if i is not None}
        result.save_cache = lambda: store.save(identities, fresh, now_ns)

    owners: dict[str, str] = {}
    tenants, bodies, sources, broken = result.tenants, result.bodies, result.sources, result.broken
    problems = result.problems
    for (name, _), known in zip(names, files, strict=True):
        if known is None:
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
        assert body is not None
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
)
