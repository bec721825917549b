"""Push what a node serves, with rsync over SSH, and switch the node to it.

The node's key in ``authorized_keys`` runs only its receiver
(``deploy/policy-host-node-receive``): rsync is let write into the node's
staging folder alone (through Debian's ``rrsync``), and ``activate NAME``
turns the staging folder into a release (hard links: nothing is copied)
and points ``current`` at it with one rename, so nginx and the app switch
from one whole set to the next, never to a mix; it then tests and reloads
nginx. rsync sends only what changed since the last push (size and mtime,
then only the changed blocks of a file).

A push to a node is one SSH connection, not two: the rsync's ssh becomes
an OpenSSH control master (``ControlMaster=auto``) whose socket lies in a
folder private to the run (0700), and the ``activate`` that follows rides
it, without a second key exchange and authentication. When the run ends
(pushed or not) every master is told to exit (``ssh -O exit``) and the
folder goes; ``ControlPersist`` bounds a master a killed run could not
close.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime as dt
import logging
import secrets
import shlex
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

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
# Seconds an idle control master stays: enough between the rsync and the
# `activate` of a push, short enough that a master a killed run left
# behind goes by itself soon.
CONTROL_PERSIST = 15
# The master's socket: %C, a hash of the local host, the node's host, port
# and user, keeps the path short (a Unix socket's path is at most 108
# bytes) and apart per node.
CONTROL_SOCKET = "%C"
# Seconds for `ssh -O exit` (a local socket: no network).
EXIT_TIMEOUT = 5
# A Unix socket's path holds at most 107 bytes; ssh makes the socket under
# a temporary name (the path plus 17 characters) and %C is 40: a folder
# with a longer path cannot hold it, and the pushes then go unshared.
MAX_CONTROL_FOLDER = 107 - 1 - 40 - 17


class PushError(PolicyHostError):
    """A node did not take a push; the message names the node."""


def ssh_argv(settings: NodeSettings, control: Path | None = None) -> list[str]:
    """ssh as the pushes run it: our key only, the node's host key known
    beforehand, never a prompt; with ``control`` (a folder private to the
    run, ``shared_connections``), one connection per node shared by the
    commands of a push."""
    argv = ["ssh", "-T", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT}"]
    if settings.ssh_key is not None:
        argv += ["-i", str(settings.ssh_key), "-o", "IdentitiesOnly=yes"]
    if settings.known_hosts is not None:
        argv += ["-o", f"UserKnownHostsFile={settings.known_hosts}"]
    argv += ["-o", "StrictHostKeyChecking=yes"]
    if control is not None:
        argv += [
            "-o",
            "ControlMaster=auto",
            "-o",
            f"ControlPath={control / CONTROL_SOCKET}",
            "-o",
            f"ControlPersist={CONTROL_PERSIST}",
        ]
    return argv


@contextlib.contextmanager
def shared_connections(
    settings: NodeSettings, nodes: Sequence[Node], *, runner: Runner = run
) -> Iterator[Path | None]:
    """A folder for the run's control sockets, made 0700 (``mkdtemp``):
    whoever can reach a socket can run commands on the node as us. On the
    way out, whatever happened, each node's master is told to exit, then
    the folder is removed. None (each command connects by itself) when
    no such folder can be made or its path is too long for a socket."""
    try:
        folder = Path(tempfile.mkdtemp(prefix="policy-host-ssh-"))
    except OSError as exc:
        log.warning("no folder for SSH control sockets (%s); each push connects twice", exc)
        yield None
        return
    if len(str(folder).encode()) > MAX_CONTROL_FOLDER:
        folder.rmdir()
        log.warning("%s: too long a path for SSH control sockets; each push connects twice", folder)
        yield None
        return
    try:
        yield folder
    finally:
        if any(folder.iterdir()):
            for node in nodes:
                _close_master(settings, node, folder, runner)
        shutil.rmtree(folder, ignore_errors=True)


def _close_master(settings: NodeSettings, node: Node, control: Path, runner: Runner) -> None:
    argv = [*ssh_argv(settings, control), "-O", "exit", node.ssh]
    done = runner(argv, timeout=EXIT_TIMEOUT)
    # No master for a node whose connection failed: nothing to close.
    log.debug("node %s: ssh -O exit: status %s %s", node.name, done.returncode, done.last_lines())


def rsync_argv(
    settings: NodeSettings, node: Node, files: Sequence[str], control: Path | None = None
) -> list[str]:
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
        shlex.join(ssh_argv(settings, control)),
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
    control: Path | None = None,
) -> str:
    """Send the node what the control node serves and switch it over;
    the new release's name. Raises ``PushError`` naming the node.
    ``control``: the run's folder of shared connections, if any."""
    settings = config.nodes
    write_node_conf(config, node, served_hosts(config) if hosts is None else hosts)
    where = f"node {node.name} ({node.ssh})"
    files = sources(config, node)
    sent = runner(rsync_argv(settings, node, files, control), timeout=settings.timeout)
    if not sent.ok:
        raise PushError(f"{where}: rsync failed (status {sent.returncode}): {sent.last_lines()}")
    for line in sent.output.splitlines():
        if line.startswith(TRANSFERRED):
            log.info("%s: %s", where, line.strip())
    name = release_name(snapshot, clock())
    argv = [*ssh_argv(settings, control), node.ssh, ACTIVATE, name]
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
    """Push to every node at once, one SSH connection each: node name ->
    release, or why not."""
    if not nodes:
        return {}
    hosts = served_hosts(config)
    results: dict[str, str | PushError] = {}
    with (
        shared_connections(config.nodes, nodes, runner=runner) as control,
        concurrent.futures.ThreadPoolExecutor(max_workers=min(len(nodes), 16)) as pool,
    ):
        futures = {
            pool.submit(
                push, config, node, snapshot, runner=runner, hosts=hosts, control=control
            ): node
            for node in nodes
        }
        for future in concurrent.futures.as_completed(futures):
            node = futures[future]
            try:
                results[node.name] = future.result()
            except PushError as exc:
                results[node.name] = exc
    return results
