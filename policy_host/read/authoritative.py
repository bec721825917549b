"""The provider's ``authoritative:`` section: where `apply` confirms a change.

RFC 8461 section 8 counts a change as done only when every authoritative
server of the id zone answers the new TXT record, not just the primary that
took the UPDATE. The servers are the zone's NS set (``servers: ns``,
resolved to addresses when `apply` runs) or a list of addresses; without
the section only the primary is asked. Secondaries pick a change up by
NOTIFY and IXFR/AXFR (RFC 1996, RFC 1995); ``wait`` bounds how long `apply`
waits for them.

    authoritative:
      servers: [192.0.2.53, "198.51.100.7:5353"]   # or: servers: ns
      wait: 60
"""

from __future__ import annotations

from dataclasses import dataclass

from policy_host.model import InvalidValue
from policy_host.read.schema import Fields

KEYS = ("servers", "wait")
# The word that makes `servers` the zone's NS set.
NS_SET = "ns"
DEFAULT_WAIT = 60
WAIT_RANGE = (1, 3600)


@dataclass(frozen=True)
class AuthoritativeSettings:
    # Addresses (host, port) of the servers to confirm at besides the primary.
    servers: tuple[tuple[str, int], ...] = ()
    # Confirm at every address of every name in the zone's NS set.
    from_ns: bool = False
    # Seconds to wait for every server to show a change after the primary does.
    wait: float = float(DEFAULT_WAIT)

    @property
    def configured(self) -> bool:
        """Is anything asked besides the primary?"""
        return self.from_ns or bool(self.servers)


def read_settings(fields: Fields | None) -> AuthoritativeSettings | None:
    """The section's settings (defaults for the keys not given); None when
    the section is not a mapping (the error is in ``fields.problems``)."""
    from policy_host.read.values import parse_server

    if fields is None:
        return None
    servers: list[tuple[str, int]] = []
    from_ns = False
    for text, line in fields.text_list("servers", allow_single=True) or []:
        if text.lower() == NS_SET:
            from_ns = True
            continue
        try:
            servers.append(parse_server(text))
        except InvalidValue as exc:
            fields.error(line, f"{fields.prefix}servers: {exc} (or '{NS_SET}' for the NS set)")
    if from_ns and servers:
        fields.error(
            fields.line("servers"),
            f"{fields.prefix}servers: either '{NS_SET}' or a list of addresses, not both",
        )
    wait = fields.integer("wait")
    low, high = WAIT_RANGE
    if wait is not None and not low <= wait <= high:
        fields.error(fields.line("wait"), f"{fields.prefix}wait: expected {low}..{high} seconds")
        wait = None
    return AuthoritativeSettings(
        servers=tuple(dict.fromkeys(servers)),
        from_ns=from_ns,
        wait=float(wait if wait is not None else DEFAULT_WAIT),
    )
