"""Pebble, Let's Encrypt's ACME test server, from Debian's package.

Debian ships no certificate for pebble's own HTTPS listener, so one is made
here with a throw-away CA (``tls_ca``: give it to certbot as
REQUESTS_CA_BUNDLE). Pebble makes a new root CA for the certificates it
issues at every start: ``issuing_root()`` fetches it from the management
port. Validation is real: pebble resolves names through ``dns_server`` and
fetches HTTP-01 challenges from port ``http_port`` of the address found.
"""

from __future__ import annotations

import json
import os
import ssl
import tempfile
import urllib.request
from pathlib import Path

from .procs import LOOPBACK, Daemon, Managed, port_open, require_binary
from .tls import make_ca

__all__ = ["Pebble"]


class Pebble(Managed):
    def __init__(
        self,
        *,
        dns_server: str,
        http_port: int = 80,
        port: int = 14000,
        management_port: int = 15000,
        workdir: Path | None = None,
        address: str = LOOPBACK,
    ) -> None:
        self.dns_server = dns_server
        self.http_port = http_port
        self.address = address
        self.port = port
        self.management_port = management_port
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="pebble-"))
        self.tls_ca = self.workdir / "tls" / "ca.pem"
        self._daemon: Daemon | None = None

    @property
    def directory_url(self) -> str:
        return f"https://{self.address}:{self.port}/dir"

    def _context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.tls_ca))

    def _ready(self) -> bool:
        if not (
            port_open(self.address, self.port) and port_open(self.address, self.management_port)
        ):
            return False
        with urllib.request.urlopen(self.directory_url, timeout=2, context=self._context()) as r:
            return bool(r.status == 200)

    def start(self) -> None:
        pebble = require_binary("pebble")
        ca = make_ca(self.workdir / "tls", "pebble listener CA")
        chain, key = ca.issue("listener", [self.address, "localhost"])
        config = self.workdir / "pebble-config.json"
        config.write_text(
            json.dumps(
                {
                    "pebble": {
                        "listenAddress": f"{self.address}:{self.port}",
                        "managementListenAddress": f"{self.address}:{self.management_port}",
                        "certificate": str(chain),
                        "privateKey": str(key),
                        "httpPort": self.http_port,
                        "tlsPort": 443,
                        "ocspResponderURL": "",
                        "externalAccountBindingRequired": False,
                    }
                }
            )
        )
        env = dict(os.environ)
        # Validate at once; never reject a good nonce (certbot would retry,
        # but slowly); always run the real HTTP-01 validation.
        env.update(PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0", PEBBLE_VA_ALWAYS_VALID="0")
        self._daemon = Daemon(
            [pebble, "-config", str(config), "-dnsserver", self.dns_server],
            name="pebble",
            workdir=self.workdir,
            env=env,
            ready=self._ready,
            ready_timeout=15.0,
        )
        self._daemon.start()

    @property
    def daemon(self) -> Daemon:
        assert self._daemon is not None, "pebble is not running"
        return self._daemon

    def issuing_root(self) -> Path:
        """Pebble's root CA of this run (PEM file), to trust issued certificates."""
        url = f"https://{self.address}:{self.management_port}/roots/0"
        with urllib.request.urlopen(url, timeout=5, context=self._context()) as response:
            pem = response.read()
        path = self.workdir / "issuing-root.pem"
        path.write_bytes(pem)
        return path

    def stop(self) -> None:
        if self._daemon is not None:
            self._daemon.stop()
            self._daemon = None

    def cleanup(self) -> None:
        self.stop()
