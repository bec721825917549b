"""nginx with this project's own site config (``nginx/``), for tests.

The shipped files are copied with their absolute production paths (the
gunicorn socket, certbot's webroot, the generated include folder, the log
folder) replaced by paths in the test's work folder; every path that is
replaced must occur in the shipped file, so the test breaks loudly when the
shipped config and this harness drift apart. The main ``nginx.conf`` is the
harness's own (pid, temp paths, error log), with an http context as loose
as Debian's default one (TLS 1.0 allowed, gzip for text/plain) so the tests
prove the site config overrides it.
"""

from __future__ import annotations

import os
from pathlib import Path

from .layout import ROOT
from .procs import LOOPBACK, Daemon, Managed, port_open, require_binary

__all__ = ["SHIPPED_NGINX", "NginxServer", "temp_paths"]

SHIPPED_NGINX = ROOT / "nginx"
SITE = "policy-host.conf"
SNIPPET = "policy-host-tenant.conf"


def temp_paths(tmp: Path | str) -> str:
    """The http block's temporary folders, all under ``tmp`` (nginx's own
    defaults are under /var/lib/nginx, which a test's nginx must not use)."""
    return "".join(
        f"    {kind}_temp_path {tmp}/{name};\n"
        for kind, name in (
            ("client_body", "body"),
            ("proxy", "proxy"),
            ("fastcgi", "fastcgi"),
            ("uwsgi", "uwsgi"),
            ("scgi", "scgi"),
        )
    )


class NginxServer(Managed):
    def __init__(
        self, workdir: Path, *, socket_path: Path, webroot: Path, www: Path | None = None
    ) -> None:
        self.workdir = workdir
        self.socket_path = socket_path
        self.webroot = webroot
        # The policy files nginx serves by itself (the provider's
        # <state_dir>/www); without them every request goes to the app.
        self.www = www if www is not None else workdir / "www"
        self.conf_dir = workdir / "conf"
        self.log_dir = workdir / "log"
        self.tenants_dir = workdir / "tenants.d"
        self.conf_path = self.conf_dir / "nginx.conf"
        self.error_log = self.log_dir / "error.log"
        self.access_log = self.log_dir / "policy-host.access.log"
        self._daemon: Daemon | None = None

    @property
    def tenants_conf(self) -> Path:
        """Where ``policy-host nginx-conf`` writes (nginx.tenants_conf)."""
        return self.tenants_dir / "tenants.conf"

    @property
    def snippet(self) -> Path:
        """The installed copy of nginx/policy-host-tenant.conf (nginx.snippet)."""
        return self.conf_dir / SNIPPET

    def argv(self, *extra: str) -> list[str]:
        return [
            require_binary("nginx"),
            "-p",
            str(self.workdir),
            "-c",
            str(self.conf_path),
            "-e",
            str(self.error_log),
            *extra,
        ]

    @property
    def test_command(self) -> list[str]:
        return self.argv("-t", "-q")

    @property
    def reload_command(self) -> list[str]:
        return self.argv("-s", "reload")

    def _replacements(self) -> dict[str, str]:
        return {
            "/run/policy-host/gunicorn.sock": str(self.socket_path),
            "/var/www/policy-host-acme": str(self.webroot),
            "/etc/nginx/policy-host/": f"{self.tenants_dir}/",
            "/var/log/nginx/": f"{self.log_dir}/",
            "/var/lib/policy-host/www": str(self.www),
        }

    def install(self) -> None:
        """Write the main config and the shipped site files, adapted."""
        for folder in (self.conf_dir, self.log_dir, self.tenants_dir, self.workdir / "tmp"):
            folder.mkdir(parents=True, exist_ok=True)
        self.webroot.mkdir(parents=True, exist_ok=True)
        site = (SHIPPED_NGINX / SITE).read_text()
        for old, new in self._replacements().items():
            if old not in site:
                raise AssertionError(f"{SHIPPED_NGINX / SITE} no longer mentions {old}")
            site = site.replace(old, new)
        (self.conf_dir / SITE).write_text(site)
        snippet = (SHIPPED_NGINX / SNIPPET).read_text()
        for old in ("/var/log/nginx/", "/var/lib/policy-host/www"):
            if old not in snippet:
                raise AssertionError(f"{SHIPPED_NGINX / SNIPPET} no longer mentions {old}")
            snippet = snippet.replace(old, self._replacements()[old])
        self.snippet.write_text(snippet)
        tmp = self.workdir / "tmp"
        user = "user root root;\n" if os.geteuid() == 0 else ""
        self.conf_path.write_text(
            "daemon off;\n"
            "master_process on;\n"
            "worker_processes 1;\n"
            f"{user}"
            f"pid {self.workdir}/nginx.pid;\n"
            f"error_log {self.error_log} info;\n"
            "events { worker_connections 256; }\n"
            "http {\n"
            f"{temp_paths(tmp)}"
            "    default_type application/octet-stream;\n"
            "    sendfile on;\n"
            # As loose as Debian's default nginx.conf, or looser.
            "    ssl_protocols TLSv1 TLSv1.1 TLSv1.2 TLSv1.3;\n"
            "    gzip on;\n"
            "    gzip_min_length 1;\n"
            "    gzip_types text/plain;\n"
            f"    include {self.conf_dir / SITE};\n"
            "}\n"
        )

    def _ready(self) -> bool:
        return all(port_open(LOOPBACK, port) for port in (80, 443, 8081))

    def start(self) -> None:
        self.install()
        self._daemon = Daemon(
            self.argv(), name="nginx", workdir=self.workdir, ready=self._ready, ready_timeout=10
        )
        self._daemon.start()

    @property
    def daemon(self) -> Daemon:
        assert self._daemon is not None, "nginx is not running"
        return self._daemon

    def stop(self) -> None:
        if self._daemon is not None:
            self._daemon.stop()
            self._daemon = None

    def cleanup(self) -> None:
        self.stop()
