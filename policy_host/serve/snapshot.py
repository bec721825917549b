"""The compiled set of served policies, with "last good" kept per tenant.

The compile (``compiler.compile_snapshot``) reads the tenants folder and
merges the result with the previous snapshot (``merge``): a tenant whose
file is broken keeps the policy it had, so a typo never replaces a working
policy with nothing. The server's workers never parse YAML: they read the
database made from the snapshot (``store``); the gunicorn master rewrites
the snapshot on start and on every reload.

Each snapshot has a random ``id``; the change journal beside it
(``journal``) takes the database from one id to the next without reading
the whole snapshot. The snapshot is JSON with one tenant per line, so that a
worker can read it line by line instead of holding the whole text and its
parse at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from json.decoder import scanstring  # type: ignore[attr-defined]
from pathlib import Path
from typing import Any, TextIO

from policy_host.errors import PolicyHostError
from policy_host.fileio import Identity, file_identity, replace_file
from policy_host.model import POLICY_HOST_PREFIX
from policy_host.read.parsecache import gc_paused
from policy_host.read.tenants import LoadMemo, LoadResult
from policy_host.render import fingerprint, render
from policy_host.serve.journal import Step, journal_path, read_journal

log = logging.getLogger(__name__)

FORMAT = 1
# The source shown for a policy served from the apply state (no tenant file).
STATE_SOURCE = "apply state (tenant file removed)"
# The source shown for a policy from a journal step that does not name one.
CHANGED_SOURCE = "tenant file (changed since the snapshot was written)"
# Served policies are looked up by Host: this, then the tenant's domain.


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


def new_snapshot_id() -> str:
    return secrets.token_hex(8)


@dataclass(frozen=True)
class Snapshot:
    entries: dict[str, Entry] = field(default_factory=dict)
    # Names this set of policies in the change journal.
    id: str = field(default_factory=new_snapshot_id)

    def policies_by_host(self) -> dict[str, bytes]:
        """``mta-sts.<domain>`` -> body, the only lookup the web app does."""
        return {POLICY_HOST_PREFIX + domain: entry.body for domain, entry in self.entries.items()}


def merge(
    result: LoadResult,
    previous: Mapping[str, bytes] | None,
    from_state: Mapping[str, bytes] | None = None,
) -> tuple[Snapshot, list[str]]:
    """New snapshot from a load result; returns it and the domains kept at
    their last good policy.

    ``previous`` is what was served (``mta-sts.<domain>`` -> body, as
    ``served_policies`` reads it): a broken tenant keeps its body.

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
        body = previous.get(POLICY_HOST_PREFIX + domain) if previous else None
        if body is None:
            body = from_state.get(domain)
        if body is not None:
            entries[domain] = Entry(body, source, stale=True)
            kept.append(domain)
    for domain, body in from_state.items():
        if domain not in entries and domain not in result.broken:
            entries[domain] = Entry(body, STATE_SOURCE)
    return Snapshot(dict(sorted(entries.items()))), kept


@dataclass
class SnapshotMemo:
    """What one run keeps of the snapshot files it read or wrote, by the
    file's identity, and of its loads of the tenants folder.

    A run looks at what is served more than once (`reload` for its report,
    the compile for "last good"), and with 100,000 tenants each read costs a
    few tenths of a second. The snapshot is only ever replaced by rename,
    so a new one always has a new identity. The run (a command, one compile
    in the gunicorn master) owns the memo; dropping it frees what it holds,
    so the master forks its workers without copies.
    """

    load: LoadMemo = field(default_factory=LoadMemo)
    snapshot: tuple[Path, Identity, Snapshot] | None = None
    served: tuple[Path, Identity, dict[str, bytes], str] | None = None


def read_snapshot(path: Path, memo: SnapshotMemo | None = None) -> Snapshot | None:
    """The snapshot at ``path``; ``None`` if there is none yet. ``memo``:
    kept there, and taken from there while the file is the same."""
    ident = file_identity(path)
    if ident is None:
        return None
    if memo is not None and memo.snapshot is not None and memo.snapshot[:2] == (path, ident):
        return _snapshot_with_steps(path, memo.snapshot[2])
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
    snapshot = Snapshot(entries, _check_header(path, raw))
    if memo is not None:
        memo.snapshot = (path, ident, snapshot)
    return _snapshot_with_steps(path, snapshot)


