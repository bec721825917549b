"""Hosted TLS-RPT records: which ``<domain>.<tlsrpt.zone>`` TXT records
`apply` sets or deletes (pure).

A customer that points ``_smtp._tls.<domain>`` at ``<domain>.<tlsrpt.zone>``
by CNAME gets our record, ``v=TLSRPTv1; rua=<tlsrpt.rua>`` (RFC 8460
section 3). Its content is the same for every tenant, so a record changes
only when ``tlsrpt.rua`` does: then every hosted record is rewritten. A
tenant whose file is removed loses its record at once (its reports are of
no use once it is withdrawn). Unlike the id record, nothing about it is
ordered against the served policy (RFC 8461 section 8 concerns the id);
it is published in the same run, under the same lock, after the ids.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from policy_host.publish.update import TxtChange
from policy_host.read.config import ProviderConfig
from policy_host.records import tlsrpt_record_value


@dataclass(frozen=True)
class TlsrptChange:
    """Set ``domain``'s hosted TLS-RPT record to ``value``, or delete it."""

    domain: str
    name: str  # absolute: <domain>.<tlsrpt.zone>.
    value: bytes | None

    @property
    def txt(self) -> TxtChange:
        return TxtChange(self.name, self.value)

    def as_dict(self) -> dict[str, object]:
        value = self.value.decode("ascii") if self.value is not None else None
        return {"domain": self.domain, "name": self.name, "value": value}


def hosted_value(config: ProviderConfig) -> bytes | None:
    """The record every hosted tenant gets; None when we host none."""
    return tlsrpt_record_value(config.tlsrpt.rua) if config.tlsrpt.hosted else None


def plan_tlsrpt(
    config: ProviderConfig, present: Iterable[str], published: Mapping[str, bytes]
) -> tuple[TlsrptChange, ...]:
    """The hosted records to change: tenants with a file (``present``) get
    ``hosted_value``; records published for others are deleted. Without
    ``tlsrpt.zone`` there is no name to change and nothing is planned."""
    if config.tlsrpt.zone is None:
        return ()
    value = hosted_value(config)
    present = set(present)
    changes = []
    for domain in sorted(present | set(published)):
        want = value if domain in present else None
        if published.get(domain) != want:
            target = config.tlsrpt_record_target(domain)
            assert target is not None
            changes.append(TlsrptChange(domain, target + ".", want))
    return tuple(changes)
