"""Push what a node serves, with rsync over SSH, and switch the node to it.

The node's key in ``authorized_keys`` runs only its receiver
(``deploy/policy-host-node-receive``): rsync is let write into the node's
staging folder alone (through Debian's ``rrsync``), and ``activate NAME``
turns the staging folder into a release (hard links: nothing is copied)
and points ``current`` at it with one rename, so nginx and the app switch
from one whole set to the next, never to a mix; it then tests and reloads
nginx. rsync sends only what changed since the last push (size and mtime,
then only the changed blocks of a file).
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import logging
import secrets
import shlex
from collections.abc import Callable, Sequence

from policy_host.errors import PolicyHostError
from policy_host.nodes.bundle import served_hosts, sources, write_node_conf
from policy_host.read.config import ProviderConfig
from policy_host.read.nodes import Node, NodeSettings
from policy_host.runner import Runner, run

log = logging.getLogger(__name__)

ACTIVATE = "activate"
# rsync --stats: how many files a push sent (logged: a one-tenant change
# sends a handful, whatever the number of tenants).
TRANSFERRED = "Number of regular files transferred:"
# Seconds to wait for an SSH connection to a node.
CONNECT_TIMEOUT = 5


class PushError(PolicyHostError):
    """A node did not take a push; the message names the node."""


def ssh_argv(settings: NodeSettings) -> list[str]:
    """ssh as the pushes run it: our key only, the node's host key known
    beforehand, never a prompt."""
    argv = ["ssh", "-T", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT}"]
    if settings.ssh_key is not None:
        argv += ["-i", str(settings.ssh_key), "-o", "IdentitiesOnly=yes"]
    if settings.known_hosts is not None:
        argv += ["-o", f"UserKnownHostsFile={settings.known_hosts}"]
    argv += ["-o", "StrictHostKeyChecking=yes"]
    return argv


def rsync_argv(settings: NodeSettings, node: Node, files: Sequence[str]) -> list[str]:
    """rsync of ``files`` into the node's staging folder (``--relative``:
    each keeps the path after its ``/./``; ``--delete``: what the control
    node no longer has goes from the folders sent)."""
    return [
        "rsync",
        "--recursive",
        "--links",
        "--perms",
        "--times",
        "--relative",
        "--delete",
        "--stats",
        f"--timeout={int(settings.timeout)}",
        "--rsh",
        shlex.join(ssh_argv(settings)),
        *files,
        f"{node.ssh}:",
    ]


def release_name(snapshot: str, now: dt.datetime) -> str:
    """A new release's name: when, the snapshot it holds, a random tail
    (a certificate may change under the same snapshot)."""
    return f"{now:%Y%m%dT%H%M%S}-{snapshot}-{secrets.token_hex(3)}"


def push(
    config: ProviderConfig,
    node: Node,
    snapshot: str,
    *,
    runner: Runner = run,
    hosts: list[str] | None = None,
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
) -> str:
    """Send the node what the control node serves and switch it over;
    the new release's name. Raises ``PushError`` naming the node."""
    settings = config.nodes
    write_node_conf(config, node, served_hosts(config) if hosts is None else hosts)
    where = f"node {node.name} ({node.ssh})"
    sent = runner(rsync_argv(settings, node, sources(config, node)), timeout=settings.timeout)
    if not sent.ok:
        raise PushError(f"{where}: rsync failed (status {sent.returncode}): {sent.last_lines()}")
    for line in sent.output.splitlines():
        if line.startswith(TRANSFERRED):
            log.info("%s: %s", where, line.strip())
    name = release_name(snapshot, clock())
    argv = [*ssh_argv(settings), node.ssh, ACTIVATE, name]
    done = runner(argv, timeout=settings.timeout)
    if not done.ok:
        raise PushError(
            f"{where}: the new release was not activated (status {done.returncode}): "
            f"{done.last_lines()}"
        )
    log.info("%s: now serves release %s", where, name)
    return name


def push_all(
    config: ProviderConfig, nodes: Sequence[Node], snapshot: str, *, runner: Runner = run
) -> dict[str, str | PushError]:
    """Push to every node at once: node name -> release, or why not."""
    if not nodes:
        return {}
    hosts = served_hosts(config)
    results: dict[str, str | PushError] = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(len(nodes), 16)) as pool:
        futures = {
            pool.submit(push, config, node, snapshot, runner=runner, hosts=hosts): node
            for node in nodes
        }
        for future in concurrent.futures.as_completed(futures):
            node = futures[future]
            try:
                results[node.name] = future.result()
            except PushError as exc:
                results[node.name] = exc
    return results
