"""Which of our policies a report was made against.

A report's ``policy-string`` is the policy body the sender applied, one line
per item (RFC 8460 section 4.3). Joined with CRLF it gives back the exact
bytes we served, whose SHA-256 is the fingerprint `apply` records for every
id it begins and commits (``state.history``). From that history follows:

- ``current``: the policy committed last (or being published now);
- ``previous``: an older one, still inside the ``max_age`` senders may cache
  it for after it was replaced (RFC 8461 section 5);
- ``stale``: an older one, used after its ``max_age`` ran out: that sender
  does not refresh its cache;
- ``never-served``: nothing we ever served for that domain;
- ``untracked``: we have no history for the domain (never applied);
- ``not-sts``: a ``tlsa`` or ``no-policy-found`` result.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from policy_host import state
from policy_host.render import CRLF, fingerprint
from policy_host.reports.model import PolicyResult
from policy_host.reports.store import Tie

CURRENT = "current"
PREVIOUS = "previous"
STALE = "stale"
NEVER_SERVED = "never-served"
UNTRACKED = "untracked"
NOT_STS = "not-sts"
MATCHES = (CURRENT, PREVIOUS, STALE, NEVER_SERVED, UNTRACKED, NOT_STS)


@dataclass(frozen=True)
class Version:
    policy_id: str
    max_age: int
    committed_at: float | None  # None: begun, not committed (yet)


@dataclass
class DomainHistory:
    by_fingerprint: dict[str, Version] = field(default_factory=dict)
    # Commit times, oldest first, with the fingerprint committed.
    commits: list[tuple[float, str]] = field(default_factory=list)


class ServedHistory:
    """Every fingerprint `apply` recorded, by domain."""

    def __init__(self, entries: Iterable[state.HistoryEntry]) -> None:
        self.domains: dict[str, DomainHistory] = {}
        for entry in entries:
            if entry.fingerprint is None or entry.policy_id is None:
                continue
            hist = self.domains.setdefault(entry.domain, DomainHistory())
            committed = entry.event.startswith("commit")
            known = hist.by_fingerprint.get(entry.fingerprint)
            if known is None or (committed and known.committed_at is None):
                hist.by_fingerprint[entry.fingerprint] = Version(
                    entry.policy_id, entry.max_age or 0, entry.at if committed else None
                )
            if committed:
                hist.commits.append((entry.at, entry.fingerprint))

    @classmethod
    def load(cls, state_db: Path) -> ServedHistory:
        return cls(state.history(state_db))

    def tie(self, result: PolicyResult, start: float) -> Tie:
        if result.policy_type != "sts":
            return Tie(None, NOT_STS)
        hist = self.domains.get(result.domain)
        if hist is None:
            return Tie(None, UNTRACKED)
        found = _lookup(hist, result.policy_string)
        if found is None:
            return Tie(None, NEVER_SERVED)
        fp, version = found
        replaced = [at for at, other in hist.commits if other != fp and at >= _since(hist, fp)]
        if not replaced:
            return Tie(version.policy_id, CURRENT)
        # RFC 8461 section 5: a sender may use a cached policy until its
        # max_age runs out after it last fetched it (at the latest, when the
        # policy was replaced).
        expired = min(replaced) + version.max_age
        return Tie(version.policy_id, STALE if start > expired else PREVIOUS)


def _since(hist: DomainHistory, fp: str) -> float:
    """When ``fp`` was last committed (so a later change replaced it)."""
    times = [at for at, other in hist.commits if other == fp]
    return max(times) if times else float("-inf")


def body_candidates(lines: Sequence[str]) -> list[bytes]:
    """The bodies a ``policy-string`` may stand for: as sent, and with the
    spaces some senders add or drop around each line removed."""
    exact = (CRLF.join(lines) + CRLF).encode("utf-8", "replace")
    stripped = (CRLF.join(line.strip() for line in lines) + CRLF).encode("utf-8", "replace")
    return [exact] if exact == stripped else [exact, stripped]


def _lookup(hist: DomainHistory, lines: Sequence[str]) -> tuple[str, Version] | None:
    for body in body_candidates(lines):
        fp = fingerprint(body)
        version = hist.by_fingerprint.get(fp)
        if version is not None:
            return fp, version
    return None
