"""After the primary shows a change: wait until every authoritative server does.

RFC 8461 section 8: a change is done only when every authoritative server
of the zone answers the new TXT records; until then a sender's resolver may
reach a secondary that still has the old id. Secondaries get the change by
NOTIFY and IXFR/AXFR (RFC 1996, RFC 1995), a little later than the primary.
Each server is asked directly (no recursion) for the zone's SOA serial and
every changed name, until its serial has reached the primary's (RFC 1982
order) and every name shows the change, or ``authoritative.wait`` runs out.
Each server's delay is counted from the moment the UPDATE was sent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from policy_host.authdns import AuthDnsError, serial_behind
from policy_host.publish.steps import POLL_INTERVAL
from policy_host.publish.update import shows

log = logging.getLogger(__name__)

# (servers showing the change, servers asked)
ProgressFn = Callable[[int, int], None]


class Authority(Protocol):
    """One authoritative server (``authdns.Nameserver``, or a fake)."""

    @property
    def label(self) -> str: ...

    def serial(self, zone: str) -> int: ...

    def txt(self, name: str) -> list[bytes]: ...


@dataclass(frozen=True)
class Arrival:
    """Whether (and when) one server showed a change."""

    server: str
    zone: str
    serial: int | None
    # Seconds from the UPDATE until the server showed every change; None:
    # it had not when the wait ran out.
    delay: float | None
    # What it answered instead (None once it showed the change).
    problem: str | None = None
    primary_serial: int | None = None
    # Which records: the ids (``confirm``) or the hosted TLS-RPT ones (``tlsrpt``).
    step: str = ""

    @property
    def caught_up(self) -> bool:
        return self.delay is not None

    def as_dict(self) -> dict[str, object]:
        return {
            "server": self.server,
            "zone": self.zone,
            "step": self.step,
            "serial": self.serial,
            "primary_serial": self.primary_serial,
            "confirmed": self.caught_up,
            "delay_seconds": round(self.delay, 3) if self.delay is not None else None,
            "problem": self.problem,
        }

    def describe(self) -> str:
        if self.delay is not None:
            return f"{self.server}: serial {self.serial}, after {self.delay:.2f} s"
        return f"{self.server}: {self.problem}"


def _look(
    server: Authority, zone: str, target: int, wanted: Mapping[str, bytes | None]
) -> tuple[int | None, str | None]:
    """(the server's serial, what keeps it from counting; None: it shows all)."""
    try:
        serial = server.serial(zone)
    except AuthDnsError as exc:
        return None, str(exc)
    if serial_behind(serial, target):
        return serial, f"serial {serial} is behind the primary's {target}"
    for name, value in wanted.items():
        try:
            values = server.txt(name)
        except AuthDnsError as exc:
            return serial, str(exc)
        if not shows(values, value):
            seen = b" | ".join(values).decode("ascii", "replace") or "no TXT record"
            expected = value.decode("ascii") if value is not None else "no TXT record"
            return serial, f"serial {serial} answers {seen!r} for {name}, not {expected!r}"
    return serial, None


def await_propagation(
    servers: Sequence[Authority],
    zone: str,
    wanted: Mapping[str, bytes | None],
    *,
    sent: float,
    wait: float,
    sleep: Callable[[float], None],
    progress: ProgressFn,
) -> list[Arrival]:
    """Poll every server (``servers[0]`` is the primary, which already
    shows the change) until each shows ``wanted`` (name -> value, None for
    deleted) at a serial not behind the primary's, or ``wait`` seconds have
    passed; ``sent`` is the ``time.monotonic()`` of the UPDATE."""
    primary = servers[0]
    try:
        target = primary.serial(zone)
    except AuthDnsError as exc:
        return [Arrival(primary.label, zone, None, None, str(exc))]
    seen: dict[int, Arrival] = {}
    last: dict[int, tuple[int | None, str]] = {}
    deadline = time.monotonic() + wait
    while True:
        for index, server in enumerate(servers):
            if index in seen:
                continue
            serial, problem = _look(server, zone, target, wanted)
            if problem is None:
                delay = time.monotonic() - sent
                seen[index] = Arrival(server.label, zone, serial, delay, None, target)
                log.info("%s has the change (serial %s) after %.2f s", server.label, serial, delay)
            else:
                last[index] = (serial, problem)
        progress(len(seen), len(servers))
        if len(seen) == len(servers) or time.monotonic() >= deadline:
            break
        sleep(POLL_INTERVAL)
    arrivals = []
    for index, server in enumerate(servers):
        if index in seen:
            arrivals.append(seen[index])
        else:
            serial, problem = last[index]
            log.warning("%s does not show the change after %g s: %s", server.label, wait, problem)
            arrivals.append(Arrival(server.label, zone, serial, None, problem, target))
    return arrivals


def lag_message(arrivals: Sequence[Arrival], wait: float) -> str | None:
    """The failure to report when some server did not catch up (None: all did)."""
    behind = [a for a in arrivals if not a.caught_up]
    if not behind:
        return None
    said = "; ".join(a.describe() for a in behind)
    return (
        f"not every authoritative server of {arrivals[0].zone} shows the change after "
        f"{wait:g} s: {said}. The primary has it; it is not recorded as confirmed until "
        "every server shows it (run apply again once they catch up: the same ids are "
        "confirmed, none is replaced)"
    )
