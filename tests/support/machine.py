"""A fresh server to install on, inside this machine, touching none of it.

``Machine`` holds a mount namespace of its own (one ``unshare`` process)
in which /etc, /var, /opt, /run and /usr/local are copy-on-write overlays whose
changes live on a private tmpfs: an installer run there sees this
machine's Debian packages and writes its users, config, units and state as
on a real server, and all of it disappears with the namespace. Commands
run there with ``nsenter --mount``; they inherit the calling thread's
network namespace. Files are read and written from outside through
``/proc/<pid>/root``.

``unit_argv`` runs a command the way a systemd unit of ours would run it
where systemd is not PID 1: in a further mount namespace where every mount
is read-only but the unit's writable paths (``ProtectSystem=strict``,
``StateDirectory=``, ``RuntimeDirectory=``, ``ReadWritePaths=``), /root and
/home are empty (``ProtectHome=yes``), /tmp is private (``PrivateTmp=yes``),
as the unit's ``User=``/``Group=`` with its supplementary groups and its
``UMask=`` and ``Environment=``. Not emulated: the system call filter,
capability bounds and the other kernel-level restrictions.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import configparser
import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from .procs import DaemonError, Managed, require_binary, wait_until

__all__ = ["OVERLAID", "Machine", "UnitSandbox"]

#: The trees an install writes to; each is an overlay in the machine.
OVERLAID = ("/etc", "/var", "/opt", "/run", "/usr/local")
#: A root login's environment on a fresh server.
BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
}
COMMAND_TIMEOUT = 180.0
# Kernel file systems: left as they are (systemd has its own rules for them).
_KERNEL_FS = (
    "proc|sysfs|nsfs|devtmpfs|devpts|mqueue|cgroup2?|securityfs|debugfs|tracefs|bpf|"
    "pstore|configfs|fusectl|hugetlbfs|binfmt_misc|autofs"
)


def _setup_script(scratch: str) -> str:
    lines = [
        "set -eu",
        f"mount -t tmpfs -o mode=0700 tmpfs {scratch}",
    ]
    for n, tree in enumerate(OVERLAID):
        upper, work = f"{scratch}/{n}/upper", f"{scratch}/{n}/work"
        lines += [
            f"mkdir -p {upper} {work}",
            f"mount -t overlay overlay -o lowerdir={tree},upperdir={upper},workdir={work} {tree}",
        ]
    # No systemd here, whatever this machine runs: systemctl finds nothing.
    lines += ["mkdir -p /run/systemd", "mount -t tmpfs tmpfs /run/systemd"]
    lines += ["echo ready", "exec sleep infinity"]
    return "\n".join(lines)


class Machine(Managed):
    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self._holder: subprocess.Popen[str] | None = None

    @property
    def pid(self) -> int:
        if self._holder is None:
            raise DaemonError("the machine is not running")
        return self._holder.pid

    def path(self, inside: str) -> Path:
        """``inside`` (an absolute path in the machine) as seen from here."""
        return Path(f"/proc/{self.pid}/root") / inside.lstrip("/")

    def start(self) -> None:
        self.scratch.mkdir(parents=True, exist_ok=True)
        argv = [
            require_binary("unshare"),
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            _setup_script(shlex.quote(str(self.scratch))),
        ]
        self._holder = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert self._holder.stdout is not None
        if self._holder.stdout.readline().strip() != "ready":
            self._holder.wait(timeout=10)
            assert self._holder.stderr is not None
            raise DaemonError(f"could not make the machine: {self._holder.stderr.read()}")

    def stop(self) -> None:
        holder, self._holder = self._holder, None
        if holder is not None and holder.poll() is None:
            holder.kill()
            holder.wait(timeout=10)

    def cleanup(self) -> None:
        self.stop()

    def argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run in the machine (as root)."""
        return [require_binary("nsenter"), "--target", str(self.pid), "--mount", "--", *argv]

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        timeout: float = COMMAND_TIMEOUT,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**BASE_ENV, **(env or {})},
            check=False,
            stdin=subprocess.DEVNULL,
            cwd="/",
        )

    def copy_in(self, source: Path, inside: str, ignore: Sequence[str] = ()) -> None:
        shutil.copytree(source, self.path(inside), ignore=shutil.ignore_patterns(*ignore))

    def wait_for(self, inside: str, timeout: float = 20) -> None:
        wait_until(self.path(inside).exists, timeout, what=f"{inside} in the machine")


