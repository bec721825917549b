"""`reload --changed FILE...` and `watch`: make only the changed tenant
files' changes live.

A deploy hook knows what changed (``git diff --name-only OLD NEW``); with
1,000,000 tenants looking at every file costs seconds, reading the named
ones milliseconds (``serve.incremental``). `watch` learns the changed
names from the kernel as files are written (``serve.watcher``). A full
`reload` stays the safety net (`watch` runs one every ``--full-every``
seconds): it finds any change a hook or an event missed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from policy_host.cli.output import EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, print_problems
from policy_host.model import POLICY_HOST_PREFIX
from policy_host.read.config import ProviderConfig

log = logging.getLogger(__name__)


def named_paths(args: Iterable[str], stdin: TextIO) -> Iterator[str]:
    """The paths given, with ``-`` standing for the lines of ``stdin``."""
    for arg in args:
        if arg == "-":
            yield from (line.rstrip("\n") for line in stdin)
        else:
            yield arg


def cmd_watch(args: argparse.Namespace, config: ProviderConfig) -> int:
    import signal

    from policy_host.serve.watcher import Watcher

    stopping: list[int] = []

    def stop(number: int, _frame: object) -> None:
        stopping.append(number)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    Watcher(config, full_every=args.full_every or FULL_EVERY).run(lambda: bool(stopping))
    return EXIT_OK


# Seconds between `watch`'s full compiles, unless told: at 1,000,000
# tenants one takes about a minute of one core's time.
FULL_EVERY = 600.0


def register_watch(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "watch",
        parents=[common],
        help="make tenant changes live as their files are written",
        description="Compile every tenant once, then each tenant file as it is written, "
        "renamed or removed (inotify): nginx and every worker serve it within a fraction "
        "of a second, as 'reload --changed' would. Every --full-every seconds, and whenever "
        "events were lost, every file is compiled again. Runs until SIGTERM or SIGINT.",
    )
    p.add_argument(
        "--full-every",
        type=float,
        metavar="SECONDS",
        help=f"seconds between full compiles (default {FULL_EVERY:g})",
    )
    p.set_defaults(handler=cmd_watch)


def reload_changed(config: ProviderConfig, args: list[str], *, dry_run: bool) -> int | None:
    """Compile the named files alone and report; ``None`` when every file
    must be compiled instead (the caller does that). Imports neither
    gunicorn nor Flask: a command's start-up is most of its time."""
    from policy_host.serve.incremental import compile_changed, problems_of, tenant_names
    from policy_host.serve.pidfile import running_pid
    from policy_host.serve.workerinfo import WATCH_INTERVAL

    pid = running_pid(config)  # no server: nothing would go live, say so first

    named = tenant_names(config, named_paths(args, sys.stdin))
    if named.outside:
        print_problems(problems_of(named), sys.stdout)
        return EXIT_USAGE
    compiled = compile_changed(config, named.names, proceed=(lambda _c: False) if dry_run else None)
    if compiled is None:
        log.warning("the named files cannot be compiled alone; compiling every tenant file")
        return None
    result = compiled.result
    print_problems(result.problems, sys.stdout)
    for domain in sorted(result.broken):
        print(
            f"{domain}: not changed: "
            + ("its last good policy stays served" if domain in compiled.kept else "not served"),
            file=sys.stderr,
        )
    for host, body in sorted(compiled.changed.items()):
        domain = host.removeprefix(POLICY_HOST_PREFIX)
        print(f"{domain}: {'changed' if body is not None else 'no longer served'}", file=sys.stderr)
    verb = "would change" if dry_run else "changed"
    print(
        f"{verb} {len(compiled.changed)} of {len(named.names)} named tenant files' policies; "
        f"server pid {pid}" + ("" if dry_run else f" picks them up within {WATCH_INTERVAL} s"),
        file=sys.stderr,
    )
    return EXIT_PROBLEMS if result.errors else EXIT_OK
