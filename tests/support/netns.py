"""A network namespace of the test's own: a private loopback with every port.

``NetNamespace`` creates a namespace with ``ip netns add`` (root only),
brings its loopback up, and deletes it on exit. ``entered()`` moves the
*calling thread* into it with setns(2): every socket the test opens there,
and every process it starts there (they inherit the thread's namespace),
lives on that private 127.0.0.1, where DNS can use port 53, nginx 80 and
443, and nothing reaches or disturbs the machine's own network.

``private_resolv_conf`` makes a command see its own /etc/resolv.conf (in a
private mount namespace, via ``unshare``), so a program that only knows the
system resolver asks the test's DNS server, without touching /etc.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shlex
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

from .procs import DaemonError, Managed, require_binary

__all__ = ["NetNamespace", "netns_supported", "private_resolv_conf"]

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")
IP_TIMEOUT = 10.0

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


def netns_supported() -> str | None:
    """None if this process can make network namespaces; else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    try:
        require_binary("ip")
    except DaemonError as exc:
        return str(exc)
    return None


def _ip(*args: str) -> None:
    argv = [require_binary("ip"), *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=IP_TIMEOUT, check=False)
    if done.returncode != 0:
        raise DaemonError(f"{' '.join(argv)} failed: {(done.stdout + done.stderr).strip()}")


class NetNamespace(Managed):
    """``ip netns add`` on enter, ``ip netns delete`` on exit."""

    def __init__(self, prefix: str = "ph-test") -> None:
        self.name = f"{prefix}-{os.getpid()}-{secrets.token_hex(3)}"
        self.created = False

    @property
    def path(self) -> Path:
        return NETNS_DIR / self.name

    def create(self) -> None:
        _ip("netns", "add", self.name)
        self.created = True
        _ip("-n", self.name, "link", "set", "lo", "up")

    def delete(self) -> None:
        if self.created:
            _ip("netns", "delete", self.name)
            self.created = False

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Run the block (this thread, and what it starts) inside the namespace."""
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            target = os.open(self.path, os.O_RDONLY)
            try:
                _setns(target)
            finally:
                os.close(target)
            try:
                yield
            finally:
                _setns(own)
        finally:
            os.close(own)

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the namespace from anywhere (``ip netns exec``)."""
        return [require_binary("ip"), "netns", "exec", self.name, *argv]

    def start(self) -> None:
        self.create()

    def cleanup(self) -> None:
        self.delete()


def private_resolv_conf(resolv_conf: Path, argv: Sequence[str]) -> list[str]:
    """``argv`` run with ``resolv_conf`` bind-mounted on /etc/resolv.conf,
    in a private mount namespace (the machine's file is not touched)."""
    script = f'mount --bind {shlex.quote(str(resolv_conf))} /etc/resolv.conf && exec "$@"'
    return [
        require_binary("unshare"),
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        "sh",
        *argv,
    ]