class UnitSandbox:
    """What a unit file says about how its command runs (see module doc)."""

    def __init__(self, unit_file: Path) -> None:
        parser = configparser.RawConfigParser(strict=False, delimiters=("=",))
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        parser.read(unit_file)
        service = parser["Service"]
        self.user = service.get("User", "root")
        self.group = service.get("Group", self.user)
        self.umask = service.get("UMask", "0022")
        self.exec_start = shlex.split(service["ExecStart"])
        self.environment = dict(
            item.split("=", 1) for item in shlex.split(service.get("Environment", ""))
        )
        self.protect_system = service.get("ProtectSystem", "no")
        self.protect_home = service.get("ProtectHome", "no") == "yes"
        self.private_tmp = service.get("PrivateTmp", "no") == "yes"
        self.runtime = [f"/run/{d}" for d in service.get("RuntimeDirectory", "").split()]
        self.runtime_mode = service.get("RuntimeDirectoryMode", "0755")
        state = [f"/var/lib/{d}" for d in service.get("StateDirectory", "").split()]
        self.writable = [*state, *self.runtime, *service.get("ReadWritePaths", "").split()]

    def script(self) -> str:
        """The shell script that sets up the sandbox, then runs ``$@``."""
        q = shlex.quote
        lines = ["set -eu"]
        for path in self.runtime:
            lines.append(
                f"install -d -m {self.runtime_mode} -o {q(self.user)} -g {q(self.group)} {q(path)}"
            )
        for path in self.writable:
            lines.append(f"mount --bind {q(path)} {q(path)}")
        if self.protect_system == "strict":
            keep = " ".join(q(p) for p in self.writable)
            # Every visible mount but those: one hidden under a later mount
            # (an overlay over its parent) is out of reach and stays as it is.
            lines += [
                'awk \'{ n++; p[n] = $5; for (k = 7; k <= NF; k++) if ($k == "-") break;'
                " t[n] = $(k + 1) }",
                " END { for (i = 1; i <= n; i++) { hidden = 0;",
                "   for (j = i + 1; j <= n; j++)",
                '     if (p[j] == p[i] || index(p[i], p[j] "/") == 1) { hidden = 1; break }',
                f"   if (!hidden && t[i] !~ /^({_KERNEL_FS})$/) print p[i] }} }}'"
                " /proc/self/mountinfo | while read -r m; do",
                f'  case " {keep} " in *" $m "*) continue;; esac',
                '  case "$m" in /dev|/dev/*|/proc|/proc/*|/sys|/sys/*|*\\\\*) continue;; esac',
                '  mount -o remount,bind,ro "$m"',
                "done",
            ]
        if self.protect_home:
            lines += ["mount -t tmpfs -o mode=0755 tmpfs /root", "mount -t tmpfs tmpfs /home"]
        if self.private_tmp:
            lines.append("mount -t tmpfs -o mode=1777 tmpfs /tmp")
        lines.append(f"umask {self.umask}")
        env = " ".join(q(f"{k}={v}") for k, v in self.environment.items())
        lines.append(
            f"exec setpriv --reuid={q(self.user)} --regid={q(self.group)} --init-groups "
            f'env {env} "$@"'
        )
        return "\n".join(lines)

    def argv(self, command: Sequence[str] | None = None) -> list[str]:
        """The unit's command (``ExecStart=`` unless given), sandboxed."""
        return [
            require_binary("unshare"),
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            self.script(),
            "sh",
            *(command if command is not None else self.exec_start),
        ]


def uid_of(machine: Machine, user: str) -> int:
    """``user``'s uid in the machine's own /etc/passwd."""
    for line in machine.path("/etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return int(fields[2])
    raise KeyError(user)


def owners(machine: Machine, inside: str) -> dict[str, tuple[int, int]]:
    """Every path under ``inside`` -> (uid, mode bits)."""
    found = {}
    top = machine.path(inside)
    for folder, dirs, files in os.walk(top):
        for name in (*dirs, *files):
            path = Path(folder) / name
            st = path.lstat()
            found[str(path.relative_to(top))] = (st.st_uid, st.st_mode & 0o7777)
    return found
