"""A push to a node is one SSH connection, and leaves no SSH process behind.

A real sshd in a network namespace of the test's own, its key restricted
to the real receiver (``deploy/policy-host-node-receive``, rsync through
Debian's rrsync), as a serving node has it; ``push_all`` as `apply` runs
it. sshd's own log counts the connections: the rsync and the `activate`
of a push share one (an OpenSSH control master in a folder private to the
run), and once the push is over, pushed or refused, no ssh process of the
run is left and its folder is gone.

Needs root, iproute2, openssh-server and rsync (scripts/setup --test):
without them skipped, except under CI=true, where it fails.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import CONFIG_TEXT
from support.fixtures_dns import in_ci
from support.layout import ROOT
from support.netns import NetNamespace, netns_supported
from support.nodes import NODE_BINARIES
from support.procs import (
    LOOPBACK,
    Daemon,
    MissingBinaryError,
    port_open,
    require_binary,
    wait_until,
)

from policy_host.nodes.push import PushError, push_all
from policy_host.read.config import ProviderConfig, load_config
from policy_host.runner import DEFAULT_TIMEOUT, Result, run

RECEIVER = ROOT / "deploy" / "policy-host-node-receive"
ACCEPTED = "Accepted publickey for root"


def require_ssh() -> None:
    problem = netns_supported()
    if problem is None:
        try:
            for name in NODE_BINARIES:
                require_binary(name)
        except MissingBinaryError as exc:
            problem = f"{exc} (Debian: openssh-server, rsync)"
    if problem is not None:
        if in_ci():
            pytest.fail(f"{problem}; CI=true, so this is a failure, not a skip", pytrace=False)
        pytest.skip(problem)


@dataclass
class Node:
    config: ProviderConfig
    sshd: Daemon
    receive_root: Path
    # Present: the node's reload fails, so `activate` is refused.
    fail_flag: Path
    # Where the pushes make their private folders (``tempfile.tempdir``).
    temp_root: Path

    def connections(self) -> int:
        return self.sshd.log_path.read_text().count(ACCEPTED)


def _keygen(path: Path) -> None:
    done = run([require_binary("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-f", str(path)])
    assert done.ok, done.output


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Node]:
    require_ssh()
    keys = tmp_path / "keys"
    keys.mkdir()
    _keygen(keys / "push")
    _keygen(keys / "host")
    receive_root, state = tmp_path / "receive", tmp_path / "node-state"
    fail_flag = tmp_path / "fail-reload"
    reload = f"test ! -e {fail_flag}"
    public = (keys / "push.pub").read_text().strip()
    (keys / "authorized_keys").write_text(
        f"command=\"{RECEIVER} {receive_root} {state} '{reload}'\",restrict {public}\n"
    )
    host = (keys / "host.pub").read_text().split()
    (keys / "known_hosts").write_text(f"{LOOPBACK} {host[0]} {host[1]}\n")
    (keys / "sshd_config").write_text(
        f"ListenAddress {LOOPBACK}:22\n"
        f"HostKey {keys / 'host'}\n"
        f"PidFile {keys / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {keys / 'authorized_keys'}\n"
        "StrictModes no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nLogLevel VERBOSE\n"
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    (tmp_path / "tenants").mkdir()
    (tmp_path / "config.yaml").write_text(
        CONFIG_TEXT + "nodes:\n  ssh_key: keys/push\n  known_hosts: keys/known_hosts\n"
        "  timeout: 20\n  serving:\n    - name: a\n"
        f"      address: {LOOPBACK}\n      ssh: root@{LOOPBACK}\n"
        f"      app: {LOOPBACK}:8080\n      path: {receive_root}\n"
    )
    config = load_config(tmp_path / "config.yaml")
    # A policy file for nginx to serve: something for rsync to send.
    config.www_dir.mkdir(parents=True)
    (config.www_dir / "mta-sts.a.example").write_bytes(b"version: STSv1\r\nmode: none\r\n")
    # Short, as the system's /tmp is: a socket's path has room for little.
    temp_root = Path(tempfile.mkdtemp(prefix="ph-ssh-", dir="/tmp"))
    monkeypatch.setattr(tempfile, "tempdir", str(temp_root))
    sshd_argv = [require_binary("sshd"), "-D", "-e", "-f", str(keys / "sshd_config")]
    with NetNamespace(prefix="ph-ssh") as netns, netns.entered():
        sshd = Daemon(sshd_argv, name="sshd", workdir=keys, ready=lambda: port_open(LOOPBACK, 22))
        with sshd:
            try:
                yield Node(config, sshd, receive_root, fail_flag, temp_root)
            finally:
                shutil.rmtree(temp_root, ignore_errors=True)


def ssh_processes(temp_root: Path) -> list[str]:
    """The command lines of the running processes that name the run's
    folders (an ssh control master among them)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile
        text = " ".join(part.decode(errors="replace") for part in argv)
        if str(temp_root) in text:
            found.append(f"{entry.name}: {text}")
    return found


class Watching:
    """``run``, noting the control folder each ssh command names and its
    mode while the push runs."""

    def __init__(self) -> None:
        self.folders: dict[Path, int] = {}
        self.commands: list[tuple[str, ...]] = []

    def __call__(
        self,
        argv: Sequence[str],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        env: Mapping[str, str] | None = None,
    ) -> Result:
        self.commands.append(tuple(argv))
        for part in " ".join(argv).split():
            if part.startswith("ControlPath="):
                folder = Path(part.removeprefix("ControlPath=")).parent
                self.folders[folder] = stat.S_IMODE(folder.stat().st_mode)
        return run(argv, timeout=timeout, env=env)


def test_a_push_is_one_ssh_connection_and_leaves_no_master(node: Node) -> None:
    watching = Watching()

    results = push_all(node.config, node.config.nodes.active, "s1", runner=watching)

    release = results["a"]
    assert isinstance(release, str), release
    assert (node.receive_root / "current").resolve().name.endswith(release)
    # The rsync and the activate, through one connection (one handshake).
    assert node.connections() == 1
    assert [argv[0] for argv in watching.commands] == ["rsync", "ssh", "ssh"]
    assert watching.commands[-1][-3:] == ("-O", "exit", f"root@{LOOPBACK}")
    (folder, mode), *others = watching.folders.items()
    assert not others and mode == 0o700 and folder.parent == node.temp_root
    wait_until(lambda: not ssh_processes(node.temp_root), 5, what="the ssh master to exit")
    assert not folder.exists()
    assert os.listdir(node.temp_root) == []

    # The next push makes a connection of its own, and closes it too.
    again = push_all(node.config, node.config.nodes.active, "s2")
    assert isinstance(again["a"], str), again
    assert node.connections() == 2
    wait_until(lambda: not ssh_processes(node.temp_root), 5, what="the ssh master to exit")


def test_a_refused_activate_leaves_no_ssh_process_behind(node: Node) -> None:
    node.fail_flag.touch()

    results = push_all(node.config, node.config.nodes.active, "s1")

    refused = results["a"]
    assert isinstance(refused, PushError)
    assert "the new release was not activated" in str(refused)
    assert node.connections() == 1
    wait_until(lambda: not ssh_processes(node.temp_root), 5, what="the ssh master to exit")
    assert os.listdir(node.temp_root) == []


def test_with_too_long_a_temporary_path_each_command_connects_by_itself(
    node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deep = tmp_path / ("d" * 60)
    deep.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(deep))

    results = push_all(node.config, node.config.nodes.active, "s1")

    assert isinstance(results["a"], str), results
    assert node.connections() == 2
    assert os.listdir(deep) == []
