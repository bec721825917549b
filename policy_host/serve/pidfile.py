"""The running server's pid, from its pidfile (`reload`, `apply`).

Apart from ``server`` so that the commands that only need to know the
server runs (`reload --changed`, `apply`) do not import gunicorn and Flask
(a few tenths of a second of their start-up).
"""

from __future__ import annotations

from pathlib import Path

from policy_host.errors import ServerError
from policy_host.read.config import ProviderConfig


def running_pid(config: ProviderConfig) -> int:
    """The gunicorn master's pid from its pidfile, checked to be alive."""
    try:
        pid = int(config.pidfile.read_text().strip())
    except FileNotFoundError:
        raise ServerError(f"{config.pidfile}: no pidfile; is the server running?") from None
    except (OSError, ValueError) as exc:
        raise ServerError(f"{config.pidfile}: cannot read the pid: {exc}") from None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        raise ServerError(f"{config.pidfile}: process {pid} is not running") from None
    except OSError:
        cmdline = b""  # no /proc: trust the pidfile
    # A stale pidfile whose pid now belongs to another program must not get
    # our signal.
    if cmdline and b"policy-host" not in cmdline and b"gunicorn" not in cmdline:
        raise ServerError(
            f"{config.pidfile}: process {pid} is not a policy-host server (stale pidfile)"
        )
    return pid