def steps_since(path: Path, snapshot_id: str, until: str | None = None) -> list[Step]:
    """The journal's steps from the snapshot ``snapshot_id`` at ``path`` to
    the newest compile: a change compiled alone (``incremental``) writes
    only its step. ``[]`` when the journal does not lead on from it (it can
    only be read, or is not there: the snapshot is then the newest).
    ``until``: no step after the one that made it (``files.dirty_base``:
    later ones may be a dead compile's); none at all when it is not there."""
    try:
        journal = read_journal(journal_path(path))
    except PolicyHostError as exc:
        log.warning("%s; taking the snapshot as what is served", exc)
        return []
    steps = journal.since(snapshot_id) if journal is not None else None
    if not steps or until is None:
        return steps or []
    made = [step.id for step in steps]
    return steps[: made.index(until) + 1] if until in made else []


def _snapshot_with_steps(path: Path, snapshot: Snapshot) -> Snapshot:
    steps = steps_since(path, snapshot.id)
    if not steps:
        return snapshot
    entries = dict(snapshot.entries)
    skip = len(POLICY_HOST_PREFIX)
    for step in steps:
        for host, body in step.put.items():
            entries[host[skip:]] = Entry(body, step.sources.get(host, CHANGED_SOURCE))
        for host in step.drop:
            entries.pop(host[skip:], None)
    return Snapshot(dict(sorted(entries.items())), steps[-1].id)


def with_steps(
    path: Path, policies: Mapping[str, bytes], snapshot_id: str, until: str | None = None
) -> tuple[Mapping[str, bytes], str]:
    """``policies`` (the snapshot ``snapshot_id`` at ``path``) with the
    journal's steps since it applied (up to ``until``: ``steps_since``):
    what the workers serve."""
    steps = steps_since(path, snapshot_id, until)
    if not steps:
        return policies, snapshot_id
    served = dict(policies)
    for step in steps:
        served.update(step.put)
        for host in step.drop:
            served.pop(host, None)
    return served, steps[-1].id


def served_id(path: Path) -> str | None:
    """The id of what the workers serve: the journal's head when it leads
    on from the snapshot at ``path``, else the snapshot's id (``None``: no
    snapshot yet)."""
    on_disk = snapshot_id(path)
    if on_disk is None:
        return None
    steps = steps_since(path, on_disk)
    return steps[-1].id if steps else on_disk


# The header line of a snapshot: the keys before the tenants, then one
# tenant per line, then the footer.
_HEADER_END = '"tenants":{\n'
_FOOTER = "}}\n"


def served_policies(
    path: Path, memo: SnapshotMemo | None = None, until: str | None = None
) -> tuple[Mapping[str, bytes], str] | None:
    """What the workers serve: ``read_served`` with the journal's steps
    since the snapshot applied (``with_steps``, ``until``); the file's part is kept in
    ``memo`` for the next call while the file is the same. For the control
    plane: the mapping must not be changed. (The web workers read the
    database ``store`` keeps at the same place.)"""
    if memo is None:
        found = read_served(path)
        return with_steps(path, *found, until) if found is not None else None
    ident = file_identity(path)
    if ident is None:
        return None
    if memo.served is not None and memo.served[:2] == (path, ident):
        return with_steps(path, memo.served[2], memo.served[3], until)
    found = read_served(path)
    if found is not None:
        memo.served = (path, ident, *found)
        return with_steps(path, *found, until)
    return found


def read_served(path: Path) -> tuple[dict[str, bytes], str] | None:
    """``mta-sts.<domain>`` -> body from the snapshot at ``path``, and the
    snapshot's id (``served_rows`` into a dict)."""
    with served_rows(path) as found, gc_paused():
        if found is None:
            return None
        snapshot_id, rows = found
        return dict(rows), snapshot_id


@contextlib.contextmanager
def served_rows(path: Path) -> Iterator[tuple[str, Iterator[tuple[str, bytes]]] | None]:
    """The snapshot at ``path`` as its id and its ``(mta-sts.<domain>,
    body)`` pairs, in the file's (domain) order; ``None`` if there is none.
    The file is read a line (a tenant) at a time, so a reader never holds
    the whole text or its parse (docs/performance.md); a broken line raises
    ``PolicyHostError`` when the pairs reach it."""
    try:
        handle = open(path, encoding="ascii")  # noqa: SIM115 (closed below)
    except FileNotFoundError:
        yield None
        return
    except OSError as exc:
        raise PolicyHostError(f"{path}: cannot read the served-policy snapshot: {exc}") from exc
    with handle:
        try:
            first = handle.readline()
        except (OSError, ValueError) as exc:  # UnicodeError
            raise PolicyHostError(f"{path}: cannot read the served-policy snapshot: {exc}") from exc
        yield _header_id(path, first), _rows(path, handle)


