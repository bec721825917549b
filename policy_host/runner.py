"""Run an outside program (certbot, nginx, openssl) with a time limit.

Commands are passed in as a ``Runner`` so tests can record or replace them;
``run`` is the real one. Output is captured, never shown to the user
unless the caller decides to.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 300.0


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    output: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def last_lines(self, count: int = 5) -> str:
        lines = [line for line in self.output.splitlines() if line.strip()]
        return " | ".join(lines[-count:])


class Runner(Protocol):
    def __call__(
        self,
        argv: Sequence[str],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        env: Mapping[str, str] | None = None,
    ) -> Result: ...


def run(
    argv: Sequence[str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    env: Mapping[str, str] | None = None,
) -> Result:
    """Run ``argv``; stdout and stderr together in ``output``.

    A missing program or a timeout is a failed ``Result`` (status 127 or
    124, like a shell), not an exception: callers report it per host.
    """
    log.debug("running %s", " ".join(argv))
    try:
        done = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            timeout=timeout,
            env=dict(env) if env is not None else None,
            check=False,
        )
    except FileNotFoundError:
        return Result(tuple(argv), 127, f"{argv[0]}: program not found")
    except subprocess.TimeoutExpired as exc:
        output = exc.output if isinstance(exc.output, str) else ""
        return Result(tuple(argv), 124, f"{output}\n{argv[0]}: timed out after {timeout:.0f}s")
    return Result(tuple(argv), done.returncode, done.stdout)
