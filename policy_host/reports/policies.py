"""Which of our policies a report was made against.

A report's ``policy-string`` is the policy body the sender applied, one line
per item (RFC 8460 section 4.3). Joined with CRLF it gives back the exact
bytes we served, whose SHA-256 is the fingerprint of every version `apply`
served (``state.served_versions``: its id, max_age and when it was
replaced). From that:

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
from pathlib import Path
from typing import Protocol

from policy_host import state
from policy_host.render import CRLF, fingerprint
from policy_host.reports.store import Tie

CURRENT = "current"
PREVIOUS = "previous"
STALE = "stale"
NEVER_SERVED = "never-served"
UNTRACKED = "untracked"
NOT_STS = "not-sts"
MATCHES = (CURRENT, PREVIOUS, STALE, NEVER_SERVED, UNTRACKED, NOT_STS)
# The ties without a policy id, made once (every report of a day asks).
_NOT_STS = Tie(None, NOT_STS)
_UNTRACKED = Tie(None, UNTRACKED)
_NEVER_SERVED = Tie(None, NEVER_SERVED)


class PolicyKey(Protocol):
    """What a report's policy entry says of the policy it used (a parsed
    ``PolicyResult`` or the ``PolicyRows`` a worker made of one)."""

    @property
    def policy_type(self) -> str: ...
    @property
    def domain(self) -> str: ...
    @property
    def policy_string(self) -> tuple[str, ...]: ...


class ServedHistory:
    """Every policy version served, by domain and fingerprint."""

    def __init__(self, versions: Iterable[state.ServedVersion]) -> None:
        self.domains: dict[str, dict[str, state.ServedVersion]] = {}
        for version in versions:
            self.domains.setdefault(version.domain, {})[version.fingerprint] = version

    @classmethod
    def load(cls, state_db: Path) -> ServedHistory:
        return cls(state.served_versions(state_db))

    def tie(self, result: PolicyKey, start: float) -> Tie:
        if result.policy_type != "sts":
            return _NOT_STS
        versions = self.domains.get(result.domain)
        if versions is None:
            return _UNTRACKED
        version = _lookup(versions, result.policy_string)
        if version is None:
            return _NEVER_SERVED
        if version.replaced_at is None:
            return Tie(version.policy_id, CURRENT)
        # RFC 8461 section 5: a sender may use a cached policy until its
        # max_age runs out after it last fetched it (at the latest, when the
        # policy was replaced).
        expired = version.replaced_at + version.max_age
        return Tie(version.policy_id, STALE if start > expired else PREVIOUS)


def body_candidates(lines: Sequence[str]) -> list[bytes]:
    """The bodies a ``policy-string`` may stand for: as sent, and with the
    spaces some senders add or drop around each line removed."""
    exact = (CRLF.join(lines) + CRLF).encode("utf-8", "replace")
    stripped = (CRLF.join(line.strip() for line in lines) + CRLF).encode("utf-8", "replace")
    return [exact] if exact == stripped else [exact, stripped]


def _lookup(
    versions: dict[str, state.ServedVersion], lines: Sequence[str]
) -> state.ServedVersion | None:
    for body in body_candidates(lines):
        version = versions.get(fingerprint(body))
        if version is not None:
            return version
    return None
