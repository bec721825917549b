"""Time a one-tenant change across two serving nodes, to confirmed at the DNS secondary.

    sudo .venv/bin/python bench/nodes_bench.py [--runs N] [--json]

Builds the topology of tests/test_nodes_secondary_netns.py (root only;
``tests/support/nodes_dns.py``): the control node (knot primary, unbound,
pebble, nginx, the app) and two serving nodes (sshd + rsync, nginx, the
app), each in a network namespace of its own, and a knot secondary that
the primary NOTIFYs and that transfers each change by IXFR; the provider
config confirms at the zone's NS set (``authoritative: servers: ns``).
It gets the certificates from pebble, pushes, publishes the first ids,
then ``--runs`` times changes one tenant's policy and runs
``policy-host --debug apply`` as an operator would, timing it from the
command's start:

- ``start-up``: start to the tenant files validated (the interpreter,
  imports, the config);
- ``serve``: the control node serving the new policy and verifying it
  (compile, reload, local fetches, the workers' settle time);
- ``rsync``: rsync over SSH to both nodes at once (one SSH connection each,
  its key exchange and login included);
- ``activate``: ``activate`` on each node, through the rsync's connection
  (the hard-linked release, the switch of ``current``, ``nginx -t`` and
  reload);
- ``node fetch``: `apply` fetching the policy from each node over HTTPS
  with SNI, and each node's app saying which snapshot it holds;
- ``update``: the TSIG-signed DNS UPDATE to the primary;
- ``propagation``: from the UPDATE done to the secondary answering the new
  id (NOTIFY, IXFR, and apply's polling), as apply logs it;
- ``to secondary``: command start to the id confirmed at the secondary;
- ``command``: command start to its exit (after the commit).

The stages come from the timestamps of apply's own log lines (millisecond
resolution). Prints the median, min and max of each over the runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support.netns import netns_supported  # noqa: E402
from support.nodes import NODE_BINARIES  # noqa: E402
from support.nodes_dns import NodesWithSecondary  # noqa: E402
from support.procs import MissingBinaryError, require_binary  # noqa: E402
from support.stack import Customer, MiniInternet  # noqa: E402

ALPHA = Customer("alpha.example", mx=("mx1.alpha.example",), mx_hosts=("mx1.alpha.example",))
BETA = Customer(
    "beta.example", mode="testing", mx=("*.beta.example",), mx_hosts=("mx.beta.example",)
)
STAGES = (
    "start-up",
    "serve",
    "rsync",
    "activate",
    "node fetch",
    "update",
    "propagation",
    "to secondary",
    "command",
)
LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ [\w.]+: (.*)$")
SENT = re.compile(r"^node \S+ \(.*\): Number of regular files transferred: ")
PUSHED = re.compile(r"^node \S+ \(.*\): now serves release ")
SECONDARY = re.compile(r"^ns2\.\S+ \(.*\) has the change ")


class BenchError(RuntimeError):
    pass


def log_times(stderr: str) -> list[tuple[float, str]]:
    """(wall-clock time, message) of each log line of a ``--debug`` run."""
    found = []
    for line in stderr.splitlines():
        match = LINE.match(line)
        if match:
            when = dt.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
            found.append((when.timestamp(), match.group(2)))
    return found


def stages(start: float, end: float, stderr: str) -> dict[str, float]:
    """Seconds per stage of one apply run that began at ``start`` and
    exited at ``end`` (wall clock), from its log."""
    lines = log_times(stderr)

    def last(pattern: re.Pattern[str] | str) -> float:
        hits = [
            when
            for when, text in lines
            if (pattern.match(text) if isinstance(pattern, re.Pattern) else text == pattern)
        ]
        if not hits:
            raise BenchError(f"no log line {pattern!r} in the run's output:\n{stderr[-3000:]}")
        return hits[-1]

    validated = last("apply: step validate done")
    verified = last("apply: step verify done")
    sent = last(SENT)
    pushed = last(PUSHED)
    nodes = last("apply: step nodes done")
    published = last("apply: step publish done")
    secondary = last(SECONDARY)
    return {
        "start-up": validated - start,
        "serve": verified - validated,
        "rsync": sent - verified,
        "activate": pushed - sent,
        "node fetch": nodes - pushed,
        "update": published - nodes,
        "propagation": secondary - published,
        "to secondary": secondary - start,
        "command": end - start,
    }


def summary(runs: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    return {
        stage: {
            "median": statistics.median(run[stage] for run in runs),
            "min": min(run[stage] for run in runs),
            "max": max(run[stage] for run in runs),
        }
        for stage in STAGES
    }


def say(text: str) -> None:
    print(f"# {text}", file=sys.stderr, flush=True)


def checked(world: NodesWithSecondary, *args: str, allow: Sequence[int] = (0,)) -> str:
    done = world.policy_host(*args)
    if done.returncode not in allow:
        raise BenchError(f"policy-host {' '.join(args)}: {done.stdout}{done.stderr}")
    return str(done.stderr)


def prepare(world: NodesWithSecondary) -> None:
    say("certificates from pebble, the first push, the first ids")
    checked(world, "certs")
    assert world.pebble is not None
    world.pebble.issuing_root()  # to nodes.ca_file, for apply's fetches
    checked(world, "nodes", "--push", "all", allow=(1,))  # pushed; no app runs yet
    for node in world.nodes:
        node.start_app()
    checked(world, "apply")


def one_change(world: NodesWithSecondary, number: int, log: Path | None) -> dict[str, float]:
    # A new max_age each time: one tenant's policy, and so its id, changes.
    world.write_tenant(dataclasses.replace(ALPHA, max_age=ALPHA.max_age + number))
    start = time.time()
    stderr = checked(world, "--debug", "apply")
    end = time.time()
    if log is not None:
        with log.open("a") as handle:
            handle.write(f"--- run {number}, started {start:.3f}\n{stderr}")
    return stages(start, end, stderr)


def missing() -> list[str]:
    problems = [why for why in [netns_supported()] if why]
    problems += MiniInternet.missing_binaries()
    for name in NODE_BINARIES:
        try:
            require_binary(name)
        except MissingBinaryError as exc:
            problems.append(str(exc))
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--log", type=Path, help="append each run's apply log to this file")
    args = parser.parse_args(argv)
    problems = missing()
    if problems:
        print("nodes_bench: " + "; ".join(problems), file=sys.stderr)
        return 2
    # The commands run this tree's code.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    runs = []
    with (
        tempfile.TemporaryDirectory(prefix="nodes-bench-") as tmp,
        NodesWithSecondary(Path(tmp), (ALPHA, BETA), ("a", "b")) as world,
    ):
        prepare(world)
        for number in range(1, args.runs + 1):
            runs.append(one_change(world, number, args.log))
            say(f"run {number}: " + ", ".join(f"{k} {v:.3f} s" for k, v in runs[-1].items()))
    result = summary(runs)
    if args.json:
        print(json.dumps({"runs": runs, "summary": result}, indent=2))
        return 0
    print(f"one-tenant change across two nodes, {len(runs)} runs (seconds)")
    print(f"{'stage':<14} {'median':>7} {'min':>7} {'max':>7}")
    for stage, figures in result.items():
        print(f"{stage:<14} {figures['median']:7.3f} {figures['min']:7.3f} {figures['max']:7.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
