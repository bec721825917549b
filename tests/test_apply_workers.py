"""`apply` asks every worker of the app whether it holds the new snapshot:
nginx serves the policy files by itself, so a worker that could not load
the snapshot is invisible through it, and no id may be published while
one serves old bytes (RFC 8461 section 8).

The real gunicorn (two workers) runs as ``nobody``; `apply` runs as root,
as the owner refusal (``cli.owner``) exists to prevent: its snapshot is
root's, mode 0600, and no worker can read it, while the policy files in
``<state_dir>/www`` (0644) are served by a static server standing where
nginx stands (tests/test_static_nginx.py covers nginx itself).
"""

from __future__ import annotations

import http.server
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.applyenv import CLI, make_provider, published_id, tenant_text
from support.dnsservers import DnsWorld
from support.procs import LOOPBACK, Daemon, free_port, port_open

from policy_host.fetch import fetch_app
from policy_host.publish.apply import run
from policy_host.publish.environment import real_environment
from policy_host.publish.steps import VERIFY
from policy_host.publish.workers import parse_state
from policy_host.serve.web import SNAPSHOT_PATH

NOBODY = 65534


class Static(http.server.BaseHTTPRequestHandler):
    www: Path

    def do_GET(self) -> None:
        path = self.www / (self.headers.get("Host") or "").lower()
        body = path.read_bytes() if path.is_file() else b"not found\n"
        self.send_response(200 if path.is_file() else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def root() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("needs root to run the server as another user")
    path = Path(tempfile.mkdtemp(prefix="ph-workers-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_a_worker_that_cannot_read_the_snapshot_stops_apply_before_publishing(
    dns_world: DnsWorld, root: Path
) -> None:
    static_port, app_port = free_port("tcp"), free_port("tcp")
    site = make_provider(
        root / "provider",
        primary_port=dns_world.knot.port,
        key=dns_world.key,
        bind_port=app_port,
        workers=2,
        verify_timeout=3,
        extra=f"  upstreams: http://{LOOPBACK}:{static_port}\n",
    )
    site.write("old.example", tenant_text("mx.old.example"))
    (site.root / "var").mkdir()
    for path in (site.root, *site.root.rglob("*")):
        os.chown(path, NOBODY, NOBODY)
    config = site.config()
    Static.www = config.state_dir / "www"
    static = http.server.ThreadingHTTPServer((LOOPBACK, static_port), Static)
    threading.Thread(target=static.serve_forever, daemon=True).start()
    argv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *CLI]
    argv += ["--config", str(site.config_path), "serve"]
    try:
        with Daemon(
            argv,
            name="policy-host-serve",
            workdir=root / "logs",
            ready=lambda: port_open(LOOPBACK, app_port),
            ready_timeout=15.0,
            stop_timeout=5.0,
        ):
            # The private page answers on the app's listener...
            status, body = fetch_app(config.serve.bind, SNAPSHOT_PATH, "localhost", timeout=3)
            state = parse_state(body.decode())
            assert status == 200 and state is not None and state.workers == 2, body
            # ...but never for a policy name.
            status, _ = fetch_app(
                config.serve.bind, SNAPSHOT_PATH, "mta-sts.old.example", timeout=3
            )
            assert status == 404

            site.write("new.example", tenant_text("mx.new.example"))
            report = run(config, real_environment(config))

            assert report.failure is not None
            assert report.failure.step == VERIFY
            reason = report.failure.reason
            assert reason.startswith(f"the app behind the upstreams ({config.serve.bind}): worker ")
            # What the worker said last: the error it got, or (asked before
            # its watcher looked, and not reached again) the old snapshot.
            assert "cannot load the new snapshot" in reason or "still serves snapshot" in reason
            assert "nothing was published" in report.failure.reason
            # The static files (what the upstream serves) had the new policy.
            assert (config.state_dir / "www" / "mta-sts.new.example").is_file()
            assert published_id(dns_world.knot, "new.example") is None
            assert published_id(dns_world.knot, "old.example") is None
    finally:
        static.shutdown()
        static.server_close()
