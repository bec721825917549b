"""Does every worker of the app hold the snapshot just written? (pure)

nginx serves the policy files by itself, so a fetch through it says
nothing of the workers behind it; one request to the app reaches one
worker, so one fetch says nothing of the others either. Each worker
answers ``serve.web.SNAPSHOT_PATH`` on the app's private listener with the
snapshot it holds, its pid and how many workers the server runs; `apply`
asks (new connection each time, so any worker may take it) until it has
heard every one hold the snapshot it wrote. A worker that cannot read the
snapshot keeps serving its old table and says why: no id is published
until it can (RFC 8461 section 8).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class WorkerState:
    pid: int
    snapshot: str
    workers: int
    error: str | None = None


def parse_state(text: str) -> WorkerState | None:
    """A SNAPSHOT_PATH answer; None when it is not one."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        values[key] = value
    try:
        return WorkerState(
            int(values["worker"]), values["snapshot"], int(values["workers"]), values.get("error")
        )
    except (KeyError, ValueError):
        return None


@dataclass
class WorkerTally:
    """What the workers said so far, latest per pid."""

    want: str
    latest: dict[int, WorkerState] = field(default_factory=dict)

    def add(self, state: WorkerState) -> None:
        self.latest[state.pid] = state

    def problem(self) -> str | None:
        """None once every worker was heard holding ``want``."""
        if not self.latest:
            return "no worker answered"
        for state in self.latest.values():
            if state.error is not None:
                return (
                    f"worker {state.pid} cannot load the new snapshot ({state.error}) "
                    f"and still serves snapshot {state.snapshot}"
                )
            if state.snapshot != self.want:
                return f"worker {state.pid} still serves snapshot {state.snapshot}, not {self.want}"
        workers = max(state.workers for state in self.latest.values())
        if len(self.latest) < workers:
            return f"only {len(self.latest)} of {workers} workers answered"
        return None
