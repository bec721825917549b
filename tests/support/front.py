"""The serving side of production, in a network namespace: nginx with this
project's config on 80/443/8081 in front of ``policy-host serve``
(gunicorn on a unix socket), and optionally knotd taking the TSIG-signed
UPDATEs of ``policy-host apply``.

Every tenant given at the start gets a certificate from a throw-away CA
(one certificate naming every ``mta-sts.<domain>``, copied where certbot
would keep each), and ``policy-host nginx-conf`` writes nginx's server
blocks, exactly as in production. Lighter than ``stack.MiniInternet``: no
resolver, no ACME server.

The calling thread is moved into the namespace for the life of the
``with`` block (threads and processes it starts are in there too);
everything is stopped and the namespace deleted on exit.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import contextlib
import inspect
import os
import shlex
import shutil
import ssl
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from .dnsservers import KnotServer, TsigKey, Zone
from .fixtures_dns import in_ci
from .netns import NetNamespace, netns_supported
from .nginx import NginxServer
from .procs import Daemon, Managed, MissingBinaryError, require_binary
from .rawhttp import IO_TIMEOUT, Reply, connect, connect_unix, exchange
from .tls import TestCA, make_ca

__all__ = [
    "CLI",
    "FRONT_BINARIES",
    "HTTPS",
    "PROVIDER_ZONE",
    "VERIFY",
    "Front",
    "fill",
    "require_front",
    "tmpfs",
]

# Programs the front runs (Debian packages nginx, knot, openssl, iproute2,
# util-linux for the tmpfs).
FRONT_BINARIES = ("nginx", "knotd", "knotc", "openssl", "ip", "mount", "umount")
PROVIDER_ZONE = "provider.example"
ID_ZONE = f"_mta-sts.{PROVIDER_ZONE}"
HTTPS = 443
# nginx's loopback-only listener that `apply` verifies through.
VERIFY = 8081
COMMAND_TIMEOUT = 120.0
_SCRIPT = Path(sys.executable).with_name("policy-host")
CLI: tuple[str, ...] = (
    (str(_SCRIPT),) if _SCRIPT.exists() else (sys.executable, "-m", "policy_host.cli.main")
)


def require_front() -> None:
    """Skip without root or a program the front needs; fail under CI=true."""
    problems = []
    why = netns_supported()
    if why:
        problems.append(why)
    for name in FRONT_BINARIES:
        try:
            require_binary(name)
        except MissingBinaryError:
            problems.append(f"missing program {name}")
    if not problems:
        return
    message = "; ".join(problems)
    if in_ci():
        pytest.fail(f"{message}; CI=true, so this is a failure, not a skip", pytrace=False)
    pytest.skip(message)


def _nginx(workdir: Path, socket_path: Path, webroot: Path, state_dir: Path) -> NginxServer:
    """The harness's nginx; it serves the policy files in ``<state_dir>/www``
    where the shipped config does (and the harness knows it)."""
    if "www" in inspect.signature(NginxServer).parameters:
        return NginxServer(workdir, socket_path=socket_path, webroot=webroot, www=state_dir / "www")
    return NginxServer(workdir, socket_path=socket_path, webroot=webroot)


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``path`` (root only), unmounted on exit."""
    path.mkdir(parents=True, exist_ok=True)
    mount = [require_binary("mount"), "-t", "tmpfs", "-o", f"size={size},mode=0755"]
    done = subprocess.run(
        [*mount, "tmpfs", str(path)], capture_output=True, text=True, timeout=10, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"mount tmpfs on {path} failed: {done.stderr.strip()}")
    try:
        yield path
    finally:
        umount = require_binary("umount")
        done = subprocess.run(
            [umount, str(path)], capture_output=True, text=True, timeout=10, check=False
        )
        if done.returncode != 0:  # still busy: detach it now, it goes when unused
            subprocess.run([umount, "-l", str(path)], capture_output=True, timeout=10, check=True)


def fill(folder: Path, name: str = "filler") -> Path:
    """Write ``folder/name`` until the file system is full; returns its path
    (delete it to free the space again)."""
    path = folder / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (1 << 16, 1 << 12, 1):
            block = b"\0" * size
            while True:
                try:
                    os.write(fd, block)
                except OSError:
                    break
    finally:
        os.close(fd)
    return path


