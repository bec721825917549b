"""Run `policy-host apply` and die by SIGKILL right after one step.

    python tests/support/apply_crash.py CONFIG STEP

A real crash (no cleanup, no finally blocks, no rollback by Python) at a
chosen point, for the tests that prove a rerun converges. Exits 3 if the
run fails before reaching STEP, 0 if STEP never comes.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from policy_host.publish.apply import run
from policy_host.publish.environment import real_environment
from policy_host.read.config import load_config


def main(argv: list[str]) -> int:
    config_file, step = argv
    config = load_config(Path(config_file))
    env = real_environment(config)

    def hook(done: str) -> None:
        if done == step:
            os.kill(os.getpid(), signal.SIGKILL)

    env.hook = hook
    report = run(config, env)
    if report.failure is not None:
        print(report.failure, file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
