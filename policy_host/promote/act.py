"""Carry out a promotion or a step down: the tenant file edit and its event.

Both go through ``edit.set_mode`` (one line, validated, atomic) under one
lock, and each leaves an event with its evidence in the results store, so
whatever is served can be explained from the tenant files and the state.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from policy_host.fileio import locked
from policy_host.promote.edit import Edit, read_tenant_file, set_mode, write_edit
from policy_host.results import PROMOTED, STEPPED_DOWN, Event, add_events


@dataclass(frozen=True)
class Change:
    """A mode change to make in one tenant file, and why."""

    domain: str
    path: Path
    old: str
    new: str
    kind: str  # PROMOTED or STEPPED_DOWN
    message: str
    evidence: dict[str, Any]


def utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(seconds))


def promotion(domain: str, path: Path, evidence: dict[str, Any], now: float) -> Change:
    return Change(
        domain,
        path,
        "testing",
        "enforce",
        PROMOTED,
        f"promoted to enforce by policy-host {utc(now)}: ready on evidence",
        evidence,
    )


def step_down(domain: str, path: Path, why: str, evidence: dict[str, Any], now: float) -> Change:
    return Change(
        domain,
        path,
        "enforce",
        "testing",
        STEPPED_DOWN,
        f"stepped down to testing by policy-host {utc(now)}: {why}",
        evidence,
    )


def plan(change: Change) -> Edit:
    """The edit ``change`` makes (raises ``EditError`` if it cannot be made)."""
    data = read_tenant_file(change.path)
    return set_mode(change.path, data, change.domain, change.old, change.new, change.message)


def carry_out(
    changes: Sequence[Change], lock: Path, results_db: Path, now: float
) -> list[tuple[Change, Edit]]:
    """Edit each file and keep each event; under the lock so two runs never
    edit the same file at once. A change that cannot be made raises
    ``EditError`` before anything of it is written."""
    done: list[tuple[Change, Edit]] = []
    with locked(lock, wait=30.0, write_pid=True):
        for change in changes:
            edit = plan(change)
            write_edit(edit)
            done.append((change, edit))
            add_events(
                results_db,
                [
                    Event(
                        change.domain,
                        now,
                        change.kind,
                        change.message,
                        {**change.evidence, "file": str(change.path), "line": edit.new_line},
                    )
                ],
            )
    return done
