"""The compiled set of served policies, with "last good" kept per tenant.

``compile_snapshot`` reads the tenants folder and merges the result with the
previous snapshot: a tenant whose file is broken keeps the policy it had, so
a typo never replaces a working policy with nothing. The server's workers
only read the snapshot (one JSON file), so they start fast and never parse
YAML; the gunicorn master rewrites it on start and on every reload.

Each snapshot has a random ``id``. Beside it, the change journal
(``served.changes.json``) holds what the last few compiles changed, each
step from its parent's id to its own: a worker serving the parent applies
the step instead of reading the whole snapshot again (with 100,000 tenants
that is 33 MB of JSON, a few tenths of a second and a second table in
memory while it is read). The journal is written before the snapshot (and
after the policy files nginx serves), so its head is the snapshot on disk
or a newer one; a worker the journal cannot bring from what it holds to the
snapshot on disk reads the snapshot.

The snapshot is JSON with one tenant per line, so that a worker can read it
line by line instead of holding the whole text and its parse at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from json.decoder import scanstring  # type: ignore[attr-defined]
from pathlib import Path
from typing import Any, TextIO

from policy_host.errors import PolicyHostError
from policy_host.fileio import Identity, file_identity, replace_file
from policy_host.read import parsecache
from policy_host.read.config import ProviderConfig
from policy_host.read.parsecache import gc_paused
from policy_host.read.tenants import LoadResult, load_tenants
from policy_host.render import fingerprint, render
from policy_host.serve import files as static
from policy_host.state import fallback_policies

log = logging.getLogger(__name__)

FORMAT = 1
# The journal keeps at most this many steps, and this many changed hosts
# over all of them; a compile that changes more starts it anew (empty), and
# the workers then read the whole snapshot. (A body is about 300 bytes.)
JOURNAL_STEPS = 16
JOURNAL_MAX_CHANGES = 5_000
# The source shown for a policy served from the apply state (no tenant file).
STATE_SOURCE = "apply state (tenant file removed)"
# Served policies are looked up by Host: this, then the tenant's domain.
HOST_PREFIX = "mta-sts."


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


def new_id() -> str:
    return secrets.token_hex(8)


@dataclass(frozen=True)
class Snapshot:
    entries: dict[str, Entry] = field(default_factory=dict)
    # Names this set of policies in the change journal; "" (a snapshot
    # written by an earlier version) is in no journal.
    id: str = field(default_factory=new_id)

    def policies_by_host(self) -> dict[str, bytes]:
        """``mta-sts.<domain>`` -> body, the only lookup the web app does."""
        return {HOST_PREFIX + domain: entry.body for domain, entry in self.entries.items()}


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
        body = previous.get(HOST_PREFIX + domain) if previous else None
        if body is None:
            body = from_state.get(domain)
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
    found = served_policies(config.snapshot_path)
    served, previous_id = found if found is not None else (None, "")
    if loaded is not None:
        result = loaded
    else:
        result = load_tenants(config, jobs=jobs, save_cache=True, tenants=False)
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
    try:
        static.sync(config.www_dir, wanted, served)
    except OSError as exc:
        raise PolicyHostError(
            f"{config.www_dir}: cannot write the policy files nginx serves: {exc}"
        ) from exc
    journal = config.snapshot_path.with_name(JOURNAL_NAME)
    try:
        # Before the snapshot: see the module's docstring.
        write_journal(journal, previous_id, snapshot.id, *changes(served, wanted))
    except OSError as exc:
        raise PolicyHostError(f"{journal}: cannot write the change journal: {exc}") from exc
    try:
        write_snapshot(config.snapshot_path, snapshot, wanted)
    except OSError as exc:
        # A full disk: the workers reach this compile's policies through the
        # journal, as nginx serves them; the next compile starts again from
        # the old snapshot on disk (and its dirty marker: ``static``).
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


def served_from_state(
    config: ProviderConfig, served: Mapping[str, bytes] | None
) -> Mapping[str, bytes]:
    """``state.fallback_policies``; if the state cannot be read, what was
    ``served`` before (so a withdrawal never stops because of it)."""
    try:
        return fallback_policies(config.state_db)
    except PolicyHostError as exc:
        log.error("%s; tenants without a file keep the policy served before", exc)
        return {h.removeprefix(HOST_PREFIX): b for h, b in served.items()} if served else {}


# The last snapshot read, by its file's identity: a run reads it several
# times (`reload` for its report, the compile for "last good"; `apply`), and
# with 100,000 tenants each read costs a few tenths of a second. The file is
# only ever replaced by rename, so a new snapshot always has a new identity.
_last_read: tuple[Path, Identity, Snapshot] | None = None


def read_snapshot(path: Path) -> Snapshot | None:
    """The snapshot at ``path``; ``None`` if there is none yet."""
    global _last_read
    ident = file_identity(path)
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
        snapshot_id = raw.get("id", "")  # none before the journal existed
        if not isinstance(snapshot_id, str):
            raise TypeError(f"id is {snapshot_id!r}")
    except (KeyError, TypeError, AttributeError, UnicodeError) as exc:
        raise PolicyHostError(f"{path}: not a policy-host snapshot: {exc!r}") from exc
    snapshot = Snapshot(entries, snapshot_id)
    _last_read = (path, ident, snapshot)
    return snapshot


# The header line of a snapshot written one tenant per line.
_HEADER_END = '"tenants":{\n'
_FOOTER = "}}\n"


# What the last compile in this process wrote, or the control plane read
# last, by the file's identity (see ``_last_read``): `reload` and `apply`
# look at what is served before they compile, and the compile needs it too.
_last_served: tuple[Path, Identity, dict[str, bytes], str] | None = None


def served_policies(path: Path) -> tuple[Mapping[str, bytes], str] | None:
    """``read_served``, kept for the next call while the file is the same.
    For the control plane: the mapping must not be changed. (The web
    workers call ``read_served``: keeping a second table would double their
    memory.)"""
    global _last_served
    ident = file_identity(path)
    if ident is None:
        return None
    if _last_served is not None and _last_served[:2] == (path, ident):
        return _last_served[2], _last_served[3]
    found = read_served(path)
    if found is not None:
        _last_served = (path, ident, *found)
    return found


def forget_cached() -> None:
    """Drop what this process keeps from its last compile: the snapshot,
    what it serves and the parse cache (tens of megabytes with 100,000
    tenants). The gunicorn master calls it after compiling, so that the
    workers it forks do not start with copies."""
    global _last_read, _last_served
    _last_read = _last_served = None
    parsecache.forget()


def read_served(path: Path) -> tuple[dict[str, bytes], str] | None:
    """``mta-sts.<domain>`` -> body from the snapshot at ``path``, and the
    snapshot's id: what the web workers need, and no more. The file is read
    a line (a tenant) at a time, so a worker building a new table holds the
    old table, the new one and one line, never the whole text or its parse
    (docs/performance.md)."""
    try:
        with open(path, encoding="ascii") as handle, gc_paused():
            return _read_lines(path, handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:  # JSONDecodeError, UnicodeError
        raise PolicyHostError(f"{path}: cannot read the served-policy snapshot: {exc}") from exc
    except (KeyError, TypeError, AttributeError) as exc:
        raise PolicyHostError(f"{path}: not a policy-host snapshot: {exc!r}") from exc


def _read_lines(path: Path, handle: TextIO) -> tuple[dict[str, bytes], str]:
    first = handle.readline()
    snapshot_id = _header_id(path, first)
    if snapshot_id is None:
        return _read_served_whole(path, first + handle.read())
    policies: dict[str, bytes] = {}
    for line in handle:
        if line == _FOOTER:
            return policies, snapshot_id
        domain, body = _entry(line)
        policies[HOST_PREFIX + domain] = body
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


def _read_served_whole(path: Path, text: str) -> tuple[dict[str, bytes], str]:
    """A snapshot written on one line (by an earlier version)."""
    raw = _check_format(path, json.loads(text, object_hook=_body_only))
    del text
    tenants = raw.pop("tenants")
    policies: dict[str, bytes] = {}
    # popitem: each parsed text is freed as soon as its bytes exist.
    while tenants:
        domain, body = tenants.popitem()
        policies[HOST_PREFIX + domain] = body.encode("ascii")
    return policies, _check_header(path, raw)


def snapshot_id(path: Path) -> str | None:
    """The id of the snapshot at ``path`` from its first line (``""`` for
    one written by an earlier version); ``None`` if there is none."""
    try:
        with open(path, encoding="ascii") as handle:
            first = handle.readline()
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise PolicyHostError(f"{path}: cannot read the served-policy snapshot: {exc}") from exc
    found = _header_id(path, first)
    return "" if found is None else found


def _header_id(path: Path, first: str) -> str | None:
    """The id in ``first``, the header line of a snapshot written one tenant
    per line; None if it is a snapshot written on one line."""
    if not first.endswith(_HEADER_END):
        return None
    try:
        return _check_header(path, json.loads(first[:-1] + "}}"))
    except ValueError as exc:
        raise PolicyHostError(f"{path}: cannot read the served-policy snapshot: {exc}") from exc


def _check_format(path: Path, raw: object) -> dict[str, Any]:
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise PolicyHostError(f"{path}: not a policy-host snapshot (format {FORMAT})")
    return raw


def _check_header(path: Path, raw: object) -> str:
    snapshot_id = _check_format(path, raw).get("id", "")
    if not isinstance(snapshot_id, str):
        raise PolicyHostError(f"{path}: not a policy-host snapshot: id is {snapshot_id!r}")
    return snapshot_id


def _body_only(entry: dict[str, Any]) -> Any:
    return entry.get("body", entry)


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


def write_snapshot(path: Path, snapshot: Snapshot, by_host: dict[str, bytes] | None = None) -> None:
    """Write atomically: readers see the old file or the new one, whole.

    JSON, keys sorted, one tenant per line (``read_served``); `jq .` shows
    it to a person. ``by_host``: ``snapshot.policies_by_host()`` if the
    caller has it (kept for ``served_policies``)."""
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
    global _last_read, _last_served
    ident = file_identity(path)
    _last_read = (path, ident, snapshot) if ident is not None else None
    if by_host is None:
        by_host = snapshot.policies_by_host()
    _last_served = (path, ident, by_host, snapshot.id) if ident is not None else None


# The change journal, beside the snapshot.
JOURNAL_NAME = "served.changes.json"


@dataclass(frozen=True)
class Step:
    """What one compile changed: from the snapshot ``parent`` to ``id``."""

    parent: str
    id: str
    put: dict[str, bytes]  # host -> body, new or changed
    drop: tuple[str, ...]  # hosts no longer served

    @property
    def size(self) -> int:
        return len(self.put) + len(self.drop)


@dataclass(frozen=True)
class Journal:
    head: str  # the id of the newest snapshot written (or being written)
    steps: tuple[Step, ...] = ()

    def since(self, snapshot_id: str) -> list[Step] | None:
        """The steps from ``snapshot_id`` to ``head`` (``[]`` when it is the
        head); ``None`` when ``snapshot_id`` is not in this journal."""
        if snapshot_id == self.head:
            return []
        for at, step in enumerate(self.steps):
            if step.parent == snapshot_id:
                return list(self.steps[at:])
        return None

    def reaches(self, start: str, target: str) -> bool:
        """Whether applying ``since(start)`` passes through ``target``."""
        steps = self.since(start)
        return steps is not None and (target == start or any(s.id == target for s in steps))


def changes(
    before: Mapping[str, bytes] | None, after: Mapping[str, bytes]
) -> tuple[dict[str, bytes] | None, tuple[str, ...]]:
    """What turns ``before`` into ``after``: (new or changed, removed);
    ``(None, ())`` when there is no ``before``."""
    if before is None:
        return None, ()
    put = {host: body for host, body in after.items() if before.get(host) != body}
    drop = tuple(sorted(host for host in before if host not in after))
    return put, drop


def write_journal(
    path: Path,
    parent: str,
    snapshot_id: str,
    put: dict[str, bytes] | None,
    drop: Sequence[str],
) -> Journal:
    """Add the step ``parent`` -> ``snapshot_id`` to the journal at ``path``.

    Earlier steps are kept only when they lead to ``parent`` (a compile
    that died after writing the journal left a step no snapshot has), up to
    ``JOURNAL_STEPS`` and ``JOURNAL_MAX_CHANGES``; ``put`` of ``None`` (no
    previous snapshot), an unknown ``parent`` or too many changes start the
    journal anew.
    """
    try:
        old = read_journal(path)
    except PolicyHostError as exc:
        log.warning("%s; starting it anew", exc)
        old = None
    steps: list[Step] = []
    if put is not None and parent and len(put) + len(drop) <= JOURNAL_MAX_CHANGES:
        if old is not None:
            # The steps up to the one that made ``parent`` (all of them when
            # it is the head); none when no step made it.
            ids = [step.id for step in old.steps]
            steps = list(old.steps[: ids.index(parent) + 1]) if parent in ids else []
        steps.append(Step(parent, snapshot_id, put, tuple(drop)))
        while len(steps) > JOURNAL_STEPS or sum(s.size for s in steps) > JOURNAL_MAX_CHANGES:
            steps.pop(0)
    journal = Journal(snapshot_id, tuple(steps))
    payload = {
        "format": FORMAT,
        "head": journal.head,
        "steps": [
            {
                "parent": step.parent,
                "id": step.id,
                "put": {host: body.decode("ascii") for host, body in step.put.items()},
                "drop": list(step.drop),
            }
            for step in journal.steps
        ],
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    replace_file(path, text.encode("ascii") + b"\n")
    return journal


def read_journal(path: Path) -> Journal | None:
    """The change journal at ``path``; ``None`` if there is none."""
    try:
        with open(path, encoding="ascii") as handle:
            raw = json.loads(handle.read())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise PolicyHostError(f"{path}: cannot read the change journal: {exc}") from exc
    try:
        if raw["format"] != FORMAT:
            raise ValueError(f"format {raw['format']!r}")
        steps = tuple(
            Step(
                _text(item["parent"]),
                _text(item["id"]),
                {_text(host): _text(body).encode("ascii") for host, body in item["put"].items()},
                tuple(_text(host) for host in item["drop"]),
            )
            for item in raw["steps"]
        )
        journal = Journal(_text(raw["head"]), steps)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise PolicyHostError(f"{path}: not a policy-host change journal: {exc!r}") from exc
    links = [step.parent for step in steps[1:]] + [journal.head]
    if any(step.id != link for step, link in zip(steps, links, strict=False)):
        raise PolicyHostError(f"{path}: not a policy-host change journal: broken chain")
    return journal


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value
