"""Real DNS servers on loopback for tests: knotd (authoritative) and unbound.

``KnotServer`` serves test zones (and a minimal root zone, so that names
outside the test zones get a fast, authoritative NXDOMAIN) from a temporary
directory; zones marked ``dynamic`` accept RFC 2136 updates signed with the
run's ``TsigKey``. ``UnboundResolver`` is a recursive resolver with caching
effectively off that sends every query to that knotd, so it follows CNAME
chains across zones the way a real sender's resolver does.

Nothing here touches the system services, their config files or their
ports: every instance has its own config, port, pid file, storage and
control socket, and is stopped by its PID.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Self

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.tsig
import dns.update

from .procs import (
    LOOPBACK,
    Daemon,
    DaemonError,
    Managed,
    free_port,
    port_open,
    require_binary,
    wait_until,
)

__all__ = [
    "DnsWorld",
    "KnotServer",
    "TsigKey",
    "UnboundResolver",
    "Zone",
    "query",
    "soa_serial",
    "start_dns",
    "wait_for_answer",
]

#: Seconds any single DNS probe may take.
PROBE_TIMEOUT = 0.5
#: Seconds a readiness probe may take (loopback answers take well under 1 ms;
#: a UDP query sent while the server is still starting is simply lost).
READY_PROBE_TIMEOUT = 0.1
#: Seconds a query a test asserts on may take: loopback answers take well
#: under 1 ms, but a loaded machine has delayed one past half a second.
ANSWER_TIMEOUT = 2.0
#: Seconds a server may take to start (or to show a reloaded zone).
START_TIMEOUT = 10.0
#: Control socket paths must fit in sockaddr_un (108 bytes).
_MAX_SOCKET_PATH = 100
#: Name server the generated zones point their NS records at (never resolved).
HARNESS_NS = "ns.dns-harness.invalid."


def _fqdn(name: str) -> str:
    """``name`` as absolute text with one trailing dot ('.' for the root)."""
    return dns.name.from_text(name).to_text()


def _short_tempdir(prefix: str) -> Path:
    """A new temp dir whose paths stay short enough for a UNIX socket."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if len(str(path)) > _MAX_SOCKET_PATH - 30:
        shutil.rmtree(path, ignore_errors=True)
        path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    return path


def _quote(value: str | Path) -> str:
    """A double-quoted string for knot's YAML-like and unbound's config files."""
    text = str(value)
    if '"' in text or "\n" in text:
        raise ValueError(f"cannot quote {text!r} for a config file")
    return f'"{text}"'


def knot_server_lines(
    run: Path, address: str, port: int, storage: Path, control: Path
) -> list[str]:
    """The server, log, database and control sections every knotd of the
    tests starts with (one worker each: the tests' loads are tiny)."""
    return [
        "server:",
        f"    rundir: {_quote(run)}",
        f"    pidfile: {_quote(run / 'knot.pid')}",
        f"    listen: {address}@{port}",
        "    udp-workers: 1",
        "    tcp-workers: 1",
        "    background-workers: 1",
        "",
        "log:",
        "  - target: stderr",
        "    any: info",
        "",
        "database:",
        f"    storage: {_quote(storage)}",
        "",
        "control:",
        f"    listen: {_quote(control)}",
        "    timeout: 5",
        "",
    ]


