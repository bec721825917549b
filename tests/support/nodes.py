"""Serving nodes for the miniature internet: each in a network namespace of
its own, joined to the control node's namespace by a veth pair.

``NodesInternet`` is ``stack.MiniInternet`` (the control node: knot,
unbound, pebble, the app and nginx, in its namespace) with the provider
config's ``nodes:`` section and ``mta-sts.<provider>`` pointing at the
last node (so pebble's HTTP-01 requests arrive there). Each
``ServingNode`` runs, in its namespace on ``10.77.<n>.2``:

- sshd (Debian's openssh-server) taking only the control node's key, whose
  ``authorized_keys`` line runs ``deploy/policy-host-node-receive`` and
  nothing else (rsync through Debian's rrsync);
- nginx with ``nginx/policy-host-node.conf`` (ACME challenges to the
  control node's port 80, policies from the pushed release);
- the app (``policy-host serve``) on ``10.77.<n>.2:8080``, from the node's
  own config whose snapshot links into the pushed release.

The control node's side of each link is ``10.77.<n>.1``.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path

from .dnsservers import Zone
from .layout import ROOT
from .netns import NetNamespace
from .nginx import SHIPPED_NGINX, SNIPPET, temp_paths
from .procs import Daemon, DaemonError, Managed, port_open, require_binary
from .stack import CLI, ID_ZONE, POLICY_HOST, Customer, MiniInternet
from .tls import make_ca

__all__ = ["NODE_BINARIES", "REPORT_NAME", "REPORT_PORT", "NodesInternet", "ServingNode"]

NODE_BINARIES = ("sshd", "ssh", "ssh-keygen", "rsync", "rrsync")
RECEIVER = ROOT / "deploy" / "policy-host-node-receive"
NODE_SITE = "policy-host-node.conf"
NODE_REPORTS = "policy-host-node-reports.conf"
REPORT_NAME = "tlsrpt.provider.example"
REPORT_PORT = 8443
APP_PORT = 8080
COMMAND_TIMEOUT = 30.0


def _run(argv: Sequence[str]) -> None:
    done = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
    )
    if done.returncode != 0:
        raise DaemonError(f"{shlex.join(argv)} failed: {(done.stdout + done.stderr).strip()}")


class ServingNode(Managed):
    """One node: its namespace, link, sshd, nginx and app."""

    def __init__(self, name: str, number: int, workdir: Path, control: MiniInternet) -> None:
        self.name = name
        self.number = number
        self.workdir = workdir
        self.control = control
        self.netns = NetNamespace(prefix=f"ph-{name}")
        self.address = f"10.77.{number}.2"
        self.control_address = f"10.77.{number}.1"
        self.link = f"ph-n{number}-{os.getpid() % 10000}"
        self.receive_root = workdir / "receive"
        self.state_dir = workdir / "state"
        self.config_path = workdir / "config.yaml"
        self.nginx_dir = workdir / "nginx"
        self.access_log = self.nginx_dir / "log" / "policy-host.access.log"
        # (certificate, key) of the report name: nginx gets a server block
        # for it on REPORT_PORT with nginx/policy-host-node-reports.conf.
        self.report_tls: tuple[Path, Path] | None = None
        self.sshd: Daemon | None = None
        self.nginx: Daemon | None = None
        self.app: Daemon | None = None
        self._stack = contextlib.ExitStack()

    # -- what the control node's config says about this node -------------

    def config_entry(self) -> str:
        return (
            f"    - name: {self.name}\n"
            f"      address: {self.address}\n"
            f"      ssh: root@{self.address}\n"
            f"      app: {self.address}:{APP_PORT}\n"
            f"      path: {self.receive_root}\n"
            f"      snippet: {self.nginx_dir / 'conf' / SNIPPET}\n"
        )

    # -- set-up ------------------------------------------------------------

    def _link_up(self) -> None:
        ip = require_binary("ip")
        # Run from the control node's namespace (this thread is in it).
        _run([ip, "link", "add", self.link, "type", "veth", "peer", "name", "eth0", "netns",
              self.netns.name])  # fmt: skip
        _run([ip, "addr", "add", f"{self.control_address}/24", "dev", self.link])
        _run([ip, "link", "set", self.link, "up"])
        _run([ip, "-n", self.netns.name, "addr", "add", f"{self.address}/24", "dev", "eth0"])
        _run([ip, "-n", self.netns.name, "link", "set", "eth0", "up"])

    def _write_sshd(self, push_key: Path) -> list[str]:
        ssh = self.workdir / "ssh"
        ssh.mkdir(parents=True, exist_ok=True)
        host_key = ssh / "host_ed25519"
        if not host_key.exists():
            _run([require_binary("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-f",
                  str(host_key)])  # fmt: skip
        reload = " && ".join(
            shlex.join(argv)
            for argv in (self._nginx_argv("-t", "-q"), self._nginx_argv("-s", "reload"))
        )
        command = f"{RECEIVER} {self.receive_root} {self.state_dir} '{reload}'"
        assert '"' not in command
        public = push_key.with_suffix(".pub").read_text().strip()
        (ssh / "authorized_keys").write_text(f'command="{command}",restrict {public}\n')
        config = ssh / "sshd_config"
        config.write_text(
            f"ListenAddress {self.address}:22\n"
            f"HostKey {host_key}\n"
            f"PidFile {ssh / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {ssh / 'authorized_keys'}\n"
            "StrictModes no\n"
            "PermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "UsePAM no\n"
            "LogLevel VERBOSE\n"
        )
        # sshd's privilege separation folder (Debian's unit makes it).
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        return [require_binary("sshd"), "-D", "-e", "-f", str(config)]

    def known_hosts_line(self) -> str:
        public = (self.workdir / "ssh" / "host_ed25519.pub").read_text().split()
        return f"{self.address} {public[0]} {public[1]}\n"

    def _nginx_argv(self, *extra: str) -> list[str]:
        conf = self.nginx_dir / "conf"
        return [require_binary("nginx"), "-p", str(self.nginx_dir), "-c", str(conf / "nginx.conf"),
                "-e", str(self.nginx_dir / "log" / "error.log"), *extra]  # fmt: skip

    def _install_nginx(self) -> None:
        conf, log, tmp = (self.nginx_dir / name for name in ("conf", "log", "tmp"))
        for folder in (conf, log, tmp):
            folder.mkdir(parents=True, exist_ok=True)
        replacements = {
            "server 10.0.0.10:8080;": f"server {self.address}:{APP_PORT};",
            "server 10.0.0.1:80;": f"server {self.control_address}:80;",
            "server 10.0.0.1:8080;": f"server {self.control_address}:{APP_PORT};",
            "/var/lib/policy-host-node/current/nginx/": f"{self.receive_root}/current/nginx/",
            "/var/log/nginx/": f"{log}/",
        }
        site = (SHIPPED_NGINX / NODE_SITE).read_text()
        for old, new in replacements.items():
            if old not in site:
                raise AssertionError(f"{SHIPPED_NGINX / NODE_SITE} no longer mentions {old}")
            site = site.replace(old, new)
        (conf / NODE_SITE).write_text(site)
        snippet = (SHIPPED_NGINX / SNIPPET).read_text()
        snippet = snippet.replace("/var/log/nginx/", f"{log}/")
        snippet = snippet.replace("/var/lib/policy-host/www", str(self.state_dir / "www"))
        (conf / SNIPPET).write_text(snippet)
        if self.report_tls is not None:
            reports = (SHIPPED_NGINX / NODE_REPORTS).read_text()
            assert "/var/log/nginx/" in reports
            (conf / NODE_REPORTS).write_text(reports.replace("/var/log/nginx/", f"{log}/"))
            cert, key = self.report_tls
            with (conf / NODE_SITE).open("a") as handle:
                handle.write(
                    f"server {{\n    listen {REPORT_PORT} ssl;\n    server_name {REPORT_NAME};\n"
                    f"    ssl_certificate {cert};\n    ssl_certificate_key {key};\n"
                    f"    include {conf / NODE_REPORTS};\n}}\n"
                )
        (conf / "nginx.conf").write_text(
            "daemon off;\nmaster_process on;\nworker_processes 1;\nuser root root;\n"
            f"pid {self.nginx_dir}/nginx.pid;\n"
            f"error_log {log}/error.log info;\n"
            "events { worker_connections 256; }\n"
            "http {\n"
            f"{temp_paths(tmp)}"
            "    default_type application/octet-stream;\n"
            f"    include {conf / NODE_SITE};\n"
            "}\n"
        )

    def _write_app_config(self) -> None:
        (self.workdir / "tenants").mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            "tenants_dir: tenants\n"
            "state_dir: state\n"
            f"policy_host: {POLICY_HOST}\n"
            f"id_zone: {ID_ZONE}\n"
            "serve:\n"
            f"  bind: {self.address}:{APP_PORT}\n"
            "  workers: 2\n"
            "  threads: 2\n"
        )

    def prepare(self, push_key: Path) -> None:
        """Namespace, link and config files; nothing running yet."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._stack.enter_context(self.netns)
        self._link_up()
        self._sshd_argv = self._write_sshd(push_key)
        self._install_nginx()
        self._write_app_config()

    def start(self) -> None:
        raise NotImplementedError("use prepare(), then start_front() and start_app()")

    def start_front(self) -> None:
        """sshd and nginx: what a push needs."""
        with self.netns.entered():
            self.sshd = Daemon(
                self._sshd_argv,
                name="sshd",
                workdir=self.workdir / "ssh",
                ready=lambda: port_open(self.address, 22),
            )
            self.sshd.start()
        self.start_nginx()

    def start_nginx(self) -> None:
        """nginx alone (after it went down while sshd stayed up)."""
        if self.nginx is not None:
            self.nginx.stop()
        with self.netns.entered():
            self.nginx = Daemon(
                self._nginx_argv(),
                name="nginx",
                workdir=self.nginx_dir,
                ready=lambda: all(port_open(self.address, p) for p in (80, 443, REPORT_PORT)),
            )
            self.nginx.start()

    def start_app(self) -> None:
        """The app: once a push has made its snapshot links."""
        with self.netns.entered():
            self.app = Daemon(
                [*CLI, "--config", str(self.config_path), "serve", "--pushed"],
                name="gunicorn",
                workdir=self.workdir / "gunicorn",
                ready=lambda: port_open(self.address, APP_PORT),
                ready_timeout=20,
            )
            self.app.start()

    def stop_all(self) -> None:
        """The node goes down: nothing answers on its address."""
        for daemon in (self.app, self.nginx, self.sshd):
            if daemon is not None:
                daemon.stop()
        self.app = self.nginx = self.sshd = None

    def cleanup(self) -> None:
        self.stop_all()
        self._stack.close()


