"""Serving nodes and a DNS secondary in one miniature internet.

``NodesWithSecondary`` is ``nodes.NodesInternet`` (the control node and its
serving nodes, each in a network namespace) whose knot primary NOTIFYs a
knot secondary of the provider zone (``support.secondary``), which
transfers every change (IXFR, RFC 1995). Port 53 is free in the control
node's namespace except on 127.0.0.1 (unbound), so the zone's NS set is
real: ``ns1.provider.example`` (127.0.0.2, the primary listens there on
port 53 too) and ``ns2.provider.example`` (127.0.0.3, the secondary), and
the provider config says ``authoritative: servers: ns``: `apply` confirms
every change at every address of the NS set (RFC 8461 section 8).

``arm_node_failure`` makes a node take the next push and then lose its
nginx, before `apply` fetches from it: the node goes down in the middle
of the run, after the push began.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Sequence
from pathlib import Path

import dns.message

from .dnsservers import ANSWER_TIMEOUT, KnotServer, TsigKey, Zone, _fqdn, query, soa_serial
from .nodes import RECEIVER, NodesInternet, ServingNode
from .secondary import KnotSecondary, NotifyingKnot
from .stack import PROVIDER_ZONE, Customer

__all__ = [
    "AUTHORITATIVE_WAIT",
    "NS_ADDRESSES",
    "VERIFY_TIMEOUT",
    "NodesWithSecondary",
    "arm_node_failure",
]

DNS_PORT = 53
# ns1: the primary (besides its own port on 127.0.0.1); ns2: the secondary.
NS_ADDRESSES = {"ns1": "127.0.0.2", "ns2": "127.0.0.3"}
# Seconds `apply` waits for the secondary (authoritative.wait) and for the
# nodes (apply.verify_timeout): short, so that a failure costs little.
AUTHORITATIVE_WAIT = 5
VERIFY_TIMEOUT = 5


@dataclasses.dataclass(frozen=True)
class NsZone(Zone):
    """A zone whose SOA and NS records name ``nameservers`` (in-zone names)
    instead of the harness's placeholder."""

    nameservers: tuple[str, ...] = ()

    def zone_file(self, serial: int) -> str:
        first = self.nameservers[0]
        lines = [
            f"$ORIGIN {self.origin}",
            f"$TTL {self.ttl}",
            f"@ IN SOA {first} hostmaster {serial} 3600 600 86400 0",
            *(f"@ IN NS {name}" for name in self.nameservers),
            *self.records,
        ]
        return "\n".join(lines) + "\n"


class NsPrimary(NotifyingKnot):
    """The primary: its own port on 127.0.0.1 (``dns.primary``) and port 53
    on ns1's address; NOTIFYs the secondary on ns2's address."""

    def __init__(self, zones: Sequence[Zone], key: TsigKey) -> None:
        super().__init__(zones, key, secondary_ports=[DNS_PORT])

    def _remote_lines(self) -> list[str]:
        return ["remote:", "  - id: secondary0", f"    address: {NS_ADDRESSES['ns2']}@53", ""]

    def _write_config(self) -> None:
        super()._write_config()
        text = self.conf_path.read_text()
        listen = f"    listen: {self.address}@{self.port}\n"
        assert listen in text, text
        both = f"    listen: [ {self.address}@{self.port}, {NS_ADDRESSES['ns1']}@{DNS_PORT} ]\n"
        # A journal of the changes, so that the secondary gets each one by a
        # real IXFR (RFC 1995), not the whole zone again.
        journal = "    journal-content: none\n"
        assert journal in text, text
        text = text.replace(listen, both).replace(journal, "    journal-content: changes\n")
        self.conf_path.write_text(text)


class NsSecondary(KnotSecondary):
    """``KnotSecondary`` on ns2's address, port 53."""

    address = NS_ADDRESSES["ns2"]

    def serial(self, zone: str) -> int | None:
        return soa_serial(self.port, _fqdn(zone), address=self.address, timeout=ANSWER_TIMEOUT)

    def query(self, qname: str, rdtype: str = "A") -> dns.message.Message:
        return query(
            self.port, qname, rdtype, address=self.address, recursion=False, timeout=ANSWER_TIMEOUT
        )

    def transfers(self) -> list[str]:
        """The secondary's log lines about incoming zone transfers."""
        if self._daemon is None:
            return []
        lines = self._daemon.log_path.read_text(errors="replace").splitlines()
        return [line for line in lines if "XFR, incoming" in line]


class NodesWithSecondary(NodesInternet):
    """The control node, ``names`` serving nodes and a DNS secondary."""

    def __init__(self, root: Path, customers: Sequence[Customer], names: Sequence[str]) -> None:
        super().__init__(root, customers, names)
        self.secondary: NsSecondary | None = None
        self.extra_config += f"authoritative:\n  servers: ns\n  wait: {AUTHORITATIVE_WAIT}\n"

    def zones(self) -> list[Zone]:
        provider, *customers = super().zones()
        names = tuple(f"{ns}.{PROVIDER_ZONE}." for ns in NS_ADDRESSES)
        glue = [f"{ns} A {address}" for ns, address in NS_ADDRESSES.items()]
        ns_zone = NsZone(
            provider.origin,
            (*provider.records, *glue),
            dynamic=provider.dynamic,
            ttl=provider.ttl,
            nameservers=names,
        )
        return [ns_zone, *customers]

    def primary_server(self) -> KnotServer:
        return NsPrimary(self.zones(), self.key)

    def _write_provider(self, knot_port: int) -> None:
        super()._write_provider(knot_port)
        text = self.config_path.read_text()
        assert "\napply:\n" in text
        text = text.replace("\napply:\n", f"\napply:\n  verify_timeout: {VERIFY_TIMEOUT}\n")
        self.config_path.write_text(text)

    def start(self) -> None:
        super().start()
        assert self.knot is not None
        # This thread is in the control node's namespace (MiniInternet.start).
        self.secondary = self._stack.enter_context(
            NsSecondary(self.knot.port, [PROVIDER_ZONE], port=DNS_PORT)
        )


WRAPPER = """#!/bin/sh
# The receiver, then (armed by {armed}) nginx goes down after an activation.
"{receiver}" "$@" || exit
case ${{SSH_ORIGINAL_COMMAND:-}} in
"activate "*)
    if rm "{armed}" 2>/dev/null; then
        kill -TERM "$(cat "{pidfile}")"
        # nginx removes its pid file as it exits.
        while [ -e "{pidfile}" ]; do sleep 0.02; done
    fi
    ;;
esac
"""


def arm_node_failure(node: ServingNode) -> Path:
    """Make ``node``'s next activation stop its nginx once the new release
    is in place (a node-side wrapper around the receiver, in its
    ``authorized_keys``); the file whose presence arms it, once."""
    ssh = node.workdir / "ssh"
    armed = node.workdir / "fail-after-activate"
    wrapper = ssh / "receive-then-fail"
    values = (str(RECEIVER), str(armed), str(node.nginx_dir / "nginx.pid"))
    assert all('"' not in value and "$" not in value for value in values)
    wrapper.write_text(WRAPPER.format(receiver=values[0], armed=values[1], pidfile=values[2]))
    wrapper.chmod(0o755)
    keys = ssh / "authorized_keys"
    text = keys.read_text()
    if str(wrapper) not in text:
        assert f'command="{RECEIVER} ' in text, text
        keys.write_text(
            text.replace(f'command="{RECEIVER} ', f'command="{shlex.quote(str(wrapper))} ')
        )
    armed.touch()
    return armed