class Front(Managed):
    """``with Front(root, {"a.example": "<tenant yaml>", ...}) as front:``."""

    def __init__(
        self,
        root: Path,
        tenants: Mapping[str, str],
        *,
        workers: int = 2,
        threads: int = 4,
        dns: bool = True,
        verify_timeout: int = 10,
        state_tmpfs: str | None = None,
        dns_timeout: int = 2,
    ) -> None:
        self.root = root.resolve()
        self.tenants = dict(tenants)
        self.workers = workers
        self.threads = threads
        self.dns = dns
        self.verify_timeout = verify_timeout
        # A size ("4m"): the state folder is a tmpfs of its own, which a
        # test can fill up.
        self.state_tmpfs = state_tmpfs
        self.dns_timeout = dns_timeout
        self.key = TsigKey.generate()
        self.provider = self.root / "provider"
        self.config_path = self.provider / "config.yaml"
        self.tenants_dir = self.provider / "tenants"
        self.state_dir = self.provider / "var"
        self.key_file = self.provider / "tsig.key"
        self.socket_path = self.root / "gunicorn.sock"
        self.letsencrypt = self.root / "letsencrypt"
        self.netns = NetNamespace("ph-front")
        self.nginx = _nginx(
            self.root / "nginx", self.socket_path, self.root / "acme", self.state_dir
        )
        self.knot: KnotServer | None = None
        self.gunicorn: Daemon | None = None
        self.ca: TestCA | None = None
        self._stack = contextlib.ExitStack()

    # -- set-up ------------------------------------------------------------

    def hosts(self) -> list[str]:
        return [f"mta-sts.{domain}" for domain in sorted(self.tenants)]

    def write_tenant(self, domain: str, text: str) -> None:
        self.tenants_dir.mkdir(parents=True, exist_ok=True)
        path = self.tenants_dir / f"{domain}.yaml"
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        tmp.replace(path)  # staff's editors save atomically too

    def _write_provider(self) -> None:
        for domain, text in self.tenants.items():
            self.write_tenant(domain, text)
        dns = ""
        if self.knot is not None:
            self.key_file.write_text(
                f'key "{self.key.name}" {{ algorithm {self.key.algorithm}; '
                f'secret "{self.key.secret}"; }};\n'
            )
            self.key_file.chmod(0o600)
            dns = (
                f"dns:\n  primary: 127.0.0.1:{self.knot.port}\n  tsig_key_file: tsig.key\n"
                f"  txt_ttl: 60\n  timeout: {self.dns_timeout}\n"
            )
        self.config_path.write_text(
            f"tenants_dir: tenants\nstate_dir: var\npolicy_host: mta-sts.{PROVIDER_ZONE}\n"
            f"id_zone: {ID_ZONE}\n"
            f"serve:\n  bind: unix:{self.socket_path}\n  workers: {self.workers}\n"
            f"  threads: {self.threads}\n"
            f"{dns}"
            "apply:\n  upstreams: http://127.0.0.1:8081\n"
            f"  verify_timeout: {self.verify_timeout}\n  withdrawal_max_age: 3600\n"
            f"acme:\n  config_dir: {self.letsencrypt}/config\n  work_dir: {self.letsencrypt}/work\n"
            f"  logs_dir: {self.letsencrypt}/logs\n  webroot: {self.nginx.webroot}\n"
            f"nginx:\n  tenants_conf: {self.nginx.tenants_conf}\n  snippet: {self.nginx.snippet}\n"
            f"  test_command: {shlex.join(self.nginx.test_command)}\n"
            f"  reload_command: {shlex.join(self.nginx.reload_command)}\n"
        )

    def _certificates(self) -> None:
        self.ca = make_ca(self.root / "ca")
        chain, key = self.ca.issue("tenants", self.hosts(), days=2)
        for host in self.hosts():
            live = self.letsencrypt / "config" / "live" / host
            live.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(chain, live / "fullchain.pem")
            shutil.copyfile(key, live / "privkey.pem")
            (live / "privkey.pem").chmod(0o600)

    def _gunicorn_ready(self) -> bool:
        if not self.socket_path.exists():
            return False
        connect_unix(self.socket_path, timeout=1).close()
        return True

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._stack.enter_context(self.netns)
        self._stack.enter_context(self.netns.entered())
        if self.state_tmpfs is not None:
            self._stack.enter_context(tmpfs(self.state_dir, self.state_tmpfs))
        if self.dns:
            provider = Zone(PROVIDER_ZONE, ["mta-sts A 127.0.0.1"], dynamic=True)
            self.knot = self._stack.enter_context(KnotServer([provider], self.key))
        self._write_provider()
        self._certificates()
        self.gunicorn = self._stack.enter_context(self.gunicorn_daemon())
        self.nginx.install()
        done = self.cli("nginx-conf", "--no-reload")
        if done.returncode != 0:
            raise RuntimeError(f"nginx-conf failed: {done.stdout}{done.stderr}")
        self._stack.enter_context(self.nginx)

    def gunicorn_daemon(self) -> Daemon:
        return Daemon(
            [*CLI, "--config", str(self.config_path), "serve"],
            name="gunicorn",
            workdir=self.root / "gunicorn",
            ready=self._gunicorn_ready,
            ready_timeout=20,
        )

    def cleanup(self) -> None:
        self._stack.close()

    # -- use -----------------------------------------------------------------

    def cli(self, *args: str, timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
        """``policy-host --config <ours> ARGS`` (in the namespace)."""
        return subprocess.run(
            [*CLI, "--config", str(self.config_path), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )

    def tls_context(self) -> ssl.SSLContext:
        assert self.ca is not None
        context = ssl.create_default_context(cafile=str(self.ca.cert))
        # The one certificate names every tenant; fuzzed SNI names are
        # checked by the caller, not by the client library.
        context.check_hostname = False
        return context

    def https(
        self,
        sni: str,
        request: bytes,
        *,
        source: str | None = None,
        timeout: float = IO_TIMEOUT,
        head_only: bool = False,
        context: ssl.SSLContext | None = None,
    ) -> Reply:
        """One raw request to nginx's 443 with SNI ``sni``."""
        tls = context or self.tls_context()
        with (
            connect(HTTPS, source=source, timeout=timeout) as raw,
            tls.wrap_socket(raw, server_hostname=sni) as sock,
        ):
            return exchange(sock, request, timeout=timeout, head_only=head_only)

    def plain(
        self, port: int, request: bytes, *, source: str | None = None, timeout: float = IO_TIMEOUT
    ) -> Reply:
        """One raw request to a plain-HTTP port of nginx (80, 8081)."""
        with connect(port, source=source, timeout=timeout) as sock:
            return exchange(sock, request, timeout=timeout)

    def master_pid(self) -> int:
        assert self.gunicorn is not None
        return self.gunicorn.pid

    def workers_of_master(self) -> set[int]:
        """PIDs of the gunicorn master's children, from /proc."""
        master = self.master_pid()
        pids = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == master:
                pids.add(int(entry.name))
        return pids