# --------------------------------------------------------------------------
# Zones and keys
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Zone:
    """One zone served by ``KnotServer``.

    ``records`` are zone-file lines relative to ``origin`` (``$ORIGIN`` and a
    default ``$TTL`` are set), e.g. ``'_mta-sts 300 IN TXT "v=STSv1; id=1;"'``
    or ``'mta-sts CNAME mta-sts.provider.example.'``. The harness adds the
    apex SOA (serial managed by the server) and an NS record itself: do not
    put an SOA in ``records``. ``dynamic`` zones accept RFC 2136 updates
    signed with the server's TSIG key; other zones refuse all updates.
    """

    origin: str
    records: Sequence[str] = ()
    dynamic: bool = False
    ttl: int = 60

    def __post_init__(self) -> None:
        object.__setattr__(self, "origin", _fqdn(self.origin))
        object.__setattr__(self, "records", tuple(self.records))

    @property
    def name(self) -> dns.name.Name:
        return dns.name.from_text(self.origin)

    def with_records(self, *records: str) -> Zone:
        """A copy of this zone with ``records`` instead of the current ones."""
        return dataclasses.replace(self, records=tuple(records))

    def zone_file(self, serial: int) -> str:
        """The zone file text for this zone at SOA ``serial``."""
        hostmaster = "hostmaster.dns-harness.invalid."
        lines = [
            f"$ORIGIN {self.origin}",
            f"$TTL {self.ttl}",
            f"@ IN SOA {HARNESS_NS} {hostmaster} {serial} 3600 600 86400 0",
            f"@ IN NS {HARNESS_NS}",
            *self.records,
        ]
        return "\n".join(lines) + "\n"


def _random_secret() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode("ascii")


