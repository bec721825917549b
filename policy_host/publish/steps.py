"""The steps of an `apply` run, and the error that names where one stopped."""

from __future__ import annotations

from collections.abc import Sequence

from policy_host.errors import PolicyHostError

# Steps, in order; a failure names the one that stopped the run.
VALIDATE = "validate"
PLAN = "plan"
RECORD = "record"
RELOAD = "reload"
VERIFY = "verify"
# Only with serving nodes (``publish.nodes``): pushed to each, and each
# serves the new policies, before anything is published.
NODES = "nodes"
PUBLISH = "publish"
CONFIRM = "confirm"
COMMIT = "commit"
UNSERVE = "unserve"
# Hosted TLS-RPT records (``tlsrpt``), after the ids.
TLSRPT = "tlsrpt"
STEPS = (VALIDATE, PLAN, RECORD, RELOAD, VERIFY, NODES, PUBLISH, CONFIRM, COMMIT, UNSERVE, TLSRPT)

# Seconds between rounds of verification and confirmation.
POLL_INTERVAL = 0.1


class ApplyError(PolicyHostError):
    """A run stopped: which step, for which tenants, and why."""

    def __init__(self, step: str, domains: Sequence[str], reason: str) -> None:
        self.step = step
        self.domains = list(domains)
        self.reason = reason
        shown = ", ".join(self.domains[:5])
        if len(self.domains) > 5:
            shown += f" and {len(self.domains) - 5} more"
        who = f" for {shown}" if shown else ""
        super().__init__(f"apply stopped at step '{step}'{who}: {reason}")

    def as_dict(self) -> dict[str, object]:
        return {"step": self.step, "domains": self.domains, "message": self.reason}
