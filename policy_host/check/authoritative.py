"""Do the authoritative servers of the id zone agree with the primary?

RFC 8461 section 8: a sender's resolver may ask any authoritative server of
the zone, so a secondary that lags (SOA serial behind the primary's, RFC
1982 order) or disagrees (another TXT record at a name) hands out an id
the primary no longer has. `check` and `zone --servers` ask every server
the config names (``authoritative``) directly, without recursion, for the
zone's serial and the TXT records of the names given, and compare each
with the primary's answers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from policy_host.authdns import AuthDnsError, Nameserver, configured_servers, serial_behind
from policy_host.read.config import ProviderConfig

# Names shown per server in a message (all of them are in the JSON).
SHOWN = 5
# (name -> the server's TXT values at it, None when it did not answer)
Answers = dict[str, tuple[bytes, ...] | None]


@dataclass(frozen=True)
class ServerState:
    """One server against the primary."""

    server: str
    primary: bool
    serial: int | None
    primary_serial: int | None
    # Names whose TXT records differ from the primary's.
    disagree: tuple[str, ...] = ()
    error: str | None = None

    @property
    def lags(self) -> bool:
        return (
            self.serial is not None
            and self.primary_serial is not None
            and serial_behind(self.serial, self.primary_serial)
        )

    @property
    def status(self) -> str:
        if self.error is not None:
            return "unreachable"
        if self.lags:
            return "lagging"
        return "disagrees" if self.disagree else "ok"

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def describe(self) -> str:
        if self.error is not None:
            return f"{self.server}: {self.error}"
        said = f"{self.server}: serial {self.serial}"
        if self.lags:
            said += f", behind the primary's {self.primary_serial}"
        if self.disagree:
            names = ", ".join(self.disagree[:SHOWN])
            more = f" and {len(self.disagree) - SHOWN} more" if len(self.disagree) > SHOWN else ""
            said += f"; other TXT than the primary at {names}{more}"
        return said

    def as_dict(self) -> dict[str, object]:
        return {
            "server": self.server,
            "primary": self.primary,
            "status": self.status,
            "serial": self.serial,
            "primary_serial": self.primary_serial,
            "disagree": list(self.disagree),
            "error": self.error,
        }


@dataclass(frozen=True)
class Survey:
    zone: str
    servers: tuple[ServerState, ...]
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and all(s.ok for s in self.servers)

    def as_dict(self) -> dict[str, object]:
        return {
            "zone": self.zone,
            "ok": self.ok,
            "error": self.error,
            "servers": [s.as_dict() for s in self.servers],
        }

    def lines(self) -> list[str]:
        """The text form: one line per server."""
        if self.error is not None:
            return [f"fail  authoritative servers of {self.zone}: {self.error}"]
        return [
            f"{'ok' if s.ok else 'fail':<4}  {s.status:<11}  {s.describe()}" for s in self.servers
        ]


def _answers(server: Nameserver, names: Sequence[str], jobs: int) -> Answers:
    def one(name: str) -> tuple[bytes, ...] | None:
        try:
            return tuple(sorted(server.txt(name)))
        except AuthDnsError:
            return None

    with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(names)))) as pool:
        return dict(zip(names, pool.map(one, names), strict=True))


def compare(
    servers: Sequence[Nameserver], zone: str, names: Sequence[str], *, jobs: int
) -> tuple[ServerState, ...]:
    """Each server's serial and TXT answers against ``servers[0]``'s (the
    primary)."""
    primary = servers[0]
    try:
        reference_serial: int | None = primary.serial(zone)
    except AuthDnsError as exc:
        return (ServerState(primary.label, True, None, None, error=str(exc)),)
    reference = _answers(primary, names, jobs)
    states = [ServerState(primary.label, True, reference_serial, reference_serial)]
    for server in servers[1:]:
        try:
            serial = server.serial(zone)
        except AuthDnsError as exc:
            states.append(ServerState(server.label, False, None, reference_serial, error=str(exc)))
            continue
        answers = _answers(server, names, jobs)
        differ = tuple(n for n in names if answers[n] != reference[n])
        states.append(ServerState(server.label, False, serial, reference_serial, differ))
    return tuple(states)


Finder = Callable[[str], list[Nameserver]]


def survey(config: ProviderConfig, names: Sequence[str], *, jobs: int = 16) -> Survey | None:
    """Every configured authoritative server of the id zone against the
    primary, for ``names`` (absolute); None when the config names none
    besides the primary."""
    finder = configured_servers(config)
    if finder is None:
        return None
    assert config.dns.primary is not None  # (configured_servers needs one)
    primary = Nameserver(config.dns.primary, config.dns.timeout, primary=True)
    try:
        zone = primary.apex(config.id_zone + ".")
        servers = finder(zone)
    except AuthDnsError as exc:
        return Survey(config.id_zone + ".", (), str(exc))
    return Survey(zone, compare(servers, zone, names, jobs=jobs))
