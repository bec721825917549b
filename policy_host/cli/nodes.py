"""``policy-host nodes``: which snapshot each serving node serves, against
the control node's; ``--push NAME`` brings nodes (drained ones too) up to
date.

Exit status: 0 every node serves the control node's snapshot; 1 a node is
behind or does not answer (drained ones count: one must catch up before
it goes back into DNS); 2 usage or config error; 3 a push failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from policy_host.cli.output import EXIT_FAILURE, EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE
from policy_host.read.config import ProviderConfig
from policy_host.read.nodes import Node

if TYPE_CHECKING:
    from policy_host.publish.nodes import NodeOps


class _PushAction(argparse.Action):
    """``--push NAME``: a run that writes (the owner's, like apply)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        names = list(getattr(namespace, self.dest) or [])
        names.append(values)
        setattr(namespace, self.dest, names)
        namespace.dry_run = False


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "nodes",
        parents=[common],
        help="the snapshot each serving node serves, against the control node's",
        description="Ask every serving node's app which snapshot its workers hold and compare "
        "it with the control node's. Exit 0 when every node (drained ones too) is up to date, "
        "1 when one is behind or does not answer. --push NAME pushes to that node (drained or "
        "not) and waits until it serves the control node's snapshot: do that before taking "
        "a drained node back into DNS.",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--push",
        action=_PushAction,
        metavar="NAME",
        help="push to this node and wait until it is up to date (repeatable; 'all' for every node)",
    )
    p.set_defaults(handler=cmd_nodes, dry_run=True, push=None)


def _chosen(config: ProviderConfig, names: Sequence[str]) -> list[Node] | str:
    known = {node.name: node for node in config.nodes.serving}
    if "all" in names:
        return list(known.values())
    unknown = [name for name in names if name not in known]
    if unknown:
        return f"no serving node named {', '.join(unknown)} (known: {', '.join(known) or 'none'})"
    return [known[name] for name in dict.fromkeys(names)]


def cmd_nodes(args: argparse.Namespace, config: ProviderConfig) -> int:
    from policy_host.publish.nodes import catch_up, node_ops

    if not config.nodes.serving:
        print(f"{config.path}: no serving nodes (nodes.serving) configured", file=sys.stderr)
        return EXIT_USAGE
    ops = node_ops(config)
    status = EXIT_OK
    if args.push:
        chosen = _chosen(config, args.push)
        if isinstance(chosen, str):
            print(f"policy-host: {chosen}", file=sys.stderr)
            return EXIT_USAGE
        from policy_host.publish.apply import apply_lock

        with apply_lock(config.state_dir):
            pushed = catch_up(config, ops, chosen)
        for name, result in sorted(pushed.items()):
            if isinstance(result, str):
                print(f"node {name}: pushed release {result}", file=sys.stderr)
            else:
                print(f"policy-host: {result}", file=sys.stderr)
                status = EXIT_FAILURE
    return max(status, _show(args, config, ops, wait=bool(args.push)))


def _show(args: argparse.Namespace, config: ProviderConfig, ops: NodeOps, *, wait: bool) -> int:
    """List every node; with ``wait``, give a node just pushed to up to
    ``apply.verify_timeout`` to switch (its workers look every 0.1 s)."""
    want = ops.snapshot()
    deadline = time.monotonic() + (config.apply.verify_timeout if wait else 0)
    while True:
        views = [ops.view(node, want) for node in config.nodes.serving]
        behind = [view for view in views if view.behind(want)]
        if not behind or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    if args.json:
        json.dump(
            {
                "control_snapshot": want,
                "ok": not behind,
                "nodes": [
                    {
                        "name": view.node.name,
                        "address": view.node.https_url,
                        "drained": view.node.drained,
                        "snapshot": view.snapshot,
                        "up_to_date": not view.behind(want),
                        "problem": view.problem,
                    }
                    for view in views
                ],
            },
            sys.stdout,
            indent=2,
        )
        print()
    else:
        print(f"control  snapshot {want}")
        for view in views:
            state = "ok" if not view.behind(want) else "BEHIND"
            drained = " (drained)" if view.node.drained else ""
            why = f": {view.problem}" if view.problem else ""
            name = f"{view.node.name}{drained}"
            print(f"{state:6} {name} {view.node.https_url} snapshot {view.snapshot}{why}")
    return EXIT_PROBLEMS if behind else EXIT_OK
