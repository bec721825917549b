"""What every command shares on the screen: exit codes and progress lines."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TextIO

from policy_host.errors import Problem

# Exit status of every command (README, "Exit status").
EXIT_OK = 0
EXIT_PROBLEMS = 1  # problems found: a failed check, a validation error
EXIT_USAGE = 2  # usage or provider-config error
EXIT_FAILURE = 3  # anything else: a server, DNS or certbot failure
# Done, but something waits for another command: `apply` held a new
# tenant's first id until `certs` gets its name a certificate.
EXIT_WAITING = 4

# Progress is drawn only on a terminal and only for runs this large...
PROGRESS_FROM = 20
# ...and redrawn at most this often (seconds), except at each step's end.
PROGRESS_INTERVAL = 0.2


class Progress:
    """``STEP: N/M NOUN (P%)`` on one terminal line, redrawn in place.

    Quiet when ``stream`` is not a terminal or the run has fewer than
    ``PROGRESS_FROM`` items, so logs and pipes never see carriage returns.
    """

    def __init__(self, stream: TextIO, total: int, *, noun: str = "") -> None:
        self.stream = stream
        self.enabled = total >= PROGRESS_FROM and stream.isatty()
        self.noun = f" {noun}" if noun else ""
        self.last = 0.0

    def step(self, step: str, done: int, total: int) -> None:
        """Show that ``done`` of ``total`` items of ``step`` are done."""
        if not self.enabled or total < PROGRESS_FROM:
            return
        now = time.monotonic()
        if done < total and now - self.last < PROGRESS_INTERVAL:
            return
        self.last = now
        self.stream.write(f"\r{step}: {done}/{total}{self.noun} ({100 * done // total}%)")
        self.stream.flush()

    def finish(self) -> None:
        """Clear the progress line."""
        if self.enabled:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def print_problems(problems: Sequence[Problem], out: TextIO) -> None:
    for problem in problems:
        print(problem, file=out)