def _rows(path: Path, handle: TextIO) -> Iterator[tuple[str, bytes]]:
    try:
        for line in handle:
            if line == _FOOTER:
                return
            domain, body = _entry(line)
            yield POLICY_HOST_PREFIX + domain, body
    except (OSError, ValueError) as exc:  # JSONDecodeError, UnicodeError
        raise PolicyHostError(f"{path}: cannot read the served-policy snapshot: {exc}") from exc
    raise PolicyHostError(f"{path}: cannot read the served-policy snapshot: it ends early")


# Each tenant line starts ``"<domain>":{"body":"`` (keys sorted).
_BODY = '":{"body":"'


def _entry(line: str) -> tuple[str, bytes]:
    """The domain and body of one tenant line; only the body's string is
    decoded (the C scanner json itself uses), the rest is for people."""
    split = line.find(_BODY, 1)
    # A domain is a plain ASCII name: no escapes in its JSON string.
    if not line.startswith('"') or split < 0 or "\\" in line[:split]:
        raise ValueError(f"not a tenant line: {line[:80]!r}")
    body, end = scanstring(line, split + len(_BODY))
    if not line.startswith(',"fingerprint":', end):
        raise ValueError(f"not a tenant line: {line[:80]!r}")
    return line[1:split], body.encode("ascii")


def snapshot_id(path: Path) -> str | None:
    """The id of the snapshot at ``path`` from its first line; ``None`` if
    there is none."""
    try:
        with open(path, encoding="ascii") as handle:
            first = handle.readline()
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise PolicyHostError(f"{path}: cannot read the served-policy snapshot: {exc}") from exc
    return _header_id(path, first)


def _header_id(path: Path, first: str) -> str:
    """The id in ``first``, the header line of a snapshot."""
    if not first.endswith(_HEADER_END):
        raise PolicyHostError(f"{path}: not a policy-host snapshot (format {FORMAT})")
    try:
        return _check_header(path, json.loads(first[:-1] + "}}"))
    except ValueError as exc:
        raise PolicyHostError(f"{path}: cannot read the served-policy snapshot: {exc}") from exc


def _check_format(path: Path, raw: object) -> dict[str, Any]:
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise PolicyHostError(f"{path}: not a policy-host snapshot (format {FORMAT})")
    return raw


def _check_header(path: Path, raw: object) -> str:
    snapshot_id = _check_format(path, raw).get("id")
    if not isinstance(snapshot_id, str):
        raise PolicyHostError(f"{path}: not a policy-host snapshot: id is {snapshot_id!r}")
    return snapshot_id


def _load(path: Path) -> dict[str, Any] | None:
    try:
        # Text, not bytes: json.loads would decode a bytes copy of its own,
        # and with 100,000 tenants each copy is 30 MB more at the peak.
        with open(path, encoding="ascii") as handle, gc_paused():
            raw = json.loads(handle.read())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise PolicyHostError(f"{path}: cannot read the served-policy snapshot: {exc}") from exc
    return _check_format(path, raw)


def write_snapshot(
    path: Path,
    snapshot: Snapshot,
    by_host: dict[str, bytes] | None = None,
    memo: SnapshotMemo | None = None,
) -> None:
    """Write atomically: readers see the old file or the new one, whole.

    JSON, keys sorted, one tenant per line (``read_served``); `jq .` shows
    it to a person. ``by_host``: ``snapshot.policies_by_host()`` if the
    caller has it (kept in ``memo`` for ``served_policies``)."""
    dumps = json.dumps
    lines = [
        f'{dumps(domain)}:{{"body":{dumps(entry.body.decode("ascii"))},'
        f'"fingerprint":"{entry.fingerprint}","source":{dumps(entry.source)},'
        f'"stale":{"true" if entry.stale else "false"}}}'
        for domain, entry in snapshot.entries.items()
    ]
    header = dumps({"format": FORMAT, "id": snapshot.id}, sort_keys=True, separators=(",", ":"))
    text = header[:-1] + ',"tenants":{\n' + ",\n".join(lines) + ("\n" if lines else "") + _FOOTER
    replace_file(path, text.encode("ascii"))
    if memo is None:
        return
    ident = file_identity(path)
    memo.snapshot = (path, ident, snapshot) if ident is not None else None
    if by_host is None:
        by_host = snapshot.policies_by_host()
    memo.served = (path, ident, by_host, snapshot.id) if ident is not None else None
