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
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .config import ProviderConfig
from .errors import PolicyHostError
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


def compile_snapshot(config: ProviderConfig) -> tuple[Snapshot, LoadResult, list[str]]:
    """Load tenants, merge with the last snapshot, write the result.

    Returns the snapshot written, the load result (for its problems) and the
    domains served from their last good policy.
    """
    previous = read_snapshot(config.snapshot_path)
    result = load_tenants(config)
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
    write_snapshot(config.snapshot_path, snapshot)
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


def read_snapshot(path: Path) -> Snapshot | None:
    """The snapshot at ``path``; ``None`` if there is none yet."""
    try:
        with open(path, encoding="ascii") as handle:
            raw = json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise PolicyHostError(f"{path}: cannot read the served-policy snapshot: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise PolicyHostError(f"{path}: not a policy-host snapshot (format {FORMAT})")
    entries = {
        domain: Entry(item["body"].encode("ascii"), item["source"], bool(item["stale"]))
        for domain, item in raw["tenants"].items()
    }
    return Snapshot(entries)


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
    atomic_write(path, json.dumps(payload, indent=1, sort_keys=True).encode("ascii") + b"\n")


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
