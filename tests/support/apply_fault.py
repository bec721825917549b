"""Run `policy-host apply` (the real command line) with a fault injected
right after one step.

    python tests/support/apply_fault.py STEP fill FOLDER policy-host-arguments...
    python tests/support/apply_fault.py STEP sigstop PID policy-host-arguments...

``fill``: write ``FOLDER/filler`` until its file system is full, so the
writes after STEP fail (the test deletes the file afterwards). ``sigstop``:
stop process PID (the DNS primary), so it no longer answers (the test sends
SIGCONT). Exits with the status `policy-host` exits with. For a crash
(SIGKILL) after a step, see apply_crash.py.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from policy_host.cli.main import main
from policy_host.publish import environment as environment_module
from policy_host.publish.environment import Environment
from policy_host.read.config import ProviderConfig

# Run as a script: tests/ is not on the path of its own.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support.front import fill


def fault(action: str, argument: str) -> Callable[[], None]:
    if action == "fill":

        def fill_up() -> None:
            fill(Path(argument))

        return fill_up
    if action == "sigstop":
        return lambda: os.kill(int(argument), signal.SIGSTOP)
    raise SystemExit(f"unknown fault {action!r}")


def run(step: str, action: str, argument: str, argv: list[str]) -> int:
    inject = fault(action, argument)
    # The name the command line calls (`apply`'s handler imports it from
    # its module when it runs).
    namespace = vars(environment_module)
    real: Callable[[ProviderConfig], Environment] = namespace["real_environment"]

    def environment(config: ProviderConfig) -> Environment:
        env = real(config)

        def hook(done: str) -> None:
            if done == step:
                inject()

        env.hook = hook
        return env

    namespace["real_environment"] = environment
    return main(argv)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]))
