"""What an `apply` run did (or, with ``dry_run``, would do): the plan, the
UPDATEs, the steps done, each authoritative server's arrival, and where
it stopped. The CLI prints it or writes it as JSON (``as_dict``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from policy_host.errors import Problem
from policy_host.publish.plan import Plan
from policy_host.publish.propagation import Arrival
from policy_host.publish.steps import ApplyError
from policy_host.publish.tlsrpt import TlsrptChange


@dataclass
class Report:
    """What a run did (or, with ``dry_run``, would do)."""

    dry_run: bool
    problems: list[Problem] = field(default_factory=list)
    # Empty until the run got as far as planning.
    plan: Plan = field(default_factory=lambda: Plan(now=0.0))
    tlsrpt: tuple[TlsrptChange, ...] = ()
    zone: str | None = None
    updates: list[str] = field(default_factory=list)
    reload: bool = False
    manual_dns: bool = False
    steps: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # New tenants served but not published: no valid certificate yet.
    held: list[str] = field(default_factory=list)
    # Per authoritative server: when it showed the run's changes.
    propagation: list[Arrival] = field(default_factory=list)
    failure: ApplyError | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None

    def as_dict(self) -> dict[str, object]:
        plan = self.plan
        return {
            "dry_run": self.dry_run,
            "ok": self.ok,
            "changes": [c.as_dict() for c in plan.changes],
            "unchanged": len(plan.unchanged),
            "withdrawing": [w.as_dict() for w in plan.withdrawing],
            "tlsrpt": [c.as_dict() for c in self.tlsrpt],
            "notes": [*plan.notes, *self.notes],
            "zone": self.zone,
            "dns_updates": self.updates,
            "reload": self.reload,
            "manual_dns": self.manual_dns,
            "steps_done": self.steps,
            "waiting_for_certificate": self.held,
            "propagation": [a.as_dict() for a in self.propagation],
            "problems": [p.as_dict() for p in self.problems],
            "failure": self.failure.as_dict() if self.failure else None,
        }