@dataclasses.dataclass(frozen=True)
class TsigKey:
    """A TSIG key; the secret is random for every run unless given."""

    name: str = "policy-host-test-key."
    algorithm: str = "hmac-sha256"
    secret: str = dataclasses.field(default_factory=_random_secret, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", _fqdn(self.name))
        base64.b64decode(self.secret, validate=True)  # fail early on a bad secret

    @classmethod
    def generate(cls, name: str = "policy-host-test-key.", algorithm: str = "hmac-sha256") -> Self:
        return cls(name=name, algorithm=algorithm)

    def knot_config(self) -> str:
        """The key as a knot ``key:`` section (what ``keymgr -t`` prints)."""
        return (
            "key:\n"
            f"  - id: {self.name}\n"
            f"    algorithm: {self.algorithm}\n"
            f"    secret: {self.secret}\n"
        )

    def write_knot_keyfile(self, path: Path) -> Path:
        """Write ``knot_config()`` to ``path`` (mode 0600) and return it."""
        path.write_text(self.knot_config())
        path.chmod(0o600)
        return path

    def tsig_key(self) -> dns.tsig.Key:
        """The key for dnspython (``Message.use_tsig`` / ``UpdateMessage``)."""
        return dns.tsig.Key(self.name, self.secret, self.algorithm)  # type: ignore[no-untyped-call]

    def keyring(self) -> dict[dns.name.Name, dns.tsig.Key]:
        """A dnspython keyring holding just this key."""
        key = self.tsig_key()
        return {key.name: key}

    def knsupdate_arg(self) -> str:
        """The ``-y`` argument for knsupdate/nsupdate: ``alg:name:secret``."""
        return f"{self.algorithm}:{self.name}:{self.secret}"

    def update(self, zone: str) -> dns.update.UpdateMessage:
        """A new, empty RFC 2136 update for ``zone`` signed with this key."""
        return dns.update.UpdateMessage(zone, keyring=self.tsig_key())


# --------------------------------------------------------------------------
# Probing
# --------------------------------------------------------------------------


def query(
    port: int,
    qname: str,
    rdtype: str | dns.rdatatype.RdataType = "A",
    *,
    address: str = LOOPBACK,
    timeout: float = PROBE_TIMEOUT,
    recursion: bool = True,
) -> dns.message.Message:
    """Send one query over UDP (TCP if truncated) and return the response."""
    msg = dns.message.make_query(qname, rdtype)
    if not recursion:
        msg.flags &= ~dns.flags.RD
    response = dns.query.udp(msg, address, timeout=timeout, port=port)
    if response.flags & dns.flags.TC:
        response = dns.query.tcp(msg, address, timeout=timeout, port=port)
    return response


def soa_serial(
    port: int, zone: str, *, address: str = LOOPBACK, timeout: float = PROBE_TIMEOUT
) -> int | None:
    """The SOA serial ``zone`` has at ``address:port``, or None if no answer."""
    try:
        response = query(port, zone, "SOA", address=address, timeout=timeout)
    except (dns.exception.DNSException, OSError):
        return None
    if response.rcode() != dns.rcode.NOERROR:
        return None
    name = dns.name.from_text(zone)
    for rrset in response.answer:
        if rrset.name == name and rrset.rdtype == dns.rdatatype.SOA:
            serial: int = rrset[0].serial
            return serial
    return None


# --------------------------------------------------------------------------
# knotd
# --------------------------------------------------------------------------


ROOT_ZONE = Zone(".", (f"{HARNESS_NS} A 127.0.0.1",))  # glue for the NS


class DaemonInWorkdir(Managed):
    """A server run as one ``Daemon`` from a folder of its own (``workdir``):
    ``stop`` ends the process and keeps the folder (a restart reuses it),
    ``cleanup`` removes both."""

    workdir: Path
    _daemon: Daemon | None

    def stop(self) -> None:
        if self._daemon is not None:
            self._daemon.stop()
            self._daemon = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


class KnotServer(DaemonInWorkdir):
    """An authoritative knotd on 127.0.0.1 serving ``zones``; a context manager.

    A minimal root zone is added unless ``zones`` has one, so that every
    name outside the test zones gets an authoritative NXDOMAIN.
    """

    address: str = LOOPBACK

    def __init__(
        self,
        zones: Iterable[Zone],
        key: TsigKey | None = None,
        *,
        port: int | None = None,
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        self.key = key if key is not None else TsigKey.generate()
        self._fixed_port = port
        self.port = port if port is not None else 0
        self.start_timeout = start_timeout
        self.zones: dict[str, Zone] = {}
        self._serials: dict[str, int] = {}
        self._set_zone_dict(zones)
        self.workdir = _short_tempdir("knotd-")
        self.conf_path = self.workdir / "knot.conf"
        self.key_path = self.workdir / "tsig.key"
        self.zone_dir = self.workdir / "zones"
        self.socket_path = self.workdir / "run" / "knot.sock"
        self._daemon: Daemon | None = None
        self._knotd = ""
        self._knotc = ""

    # -- files -------------------------------------------------------------

    def _set_zone_dict(self, zones: Iterable[Zone]) -> None:
        new: dict[str, Zone] = {}
        for zone in zones:
            if zone.origin in new:
                raise ValueError(f"zone {zone.origin} given twice")
            new[zone.origin] = zone
        new.setdefault(ROOT_ZONE.origin, ROOT_ZONE)
        self.zones = new

    @property
    def test_zones(self) -> list[Zone]:
        """The zones given by the caller (without the automatic root zone)."""
        return [z for z in self.zones.values() if z is not ROOT_ZONE]

    def zone_path(self, origin: str) -> Path:
        origin = _fqdn(origin)
        stem = "root" if origin == "." else origin.rstrip(".")
        return self.zone_dir / f"{stem}.zone"

    def _write_config(self) -> None:
        run = self.workdir / "run"
        run.mkdir(exist_ok=True)
        (self.workdir / "db").mkdir(exist_ok=True)
        self.zone_dir.mkdir(exist_ok=True)
        self.key.write_knot_keyfile(self.key_path)
        lines = [
            *knot_server_lines(run, self.address, self.port, self.workdir / "db", self.socket_path),
            f"include: {_quote(self.key_path)}",
            "",
            *self._remote_lines(),
            "acl:",
            "  - id: harness_update",
            f"    key: {self.key.name}",
            "    action: update",
            *self._acl_lines(),
            "",
            "template:",
            "  - id: default",
            # The zone file is the whole truth on every (re)load; updates live
            # in memory only and are never written back to it.
            "    zonefile-load: whole",
            "    zonefile-sync: -1",
            "    journal-content: none",
            "    serial-policy: increment",
            "",
            "zone:",
        ]
        for zone in self.zones.values():
            lines.append(f"  - domain: {_quote(zone.origin)}")
            lines.append(f"    file: {_quote(self.zone_path(zone.origin))}")
            lines.extend(self._zone_lines(zone))
        tmp = self.conf_path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, self.conf_path)

    # Hooks for a primary with secondaries (``support.secondary``).

    def _remote_lines(self) -> list[str]:
        """knot ``remote:`` entries (a section, or nothing)."""
        return []

    def _acl_lines(self) -> list[str]:
        """More ``acl:`` entries after the update one."""
        return []

    def _zone_lines(self, zone: Zone) -> list[str]:
        """Settings of ``zone``'s entry in the ``zone:`` section."""
        return ["    acl: harness_update"] if zone.dynamic else []

    def _write_zone(self, zone: Zone, serial: int) -> None:
        path = self.zone_path(zone.origin)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(zone.zone_file(serial))
        os.replace(tmp, path)
        self._serials[zone.origin] = serial

    # -- lifecycle ---------------------------------------------------------

    @property
    def daemon(self) -> Daemon:
        if self._daemon is None:
            raise DaemonError("knotd is not running")
        return self._daemon

    def _ready(self) -> bool:
        # A TCP connect fails at once while knotd is not listening yet; a UDP
        # probe sent then would only time out.
        return port_open(self.address, self.port) and all(
            soa_serial(self.port, origin, timeout=READY_PROBE_TIMEOUT) == self._serials[origin]
            for origin in self.zones
        )

    def start(self) -> None:
        self._knotd = require_binary("knotd")
        self._knotc = require_binary("knotc")
        attempts = 1 if self._fixed_port is not None else 3
        for attempt in range(attempts):
            if self._fixed_port is None:
                self.port = free_port("both")
            self._write_config()
            for zone in self.zones.values():
                self._write_zone(zone, self._serials.get(zone.origin, 1))
            daemon = Daemon(
                [self._knotd, "-c", str(self.conf_path)],
                name="knotd",
                workdir=self.workdir,
                ready=self._ready,
                ready_timeout=self.start_timeout,
            )
            try:
                daemon.start()
            except DaemonError:
                # Most likely someone took the port in between; try another.
                if attempt + 1 == attempts:
                    raise
                continue
            self._daemon = daemon
            return

    # -- control -----------------------------------------------------------

    def knotc(self, *args: str, timeout: float = 10.0) -> str:
        """Run ``knotc -c <our conf> ARGS`` and return its output."""
        self.daemon.check_alive()
        argv = [self._knotc, "-c", str(self.conf_path), "-t", "5", *args]
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise DaemonError(f"{' '.join(argv)} timed out after {timeout}s") from exc
        output = done.stdout + done.stderr
        if done.returncode != 0:
            raise DaemonError(
                f"{' '.join(argv)} failed ({done.returncode}): {output.strip()}\n"
                f"--- knotd log ---\n{self.daemon.log_tail()}"
            )
        return output

    def serial(self, zone: str) -> int | None:
        """The SOA serial knotd serves for ``zone`` now (None if it does not)."""
        return soa_serial(self.port, _fqdn(zone), timeout=ANSWER_TIMEOUT)

    def set_zones(self, zones: Iterable[Zone]) -> None:
        """Replace the served zones with ``zones`` and wait until knotd serves them.

        Every zone gets a serial above the one knotd serves now (dynamic
        updates bump it), the zone files are rewritten and reloaded; the
        zone files are the whole truth, so earlier dynamic updates are gone.
        Zones can be added or removed (the config is reloaded then).
        """
        old = self.zones
        self._set_zone_dict(zones)
        for zone in self.zones.values():
            live = self.serial(zone.origin) or 0
            serial = max(live, self._serials.get(zone.origin, 0)) + 1
            self._write_zone(zone, serial)
        if {(z.origin, z.dynamic) for z in old.values()} != {
            (z.origin, z.dynamic) for z in self.zones.values()
        }:
            self._write_config()
            self.knotc("reload")
        self.knotc("-b", "zone-reload", *self.zones)
        self._wait_for_serials()

    def reload_zones(self, zones: Iterable[Zone]) -> None:
        """Alias of ``set_zones``."""
        self.set_zones(zones)

    def replace_zone(self, zone: Zone) -> None:
        """Replace (or add) one zone, keeping the others as they are."""
        zones = dict(self.zones)
        zones[zone.origin] = zone
        self.set_zones(zones.values())

    def _wait_for_serials(self) -> None:
        try:
            wait_until(
                lambda: self.daemon.running() and self._ready(),
                self.start_timeout,
                what="knotd to serve the new zone serials",
            )
        except TimeoutError as exc:
            raise DaemonError(f"{exc}\n--- knotd log ---\n{self.daemon.log_tail()}") from exc

    # -- queries -----------------------------------------------------------

    def query(self, qname: str, rdtype: str | dns.rdatatype.RdataType = "A") -> dns.message.Message:
        """Ask knotd directly (no recursion, CNAMEs into other zones not followed)."""
        return query(self.port, qname, rdtype, recursion=False, timeout=ANSWER_TIMEOUT)

    def send_update(
        self, update: dns.update.UpdateMessage, timeout: float = 2.0
    ) -> dns.message.Message:
        """Send an RFC 2136 update to knotd over TCP and return the response.

        TSIG errors in the response (e.g. an unknown key) raise
        ``dns.tsig.PeerError`` subclasses, as dnspython does.
        """
        return dns.query.tcp(update, self.address, timeout=timeout, port=self.port)

    def update(self, zone: str) -> dns.update.UpdateMessage:
        """A new, empty update for ``zone`` signed with this server's key."""
        return self.key.update(zone)


# --------------------------------------------------------------------------
# unbound
# --------------------------------------------------------------------------


class UnboundResolver(DaemonInWorkdir):
    """A recursive unbound on 127.0.0.1 that asks ``knot`` for every name.

    Caching is effectively off (TTLs capped at 0, no prefetch, no serving
    of expired data), so a change made in knot is seen by the next query.
    DNSSEC validation is off (iterator module only, no trust anchor).
    """

    address: str = LOOPBACK

    def __init__(
        self,
        knot: KnotServer,
        *,
        port: int | None = None,
        start_timeout: float = START_TIMEOUT,
        verbosity: int = 1,
    ) -> None:
        self.knot = knot
        self._fixed_port = port
        self.port = port if port is not None else 0
        self.start_timeout = start_timeout
        self.verbosity = verbosity
        self.workdir = _short_tempdir("unbound-")
        self.conf_path = self.workdir / "unbound.conf"
        self._daemon: Daemon | None = None

    def _write_config(self) -> None:
        upstream = f"{self.knot.address}@{self.knot.port}"
        lines = [
            "server:",
            f"    verbosity: {self.verbosity}",
            "    use-syslog: no",
            '    logfile: ""',
            "    log-time-ascii: yes",
            "    do-daemonize: no",
            '    username: ""',
            '    chroot: ""',
            f"    directory: {_quote(self.workdir)}",
            f"    pidfile: {_quote(self.workdir / 'unbound.pid')}",
            f"    interface: {self.address}",
            f"    port: {self.port}",
            "    do-ip4: yes",
            "    do-ip6: no",
            "    do-udp: yes",
            "    do-tcp: yes",
            "    num-threads: 1",
            "    so-reuseport: no",
            "    outgoing-range: 64",
            "    num-queries-per-thread: 32",
            "    access-control: 127.0.0.0/8 allow",
            # Our authoritative server is on loopback.
            "    do-not-query-localhost: no",
            # No validator, so no trust anchor and no unbound-anchor.
            '    module-config: "iterator"',
            "    qname-minimisation: no",
            "    aggressive-nsec: no",
            # Caching off, in effect.
            "    cache-min-ttl: 0",
            "    cache-max-ttl: 0",
            "    cache-max-negative-ttl: 0",
            "    prefetch: no",
            "    prefetch-key: no",
            "    serve-expired: no",
            "    msg-cache-size: 64k",
            "    rrset-cache-size: 64k",
            "    key-cache-size: 64k",
            "    neg-cache-size: 64k",
            # Do not hold knotd as "down" for long after a hiccup.
            "    infra-host-ttl: 1",
            "    infra-keep-probing: yes",
            "    hide-identity: yes",
            "    hide-version: yes",
            "",
            "remote-control:",
            "    control-enable: no",
            "",
        ]
        # knotd serves a root zone, so one stub for "." sends every name to
        # it: names outside the test zones get NXDOMAIN at once, and zones
        # added later by set_zones() need no change here. No stub per test
        # zone, on purpose: after such a zone is removed, knotd answers for
        # it from the root zone, unbound drops that SOA as out of bailiwick
        # and caches the SOA-less NXDOMAIN for seconds despite the settings
        # above.
        lines += [
            "stub-zone:",
            '    name: "."',
            f"    stub-addr: {upstream}",
            "",
        ]
        self.conf_path.write_text("\n".join(lines))

    def _ready(self) -> bool:
        return port_open(self.address, self.port) and all(
            soa_serial(self.port, origin, timeout=READY_PROBE_TIMEOUT) is not None
            for origin in self.knot.zones
        )

    @property
    def daemon(self) -> Daemon:
        if self._daemon is None:
            raise DaemonError("unbound is not running")
        return self._daemon

    def start(self) -> None:
        unbound = require_binary("unbound")
        attempts = 1 if self._fixed_port is not None else 3
        for attempt in range(attempts):
            if self._fixed_port is None:
                self.port = free_port("both")
            self._write_config()
            daemon = Daemon(
                [unbound, "-d", "-c", str(self.conf_path)],
                name="unbound",
                workdir=self.workdir,
                ready=self._ready,
                ready_timeout=self.start_timeout,
            )
            try:
                daemon.start()
            except DaemonError:
                if attempt + 1 == attempts:
                    raise
                continue
            self._daemon = daemon
            return

    def resolver(self, timeout: float = 2.0) -> dns.resolver.Resolver:
        """A dnspython resolver that uses only this unbound (no /etc/resolv.conf)."""
        res = dns.resolver.Resolver(configure=False)
        res.nameservers = [self.address]
        res.port = self.port
        res.timeout = timeout
        res.lifetime = timeout
        res.cache = None
        return res

    def query(self, qname: str, rdtype: str | dns.rdatatype.RdataType = "A") -> dns.message.Message:
        """Send one recursive query to unbound and return the raw response."""
        return query(self.port, qname, rdtype, timeout=ANSWER_TIMEOUT)


# --------------------------------------------------------------------------
# Both together
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DnsWorld:
    """A running knotd, the unbound in front of it, and the update key."""

    knot: KnotServer
    unbound: UnboundResolver
    key: TsigKey

    def resolver(self, timeout: float = 2.0) -> dns.resolver.Resolver:
        """A dnspython resolver that asks only the unbound."""
        return self.unbound.resolver(timeout)

    def set_zones(self, zones: Iterable[Zone]) -> None:
        """Replace knotd's zones (see ``KnotServer.set_zones``)."""
        self.knot.set_zones(zones)


@contextlib.contextmanager
def start_dns(
    zones: Iterable[Zone], key: TsigKey | None = None
) -> Iterator[tuple[KnotServer, UnboundResolver]]:
    """Start knotd serving ``zones`` and an unbound in front of it; stop both after."""
    with KnotServer(zones, key) as knot, UnboundResolver(knot) as unbound:
        yield knot, unbound


def wait_for_answer(
    resolver: UnboundResolver,
    qname: str,
    rdtype: str,
    expected: str,
    timeout: float = 5.0,
) -> None:
    """Wait until ``resolver`` returns an answer whose text contains ``expected``."""

    def seen() -> bool:
        try:
            response = resolver.query(qname, rdtype)
        except (dns.exception.DNSException, OSError):
            return False
        return any(expected in rrset.to_text() for rrset in response.answer)

    wait_until(seen, timeout, what=f"{qname} {rdtype} to contain {expected!r}")
