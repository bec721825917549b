"""Small, generic helpers for tests that start real processes on loopback.

Everything here is bounded in time: no helper waits forever. Processes are
stopped by their own PID only (SIGTERM, then SIGKILL), never by name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Literal, Self

__all__ = [
    "Daemon",
    "DaemonError",
    "MissingBinaryError",
    "free_port",
    "port_open",
    "require_binary",
    "tail",
    "wait_for_port",
    "wait_until",
]

LOOPBACK = "127.0.0.1"

PortKind = Literal["tcp", "udp", "both"]


class Managed:
    """A test server as a context manager: ``start()`` on entry (cleaning up
    whatever it got to if it fails), ``cleanup()`` on exit, always."""

    def start(self) -> None:
        raise NotImplementedError

    def cleanup(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()


class DaemonError(RuntimeError):
    """A helper process failed to start, died early, or did not get ready."""


class MissingBinaryError(DaemonError):
    """A program the harness needs is not installed."""

    def __init__(self, name: str) -> None:
        super().__init__(f"required program {name!r} not found on PATH (or in /usr/sbin, /sbin)")
        self.name = name


def require_binary(name: str) -> str:
    """Return the absolute path of program ``name`` or raise MissingBinaryError.

    Looks on PATH and, since DNS daemons live there on Debian, in /usr/sbin
    and /sbin too (they are often missing from a non-root PATH).
    """
    path = os.environ.get("PATH", os.defpath)
    found = shutil.which(name, path=os.pathsep.join([path, "/usr/sbin", "/sbin"]))
    if found is None:
        raise MissingBinaryError(name)
    return found


def free_port(kind: PortKind = "both", host: str = LOOPBACK) -> int:
    """Return a port number that is free on ``host`` for TCP, UDP or both.

    The port is found by binding, then released; another process could take
    it in between, so callers should still check that their server started.
    """
    for _ in range(50):
        with contextlib.ExitStack() as stack:
            first_type = socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM
            first = stack.enter_context(socket.socket(socket.AF_INET, first_type))
            first.bind((host, 0))
            port: int = first.getsockname()[1]
            if kind != "both":
                return port
            second = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            try:
                second.bind((host, port))
            except OSError:
                continue
            return port
    raise DaemonError(f"could not find a free {kind} port on {host}")


def wait_until(
    check: Callable[[], bool],
    timeout: float,
    *,
    interval: float = 0.05,
    what: str = "condition",
) -> None:
    """Call ``check`` until it returns True; raise TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if a TCP connection to ``host:port`` succeeds within ``timeout`` s."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float = 5.0) -> None:
    """Wait until a TCP connection to ``host:port`` succeeds (TimeoutError if not)."""
    wait_until(lambda: port_open(host, port), timeout, what=f"TCP port {host}:{port}")


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a text file ('' if it cannot be read)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class Daemon(Managed):
    """A subprocess run in the foreground for the duration of a ``with`` block.

    Its stdout and stderr go to ``<workdir>/<name>.log``. ``workdir`` defaults
    to a fresh temporary directory that is removed on exit (unless
    ``keep_workdir``). On exit the process is stopped by its PID: SIGTERM,
    then SIGKILL after ``stop_timeout`` seconds.

    ``ready`` is called repeatedly after the start until it returns True
    (``ready_timeout`` seconds at most); if the process exits first, or the
    timeout passes, DaemonError is raised with the tail of the log.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        name: str | None = None,
        workdir: Path | None = None,
        env: Mapping[str, str] | None = None,
        ready: Callable[[], bool] | None = None,
        ready_timeout: float = 10.0,
        stop_timeout: float = 5.0,
        keep_workdir: bool = False,
    ) -> None:
        if not argv:
            raise ValueError("argv must not be empty")
        self.argv = list(argv)
        self.name = name or Path(argv[0]).name
        self._own_workdir = workdir is None
        self.workdir = (
            Path(tempfile.mkdtemp(prefix=f"{self.name}-")) if workdir is None else workdir
        )
        self.log_path = self.workdir / f"{self.name}.log"
        self.env = dict(env) if env is not None else None
        self.ready = ready
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.keep_workdir = keep_workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    # -- lifecycle ---------------------------------------------------------

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise DaemonError(f"{self.name} is not running")
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        if self._log_file is not None:
            self._log_file.flush()
        return tail(self.log_path, lines)

    def start(self) -> None:
        if self.proc is not None:
            raise DaemonError(f"{self.name} already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._log_file = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=self.env,
                start_new_session=True,
            )
        except OSError as exc:
            self._close_log()
            raise DaemonError(f"could not run {self.argv[0]}: {exc}") from exc
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        if self.ready is None:
            return
        ready = self.ready
        deadline = time.monotonic() + self.ready_timeout
        while True:
            if not self.running():
                raise self._failure("exited during start-up")
            try:
                if ready():
                    return
            except Exception:  # a probe error means "not ready yet"
                pass
            if time.monotonic() >= deadline:
                raise self._failure(f"not ready after {self.ready_timeout:.1f}s")
            time.sleep(0.05)

    def _failure(self, what: str) -> DaemonError:
        code = self.proc.poll() if self.proc is not None else None
        status = f" (exit status {code})" if code is not None else ""
        return DaemonError(
            f"{self.name} {what}{status}\ncommand: {' '.join(self.argv)}\n"
            f"--- last lines of {self.log_path} ---\n{self.log_tail()}"
        )

    def check_alive(self) -> None:
        """Raise DaemonError (with the log tail) if the process has exited."""
        if not self.running():
            raise self._failure("is not running")

    def stop(self) -> None:
        """Stop the process by its PID: SIGTERM, then SIGKILL. Idempotent."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=self.stop_timeout)
        self._close_log()

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def cleanup(self) -> None:
        """Stop the process and remove the workdir if this object created it."""
        self.stop()
        if self._own_workdir and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
