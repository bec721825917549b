"""Run `policy-host` with a Python audit hook (PEP 578) in every process it
becomes: the gunicorn master and the workers it forks inherit the hook.

    python tests/support/audited.py LOG policy-host-arguments...

Appends one line per event that touches the file system or starts a
program to LOG: ``PID EVENT ARGS``. A test sends requests and reads LOG to
see what the server did because of them.
"""

from __future__ import annotations

import os
import sys
from typing import Any

FILE_EVENTS = frozenset(
    {
        "open",
        "os.listdir",
        "os.scandir",
        "os.chdir",
        "os.mkdir",
        "os.remove",
        "os.rename",
        "os.rmdir",
        "os.symlink",
        "os.link",
        "os.truncate",
        "os.chmod",
        "os.chown",
        "os.utime",
        "shutil.copyfile",
        "shutil.rmtree",
        "glob.glob",
    }
)
PROCESS_EVENTS = frozenset(
    {"subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.startfile"}
)


def main(log: str, argv: list[str]) -> int:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event in FILE_EVENTS or event in PROCESS_EVENTS:
            line = f"{os.getpid()} {event} {args!r}\n"
            os.write(fd, line.encode("utf-8", "backslashreplace")[:4000])

    sys.addaudithook(hook)
    from policy_host.cli.main import main as policy_host

    return policy_host(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
