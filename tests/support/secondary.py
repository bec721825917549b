"""A knot primary with a knot secondary on loopback, as a provider runs its id zone.

``NotifyingKnot`` is a ``KnotServer`` that sends NOTIFY (RFC 1996) for its
test zones to the secondaries' ports and lets them transfer (AXFR/IXFR,
RFC 5936 / RFC 1995). ``KnotSecondary`` is a second knotd, its own config,
port, storage and control socket, that transfers those zones from the
primary and keeps nothing on disk between starts: stopped and started
again, it fetches the zone anew. ``freeze`` keeps it answering from the
copy it has while it ignores NOTIFYs (``knotc zone-freeze``): a secondary
that lags behind.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterable, Iterator, Sequence

import dns.message

from .dnsservers import (
    ANSWER_TIMEOUT,
    START_TIMEOUT,
    DaemonInWorkdir,
    KnotServer,
    TsigKey,
    Zone,
    _fqdn,
    _quote,
    _short_tempdir,
    knot_server_lines,
    query,
    soa_serial,
)
from .procs import LOOPBACK, Daemon, DaemonError, free_port, port_open, require_binary


class NotifyingKnot(KnotServer):
    """A primary that notifies ``secondary_ports`` of changes to its test
    zones and allows loopback to transfer them."""

    def __init__(
        self,
        zones: Iterable[Zone],
        key: TsigKey | None = None,
        *,
        secondary_ports: Sequence[int],
        port: int | None = None,
    ) -> None:
        super().__init__(zones, key, port=port)
        self.secondary_ports = tuple(secondary_ports)

    def _remote_lines(self) -> list[str]:
        lines = ["remote:"]
        for index, port in enumerate(self.secondary_ports):
            lines += [f"  - id: secondary{index}", f"    address: {LOOPBACK}@{port}"]
        return [*lines, ""]

    def _acl_lines(self) -> list[str]:
        return ["  - id: harness_transfer", f"    address: {LOOPBACK}", "    action: transfer"]

    def _zone_lines(self, zone: Zone) -> list[str]:
        if zone.origin == ".":
            return super()._zone_lines(zone)
        acl = "[harness_update, harness_transfer]" if zone.dynamic else "harness_transfer"
        notify = ", ".join(f"secondary{i}" for i in range(len(self.secondary_ports)))
        return [f"    acl: {acl}", f"    notify: [{notify}]"]


class KnotSecondary(DaemonInWorkdir):
    """knotd as a secondary of ``primary_port`` for ``zones``, on ``port``."""

    address: str = LOOPBACK

    def __init__(self, primary_port: int, zones: Sequence[str], *, port: int) -> None:
        self.primary_port = primary_port
        self.zones = [_fqdn(z) for z in zones]
        self.port = port
        self.workdir = _short_tempdir("knot2-")
        self.conf_path = self.workdir / "knot.conf"
        self.socket_path = self.workdir / "run" / "knot.sock"
        self._daemon: Daemon | None = None

    def _write_config(self) -> None:
        run = self.workdir / "run"
        run.mkdir(exist_ok=True)
        # Storage starts empty on every start: the zone comes by transfer.
        shutil.rmtree(self.workdir / "db", ignore_errors=True)
        (self.workdir / "db").mkdir()
        lines = [
            *knot_server_lines(run, self.address, self.port, self.workdir / "db", self.socket_path),
            "remote:",
            "  - id: primary",
            f"    address: {LOOPBACK}@{self.primary_port}",
            "",
            "acl:",
            "  - id: from_primary",
            f"    address: {LOOPBACK}",
            "    action: notify",
            "",
            "template:",
            "  - id: default",
            "    zonefile-load: none",
            "    zonefile-sync: -1",
            "    journal-content: none",
            "",
            "zone:",
        ]
        for origin in self.zones:
            lines += [
                f"  - domain: {_quote(origin)}",
                "    master: primary",
                "    acl: from_primary",
            ]
        self.conf_path.write_text("\n".join(lines) + "\n")

    def _ready(self) -> bool:
        # Ready once every zone has arrived from the primary.
        return port_open(self.address, self.port) and all(
            self.serial(origin) == soa_serial(self.primary_port, origin) for origin in self.zones
        )

    def start(self) -> None:
        self._write_config()
        daemon = Daemon(
            [require_binary("knotd"), "-c", str(self.conf_path)],
            name="knotd-secondary",
            workdir=self.workdir,
            ready=self._ready,
            ready_timeout=START_TIMEOUT,
        )
        daemon.start()
        self._daemon = daemon

    def knotc(self, *args: str) -> str:
        if self._daemon is None:
            raise DaemonError("the secondary knotd is not running")
        argv = [require_binary("knotc"), "-c", str(self.conf_path), "-t", "5", *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        if done.returncode != 0:
            raise DaemonError(f"{' '.join(argv)} failed: {done.stdout}{done.stderr}")
        return done.stdout

    def freeze(self) -> None:
        """Keep answering from the current copy; postpone every transfer."""
        self.knotc("-b", "zone-freeze", *self.zones)

    def thaw(self) -> None:
        self.knotc("-b", "zone-thaw", *self.zones)

    def serial(self, zone: str) -> int | None:
        return soa_serial(self.port, _fqdn(zone), timeout=ANSWER_TIMEOUT)

    def query(self, qname: str, rdtype: str = "A") -> dns.message.Message:
        return query(self.port, qname, rdtype, recursion=False, timeout=ANSWER_TIMEOUT)


@contextlib.contextmanager
def primary_and_secondary(
    zones: Sequence[Zone], key: TsigKey
) -> Iterator[tuple[NotifyingKnot, KnotSecondary]]:
    """A notifying primary serving ``zones`` and a secondary of its test zones."""
    secondary_port = free_port("both")
    with NotifyingKnot(zones, key, secondary_ports=[secondary_port]) as primary:
        origins = [z.origin for z in primary.test_zones]
        with KnotSecondary(primary.port, origins, port=secondary_port) as secondary:
            yield primary, secondary


def knot_at_serial(zones: Sequence[Zone], serial: int) -> KnotServer:
    """A standalone knotd (no secondary of anything) serving ``zones`` from
    SOA ``serial`` on: a server that claims the primary's version of a zone
    with other contents."""
    server = KnotServer(zones)
    server._serials.update({zone.origin: serial for zone in server.test_zones})
    return server