class NodesInternet(MiniInternet):
    """The control node (``MiniInternet``) and ``names`` serving nodes."""

    def __init__(self, root: Path, customers: Sequence[Customer], names: Sequence[str]) -> None:
        root = root.resolve()
        self.push_key = root / "push" / "id_ed25519"
        self.known_hosts = root / "push" / "known_hosts"
        super().__init__(root, customers)
        self.nodes = [
            ServingNode(name, number, root / f"node-{name}", self)
            for number, name in enumerate(names, start=1)
        ]
        self.ca_file = self.root / "pebble" / "issuing-root.pem"
        # The test CA of the report name's certificate on the nodes.
        self.report_ca: Path | None = None
        self.extra_config = (
            "nodes:\n"
            f"  ssh_key: {self.push_key}\n"
            f"  known_hosts: {self.known_hosts}\n"
            f"  ca_file: {self.ca_file}\n"
            "  timeout: 20\n"
            "  serving:\n" + "".join(node.config_entry() for node in self.nodes)
        )

    def zones(self) -> list[Zone]:
        # The policy name leads to the last node: the CA's HTTP-01 requests
        # arrive there, not at the control node that asked for them.
        provider, *customers = super().zones()
        last = self.nodes[-1].address
        records = [
            f"mta-sts A {last}" if r.startswith("mta-sts A") else r for r in provider.records
        ]
        return [provider.with_records(*records), *customers]

    def start(self) -> None:
        self.push_key.parent.mkdir(parents=True, exist_ok=True)
        if not self.push_key.exists():
            _run([require_binary("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-f",
                  str(self.push_key)])  # fmt: skip
        super().start()
        ca = make_ca(self.root / "report-ca")
        self.report_ca = ca.cert
        report_tls = ca.issue("tlsrpt", [REPORT_NAME])
        for node in self.nodes:
            self._stack.enter_context(_Cleanup(node))
            node.report_tls = report_tls
            node.prepare(self.push_key)
            node.start_front()
        self.known_hosts.write_text("".join(node.known_hosts_line() for node in self.nodes))

    def node(self, name: str) -> ServingNode:
        return next(node for node in self.nodes if node.name == name)


class _Cleanup(contextlib.AbstractContextManager["_Cleanup"]):
    """Calls a node's cleanup when the control node's stack closes."""

    def __init__(self, node: ServingNode) -> None:
        self.node = node

    def __exit__(self, *exc: object) -> None:
        self.node.cleanup()
