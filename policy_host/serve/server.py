"""Run the app under gunicorn, and make tenant changes go live.

A change goes live by rewriting the served-policy snapshot (``go_live``),
together with the policy files nginx serves by itself (``static``) and the
database every worker reads (``store``): no worker restarts and no request
fails.
The gunicorn master also compiles the snapshot when it starts (beside the
workers, when a snapshot from an earlier run exists) and on ``SIGHUP``;
``SIGHUP`` additionally replaces the workers (gunicorn's graceful reload),
which is only needed after upgrading the code.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication

from policy_host.errors import PolicyHostError
from policy_host.read.config import ProviderConfig, load_config
from policy_host.read.tenants import LoadResult, default_jobs
from policy_host.serve.compiler import ChangedHosts, Compiled, compile_snapshot
from policy_host.serve.pidfile import running_pid as running_pid
from policy_host.serve.snapshot import SnapshotMemo
from policy_host.serve.store import keep_up
from policy_host.serve.web import WATCH_INTERVAL, create_app

log = logging.getLogger(__name__)


def recompile(config_file: Path, fallback: ProviderConfig, *, jobs: int = 1) -> None:
    """Rebuild the snapshot; a broken provider config keeps the old one."""
    try:
        config = load_config(config_file)
    except PolicyHostError as exc:
        log.error("provider config is broken; still serving the previous policies:\n%s", exc)
        return
    if config.snapshot_path != fallback.snapshot_path:
        log.warning("state_dir changed; restart the server for it to take effect")
        return
    try:
        # No memo: the master keeps nothing from its compile, so the
        # workers it forks do not start with copies (tens of megabytes
        # with 100,000 tenants).
        compile_snapshot(config, jobs=jobs)
    except Exception:
        # This runs in the gunicorn master: an exception here would stop the
        # whole server. Whatever went wrong, keep serving what we had.
        log.exception("compiling the tenants failed; still serving the previous policies")


class PolicyServer(BaseApplication):  # type: ignore[misc]
    """gunicorn with settings from the provider config."""

    def __init__(
        self,
        config: ProviderConfig,
        *,
        bind: str,
        workers: int,
        threads: int,
        access_log: bool = False,
        pushed: bool = False,
    ) -> None:
        self.config = config
        # A serving node serves the snapshot its control node pushed and
        # never compiles one of its own (policy_host.nodes).
        self.pushed = pushed
        self.options: dict[str, Any] = {
            "bind": [bind],
            "workers": workers,
            "worker_class": "gthread" if threads > 1 else "sync",
            "threads": threads,
            "pidfile": str(config.pidfile),
            "graceful_timeout": 10,
            "timeout": 30,
            "keepalive": 2,
            # Policy requests are tiny; refuse anything large early.
            "limit_request_line": 2048,
            "limit_request_fields": 50,
            "limit_request_field_size": 4096,
            "accesslog": "-" if access_log else None,
            "errorlog": "-",
            "proc_name": "policy-host",
            "on_starting": self._starting,
            "when_ready": self._ready,
            "on_reload": self._compile,
        }
        self._compile_later = False
        super().__init__()

    def _starting(self, _arbiter: Any) -> None:
        # With a snapshot from an earlier run the workers start serving it at
        # once and the compile runs beside them (see ``_ready``): with
        # 100,000 tenants it takes seconds, and what was served before the
        # restart is what apply last verified. Without one, compile first,
        # in a process per core (gunicorn has no signal handlers yet, so
        # nothing else reaps those children).
        if self.pushed or self.config.snapshot_path.exists():
            # The database the workers read, before they start: a worker
            # never builds it at start (gunicorn's timeout), only its
            # watcher does (store.catch_up).
            keep_up(self.config.snapshot_path)
            self._compile_later = not self.pushed
            return
        recompile(self.config.path, self.config, jobs=default_jobs())

    def _ready(self, arbiter: Any) -> None:
        if self._compile_later:
            self._compile_later = False
            compile_in_background(self.config.path, self.config, arbiter.LISTENERS)

    def _compile(self, _arbiter: Any) -> None:
        if not self.pushed:
            recompile(self.config.path, self.config)

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        return create_app(
            snapshot_path=self.config.snapshot_path,
            watch_interval=WATCH_INTERVAL,
            reports_config=self.config,
            workers=int(self.options["workers"]),
        )


def compile_in_background(
    config_file: Path, fallback: ProviderConfig, listeners: Sequence[Any] = ()
) -> int:
    """``recompile`` in a child of the gunicorn master; returns its pid.

    The child drops the master's signal handlers and listening sockets,
    compiles, and always exits 0 (gunicorn reaps it like a worker, and
    would stop the server for a worker that exits 3 or 4). The workers
    pick the new snapshot up as any other (``WATCH_INTERVAL``).
    """
    pid = os.fork()
    if pid:
        log.info("compiling the tenants in the background (pid %d)", pid)
        return pid
    try:
        for number in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP,
                       signal.SIGCHLD, signal.SIGUSR1, signal.SIGUSR2, signal.SIGTTIN,
                       signal.SIGTTOU, signal.SIGWINCH):  # fmt: skip
            signal.signal(number, signal.SIG_DFL)
        for listener in listeners:
            listener.close()
        recompile(config_file, fallback, jobs=default_jobs())
    except BaseException:
        log.exception("background compile failed")
    finally:
        os._exit(0)


def go_live(
    config: ProviderConfig,
    *,
    loaded: LoadResult | None = None,
    memo: SnapshotMemo | None = None,
    proceed: Callable[[ChangedHosts], bool] | None = None,
) -> Compiled:
    """Compile and write the snapshot; running workers serve it within
    ``WATCH_INTERVAL`` seconds. Arguments and result as
    ``compile_snapshot``'s. (Called from the command line, where reading
    many changed tenant files in a process per core is safe.)"""
    return compile_snapshot(config, jobs=default_jobs(), loaded=loaded, memo=memo, proceed=proceed)
