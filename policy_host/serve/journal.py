"""The change journal: what the last few compiles changed, beside the snapshot.

Each step goes from its parent snapshot's id to its own: the database the
workers read (``store``), holding the parent, takes the step in one
transaction instead of being built again from the whole snapshot (at
1,000,000 tenants 329 MB of JSON and seconds). The journal is written
before the snapshot (and after the policy files nginx serves), so its head
is the snapshot on disk or a newer one; a database the journal cannot bring
from what it holds to the snapshot on disk is built again from the
snapshot. Serving nodes get the journal with the snapshot.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from policy_host.errors import PolicyHostError
from policy_host.fileio import replace_file

log = logging.getLogger(__name__)

FORMAT = 1
# The journal's file name, in the snapshot's folder.
JOURNAL_NAME = "served.changes.json"
# The journal keeps at most this many steps, and this many changed hosts
# over all of them; a compile that changes more starts it anew (empty), and
# the workers then read the whole snapshot. (A body is about 300 bytes.)
JOURNAL_STEPS = 16
JOURNAL_MAX_CHANGES = 5_000
# A change compiled alone (``serve.incremental``) leaves the snapshot as it
# is: its step, and every step since the snapshot on disk, stay in the
# journal (up to this many, and ``JOURNAL_MAX_CHANGES``), and the next full
# compile writes the snapshot again. Every worker reads the journal when it
# changes, so its size is kept to a few hundred kilobytes.
JOURNAL_PINNED_STEPS = 1_000


def journal_path(snapshot_path: Path) -> Path:
    return snapshot_path.with_name(JOURNAL_NAME)


@dataclass(frozen=True)
class Step:
    """What one compile changed: from the snapshot ``parent`` to ``id``."""

    parent: str
    id: str
    put: dict[str, bytes]  # host -> body, new or changed
    drop: tuple[str, ...]  # hosts no longer served
    # host -> the file (or state) a put body comes from, for people
    # (`show`); a step may leave it out.
    sources: dict[str, str] = field(default_factory=dict)

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
    *,
    pinned: str | None = None,
    sources: Mapping[str, str] | None = None,
) -> Journal:
    """Add the step ``parent`` -> ``snapshot_id`` to the journal at ``path``.

    ``pinned``: the id of the snapshot on disk when it is not written
    again (a change compiled alone): the steps from it are kept, up to
    ``JOURNAL_PINNED_STEPS`` (``pinned_room`` says beforehand whether they
    fit; ``JournalFull`` if not).

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
        steps.append(Step(parent, snapshot_id, put, tuple(drop), dict(sources or {})))
        if pinned is not None:
            steps = _from_pinned(steps, pinned)
        else:
            while len(steps) > JOURNAL_STEPS or sum(s.size for s in steps) > JOURNAL_MAX_CHANGES:
                steps.pop(0)
    elif pinned is not None:
        raise JournalFull(f"{path}: a change compiled alone needs the steps since {pinned}")
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
                **({"sources": step.sources} if step.sources else {}),
            }
            for step in journal.steps
        ],
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    replace_file(path, text.encode("ascii") + b"\n")
    return journal


class JournalFull(PolicyHostError):
    """The steps since the snapshot on disk would not fit: write it again."""


def _from_pinned(steps: list[Step], pinned: str) -> list[Step]:
    parents = [step.parent for step in steps]
    if pinned not in parents:
        raise JournalFull(f"no step leads from the snapshot {pinned}")
    kept = steps[parents.index(pinned) :]
    if len(kept) > JOURNAL_PINNED_STEPS or sum(s.size for s in kept) > JOURNAL_MAX_CHANGES:
        raise JournalFull(f"more than {JOURNAL_PINNED_STEPS} steps since the snapshot")
    return kept


def pinned_room(journal: Journal | None, pinned: str, size: int) -> bool:
    """Whether one more step of ``size`` changes fits after the steps from
    the snapshot ``pinned`` to the journal's head."""
    if journal is None:
        return size <= JOURNAL_MAX_CHANGES
    steps = journal.since(pinned)
    if steps is None:
        return False
    return (
        len(steps) < JOURNAL_PINNED_STEPS
        and sum(s.size for s in steps) + size <= JOURNAL_MAX_CHANGES
    )


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
                {_text(h): _text(w) for h, w in item.get("sources", {}).items()},
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
