"""The compiled set of served policies, with "last good" kept per tenant.

``compile_snapshot`` reads the tenants folder and merges the result with the
previous snapshot: a tenant whose file is broken keeps the policy it had, so
a typo never replaces a working policy with nothing. The server's workers
only read the snapshot (one JSON file), so they start fast and never parse
YAML; the gunicorn master rewrites it on start and on every reload.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import static
from .config import ProviderConfig
from .errors import PolicyHostError
from .parsecache import gc_paused
from .render import fingerprint, render
from .state import fallback_policies
from .tenants import LoadResult, load_tenants

log = logging.getLogger(__name__)

FORMAT = 1
# The source shown for a policy served from the apply state (no tenant file).
STATE_SOURCE = "apply state (tenant file removed)"


@dataclass(frozen=True)
class Entry:
    """One served policy: its bytes and where they came from."""

    body: bytes
    source: str
    # True when the tenant's file is broken and these are its last good bytes.
    stale: bool = False

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.body)


@dataclass(frozen=True)
class Snapshot:
    entries: dict[str, Entry] = field(default_factory=dict)

    def policies_by_host(self) -> dict[str, bytes]:
        """``mta-sts.<domain>`` -> body, the only lookup the web app does."""
        return {f"mta-sts.{domain}": entry.body for domain, entry in self.entries.items()}


def merge(
    result: LoadResult,
    previous: Snapshot | None,
    from_state: Mapping[str, bytes] | None = None,
) -> tuple[Snapshot, list[str]]:
    """New snapshot from a load result; returns it and the domains kept at
    their last good policy.

    ``from_state`` (``state.fallback_policies``) holds what `apply` serves
    for tenants whose file is gone: the ``mode: none`` policy while one is
    withdrawn (RFC 8461 section 8), or the last published policy until
    `apply` starts withdrawing it. A tenant file that exists always wins.
    """
    from_state = from_state or {}
    if result.bodies:  # from load_tenants
        entries = {
            domain: Entry(body, result.sources[domain]) for domain, body in result.bodies.items()
        }
    else:  # a LoadResult made by hand: tenants only
        entries = {
            domain: Entry(render(tenant.policy), tenant.source)
            for domain, tenant in result.tenants.items()
        }
    kept = []
    for domain, source in sorted(result.broken.items()):
        old = previous.entries.get(domain) if previous else None
        body = old.body if old is not None else from_state.get(domain)
        if body is not None:
            entries[domain] = Entry(body, source, stale=True)
            kept.append(domain)
    for domain, body in from_state.items():
        if domain not in entries and domain not in result.broken:
            entries[domain] = Entry(body, STATE_SOURCE)
    return Snapshot(dict(sorted(entries.items()))), kept


def compile_snapshot(
    config: ProviderConfig, *, jobs: int = 1, loaded: LoadResult | None = None
) -> tuple[Snapshot, LoadResult, list[str]]:
    """Load tenants, merge with the last snapshot, write the result.

    Every served policy is also written as a file nginx serves by itself
    (``static``), before the snapshot, so that both say the same once this
    returns. Tenant files unchanged since the parse cache saw them are not
    read again; the others are read in ``jobs`` processes when many.
    ``loaded`` is a load of the tenant files the caller already made (and
    checked): `apply` serves exactly what it validated and planned.

    Returns the snapshot written, the load result (for its problems and
    broken files; it holds ``bodies``, not ``Tenant`` objects: see
    ``load_tenants(tenants=False)``) and the domains served from their last
    good policy.
    """
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(static.locked(config.www_dir))
        except OSError as exc:  # TimeoutError too
            raise PolicyHostError(f"{config.www_dir}: cannot compile: {exc}") from exc
        stack.enter_context(gc_paused())
        return _compile(config, jobs, loaded)


def _compile(
    config: ProviderConfig, jobs: int, loaded: LoadResult | None
) -> tuple[Snapshot, LoadResult, list[str]]:
    previous = read_snapshot(config.snapshot_path)
    if loaded is not None:
        result = loaded
    else:
        result = load_tenants(config, jobs=jobs, save_cache=True, tenants=False)
    if not result.complete:
        raise PolicyHostError(
            "; ".join(str(p) for p in result.problems) + " (the served policies are unchanged)"
        )
    snapshot, kept = merge(result, previous, served_from_state(config, previous))
    for problem in result.problems:
        (log.error if problem.is_error else log.warning)("%s", problem)
    for domain in result.broken:
        if domain in kept:
            log.warning("%s: file is broken; still serving its last good policy", domain)
        else:
            log.error("%s: file is broken and no earlier policy exists; not served", domain)
    try:
        static.sync(
            config.www_dir,
            snapshot.policies_by_host(),
            previous.policies_by_host() if previous is not None else None,
        )
    except OSError as exc:
        raise PolicyHostError(
            f"{config.www_dir}: cannot write the policy files nginx serves: {exc}"
        ) from exc
    try:
        write_snapshot(config.snapshot_path, snapshot)
    except OSError as exc:  # a full disk: the workers keep the old snapshot
        raise PolicyHostError(
            f"{config.snapshot_path}: cannot write the served-policy snapshot: {exc}"
        ) from exc
    static.done(config.www_dir)
    result.save_cache()  # last: the policies are live already
    log.info(
        "compiled %d policies from %d tenant files (%d problems, %d kept at last good)",
        len(snapshot.entries),
        result.files,
        len(result.errors),
        len(kept),
    )
    return snapshot, result, kept


def served_from_state(config: ProviderConfig, previous: Snapshot | None) -> Mapping[str, bytes]:
    """``state.fallback_policies``; if the state cannot be read, what was
    served before (so a withdrawal never stops because of it)."""
    try:
        return fallback_policies(config.state_db)
    except PolicyHostError as exc:
        log.error("%s; tenants without a file keep the policy served before", exc)
        return {d: e.body for d, e in previous.entries.items()} if previous else {}


def _identity(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)


# The last snapshot read, by its file's identity: a run reads it several
# times (`reload` for its report, the compile for "last good"; `apply`), and
# with 100,000 tenants each read costs a few tenths of a second. The file is
# only ever replaced by rename, so a new snapshot always has a new identity.
_last_read: tuple[Path, tuple[int, int, int, int], Snapshot] | None = None


def read_snapshot(path: Path) -> Snapshot | None:
    """The snapshot at ``path``; ``None`` if there is none yet."""
    global _last_read
    ident = _identity(path)
    if ident is None:
        return None
    if _last_read is not None and _last_read[:2] == (path, ident):
        return _last_read[2]
    raw = _load(path)
    if raw is None:
        return None
    try:
        with gc_paused():
            entries = {
                domain: Entry(item["body"].encode("ascii"), item["source"], bool(item["stale"]))
                for domain, item in raw["tenants"].items()
            }
    except (KeyError, TypeError, AttributeError, UnicodeError) as exc:
        raise PolicyHostError(f"{path}: not a policy-host snapshot: {exc!r}") from exc
    snapshot = Snapshot(entries)
    _last_read = (path, ident, snapshot)
    return snapshot


def read_policies(path: Path) -> dict[str, bytes] | None:
    """``mta-sts.<domain>`` -> body from the snapshot at ``path``: what the
    web workers need, and no more. Each tenant's entry is dropped for its
    body as soon as it is parsed, so a worker holding 100,000 policies never
    holds the whole parsed file as well (docs/performance.md)."""
    raw = _load(path, object_hook=_body_only)
    if raw is None:
        return None
    try:
        tenants = raw.pop("tenants")
        del raw
        policies: dict[str, bytes] = {}
        with gc_paused():
            # popitem: each parsed text is freed as soon as its bytes exist,
            # so the peak is one table and a half, not two.
            while tenants:
                domain, body = tenants.popitem()
                policies["mta-sts." + domain] = body.encode("ascii")
        return policies
    except (KeyError, TypeError, AttributeError, UnicodeError) as exc:
        raise PolicyHostError(f"{path}: not a policy-host snapshot: {exc!r}") from exc


def _body_only(entry: dict[str, Any]) -> Any:
    return entry.get("body", entry)


def _load(
    path: Path, object_hook: Callable[[dict[str, Any]], Any] | None = None
) -> dict[str, Any] | None:
    try:
        # Text, not bytes: json.loads would decode a bytes copy of its own,
        # and with 100,000 tenants each copy is 30 MB more at the peak.
        with open(path, encoding="ascii") as handle, gc_paused():
            raw = json.loads(handle.read(), object_hook=object_hook)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise PolicyHostError(f"{path}: cannot read the served-policy snapshot: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise PolicyHostError(f"{path}: not a policy-host snapshot (format {FORMAT})")
    return raw


def write_snapshot(path: Path, snapshot: Snapshot) -> None:
    """Write atomically: readers see the old file or the new one, whole."""
    payload = {
        "format": FORMAT,
        "tenants": {
            domain: {
                "body": entry.body.decode("ascii"),
                "source": entry.source,
                "stale": entry.stale,
                "fingerprint": entry.fingerprint,
            }
            for domain, entry in snapshot.entries.items()
        },
    }
    # No indent: only then does json use its C encoder (10x faster with
    # 100,000 tenants); `jq .` shows it to a person.
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    atomic_write(path, text.encode("ascii") + b"\n")
    global _last_read
    ident = _identity(path)
    _last_read = (path, ident, snapshot) if ident is not None else None


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
