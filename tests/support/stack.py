"""A miniature internet in a network namespace: the whole production stack.

Inside a namespace of its own (``netns.NetNamespace``), on its private
127.0.0.1:

- knotd, authoritative for the customer zones and the provider zone (the
  latter takes TSIG-signed dynamic updates), on a free port;
- unbound on port 53, recursive, caching off, asking knotd for everything;
- pebble, the ACME test server, validating HTTP-01 on port 80 and resolving
  names through that unbound;
- ``policy-host serve`` (gunicorn) on a unix socket;
- nginx with this project's site config on ports 80 and 443.

The calling thread is moved into the namespace for the life of the
``with`` block, so the test's own sockets and the commands it runs see the
same world. Everything is stopped, and the namespace deleted, on exit,
whatever happened.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shlex
import socket
import ssl
import subprocess
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .dnsservers import KnotServer, TsigKey, UnboundResolver, Zone
from .netns import NetNamespace, private_resolv_conf
from .nginx import NginxServer
from .pebble import Pebble
from .procs import LOOPBACK, Daemon, Managed, MissingBinaryError, require_binary

__all__ = [
    "POLICY_HOST",
    "PROVIDER_ZONE",
    "STACK_BINARIES",
    "Customer",
    "HttpsAnswer",
    "MiniInternet",
]

#: Programs the stack runs (Debian packages knot, unbound, pebble, certbot,
#: nginx, iproute2, openssl, util-linux).
STACK_BINARIES = (
    "knotd",
    "knotc",
    "unbound",
    "pebble",
    "certbot",
    "nginx",
    "ip",
    "openssl",
    "unshare",
)
PROVIDER_ZONE = "provider.example"
POLICY_HOST = f"mta-sts.{PROVIDER_ZONE}"
ID_ZONE = f"_mta-sts.{PROVIDER_ZONE}"
COMMAND_TIMEOUT = 120.0
_SCRIPT = Path(sys.executable).with_name("policy-host")
CLI: tuple[str, ...] = (
    (str(_SCRIPT),) if _SCRIPT.exists() else (sys.executable, "-m", "policy_host.cli.main")
)


@dataclass(frozen=True)
class Customer:
    """One customer domain: its tenant file and what its own zone says."""

    domain: str
    mode: str = "enforce"
    mx: tuple[str, ...] = ()
    max_age: int = 604800
    # What the customer's zone holds:
    cnames: bool = True
    mx_hosts: tuple[str, ...] = ()
    extra_records: tuple[str, ...] = ()

    def tenant_yaml(self) -> str:
        lines = [f"mode: {self.mode}"]
        if self.mx:
            lines.append("mx:")
            lines += [f'  - "{pattern}"' for pattern in self.mx]
        lines.append(f"max_age: {self.max_age}")
        return "\n".join(lines) + "\n"

    def zone(self) -> Zone:
        records = [f"@ MX {10 * (n + 1)} {host}." for n, host in enumerate(self.mx_hosts)]
        records += [f"{host}. A 127.0.0.1" for host in self.mx_hosts if host.endswith(self.domain)]
        if self.cnames:
            records += [
                f"mta-sts CNAME {POLICY_HOST}.",
                f"_mta-sts CNAME {self.domain}.{ID_ZONE}.",
            ]
        records += list(self.extra_records)
        return Zone(self.domain, records)


@dataclass(frozen=True)
class HttpsAnswer:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class MiniInternet(Managed):
    root: Path
    customers: Sequence[Customer]
    key: TsigKey = field(default_factory=TsigKey.generate)
    extra_config: str = ""

    def __post_init__(self) -> None:
        self.root = self.root.resolve()
        self.netns = NetNamespace()
        self.provider = self.root / "provider"
        self.config_path = self.provider / "config.yaml"
        self.tenants_dir = self.provider / "tenants"
        self.state_dir = self.provider / "var"
        self.socket_path = self.root / "gunicorn.sock"
        self.webroot = self.root / "acme-webroot"
        self.letsencrypt = self.root / "letsencrypt"
        self.resolv_conf = self.root / "resolv.conf"
        self.nginx = NginxServer(
            self.root / "nginx",
            socket_path=self.socket_path,
            webroot=self.webroot,
            www=self.state_dir / "www",
        )
        self.knot: KnotServer | None = None
        self.unbound: UnboundResolver | None = None
        self.pebble: Pebble | None = None
        self.gunicorn: Daemon | None = None
        self._stack = contextlib.ExitStack()

    # -- set-up ------------------------------------------------------------

    @staticmethod
    def missing_binaries() -> list[str]:
        missing = []
        for name in STACK_BINARIES:
            try:
                require_binary(name)
            except MissingBinaryError:
                missing.append(name)
        return missing

    def zones(self) -> list[Zone]:
        provider = Zone(
            PROVIDER_ZONE,
            ["mta-sts A 127.0.0.1", "ns A 127.0.0.1"],
            dynamic=True,
        )
        return [provider, *(c.zone() for c in self.customers)]

    def primary_server(self) -> KnotServer:
        """The knotd the provider config's ``dns.primary`` names (not started)."""
        return KnotServer(self.zones(), self.key)

    def write_tenant(self, customer: Customer) -> None:
        (self.tenants_dir / f"{customer.domain}.yaml").write_text(customer.tenant_yaml())

    def _write_provider(self, knot_port: int) -> None:
        self.tenants_dir.mkdir(parents=True, exist_ok=True)
        for customer in self.customers:
            self.write_tenant(customer)
        key_file = self.provider / "tsig.key"
        key_file.write_text(
            f'key "{self.key.name}" {{ algorithm {self.key.algorithm}; '
            f'secret "{self.key.secret}"; }};\n'
        )
        key_file.chmod(0o600)
        le = self.letsencrypt
        self.config_path.write_text(
            f"""\
tenants_dir: tenants
state_dir: var
policy_host: {POLICY_HOST}
id_zone: {ID_ZONE}
serve:
  bind: unix:{self.socket_path}
  workers: 1
  threads: 4
dns:
  resolver: 127.0.0.1:53
  primary: 127.0.0.1:{knot_port}
  tsig_key_file: tsig.key
  tsig_algorithm: {self.key.algorithm}
  timeout: 3
apply:
  # nginx's loopback-only verification listener (nginx/policy-host.conf)
  upstreams: http://127.0.0.1:8081
acme:
  directory: {self.pebble.directory_url if self.pebble else ""}
  ca_bundle: {self.pebble.tls_ca if self.pebble else ""}
  email: hostmaster@{PROVIDER_ZONE}
  webroot: {self.webroot}
  config_dir: {le}/config
  work_dir: {le}/work
  logs_dir: {le}/logs
nginx:
  tenants_conf: {self.nginx.tenants_conf}
  snippet: {self.nginx.snippet}
  test_command: {shlex.join(self.nginx.test_command)}
  reload_command: {shlex.join(self.nginx.reload_command)}
{self.extra_config}"""
        )

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.resolv_conf.write_text("nameserver 127.0.0.1\noptions timeout:2 attempts:1\n")
        self._stack.enter_context(self.netns)
        self._stack.enter_context(self.netns.entered())
        self.knot = self._stack.enter_context(self.primary_server())
        self.unbound = self._stack.enter_context(UnboundResolver(self.knot, port=53))
        self.pebble = self._stack.enter_context(
            Pebble(dns_server=f"{LOOPBACK}:53", workdir=self.root / "pebble")
        )
        self._write_provider(self.knot.port)
        self.gunicorn = self._stack.enter_context(
            Daemon(
                [*CLI, "--config", str(self.config_path), "serve"],
                name="gunicorn",
                workdir=self.root / "gunicorn",
                ready=self._gunicorn_ready,
                ready_timeout=20,
            )
        )
        self._stack.enter_context(self.nginx)

    def _gunicorn_ready(self) -> bool:
        if not self.socket_path.exists():
            return False
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(1)
            sock.connect(str(self.socket_path))
        return True

    def stop(self) -> None:
        self._stack.close()

    def cleanup(self) -> None:
        self.stop()

    # -- use ---------------------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        """Environment for commands. Without REQUESTS_CA_BUNDLE: certbot
        trusts pebble's listener through acme.ca_bundle alone."""
        env = dict(os.environ)
        env.pop("REQUESTS_CA_BUNDLE", None)
        return env

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        timeout: float = COMMAND_TIMEOUT,
        resolv_conf: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in the namespace (optionally seeing our resolv.conf)."""
        command = private_resolv_conf(self.resolv_conf, argv) if resolv_conf else list(argv)
        return subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=dict(env) if env is not None else self.env,
            check=False,
            stdin=subprocess.DEVNULL,
        )

    def policy_host(
        self, *args: str, timeout: float = COMMAND_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        return self.run([*CLI, "--config", str(self.config_path), *args], timeout=timeout)

    def https(
        self,
        server_name: str,
        path: str = "/.well-known/mta-sts.txt",
        *,
        cafile: Path,
        host_header: str | None = None,
        method: str = "GET",
        headers: Mapping[str, str] | None = None,
        tls_version: ssl.TLSVersion | None = None,
    ) -> HttpsAnswer:
        """One request to nginx on 127.0.0.1:443 with SNI ``server_name``."""
        context = ssl.create_default_context(cafile=str(cafile))
        if tls_version is not None:
            # Let the client offer old versions at all (OpenSSL 3 refuses
            # them at its default security level), so the server decides.
            context.set_ciphers("DEFAULT:@SECLEVEL=0")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                context.minimum_version = context.maximum_version = tls_version
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host_header or server_name}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        lines += ["Connection: close", "", ""]
        with (
            socket.create_connection((LOOPBACK, 443), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=server_name) as tls,
        ):
            tls.sendall("\r\n".join(lines).encode("ascii"))
            response = http.client.HTTPResponse(tls, method=method)
            response.begin()
            body = response.read()
            return HttpsAnswer(
                response.status, {k.lower(): v for k, v in response.getheaders()}, body
            )

    def http(self, host: str, path: str) -> HttpsAnswer:
        """One plain HTTP request to nginx on 127.0.0.1:80."""
        conn = http.client.HTTPConnection(LOOPBACK, 80, timeout=5)
        try:
            conn.request("GET", path, headers={"Host": host})
            response = conn.getresponse()
            return HttpsAnswer(
                response.status,
                {k.lower(): v for k, v in response.getheaders()},
                response.read(),
            )
        finally:
            conn.close()
