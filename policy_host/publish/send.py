"""`apply`'s publish steps: the TSIG-signed RFC 2136 UPDATEs, in batches.

Only once every place a sender can fetch from serves the new policies
(RFC 8461 section 8) are the new ids sent to the primary; the hosted
TLS-RPT records (``tlsrpt``) follow by the same path, then are confirmed
like the ids (``confirm``). ``--dry-run`` shows the same UPDATEs as text.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import TypeVar

import dns.update

from policy_host.publish.confirm import confirm_authorities, confirm_txt
from policy_host.publish.environment import Environment, UpdateClient
from policy_host.publish.plan import Change
from policy_host.publish.propagation import Arrival
from policy_host.publish.steps import PUBLISH, TLSRPT, ApplyError
from policy_host.publish.tlsrpt import TlsrptChange
from policy_host.publish.update import (
    PublishError,
    TxtChange,
    build_update,
    record_name,
    update_text,
)
from policy_host.read.config import ProviderConfig

# TXT changes per UPDATE message: well inside the 64 KiB DNS message limit.
BATCH_SIZE = 200

T = TypeVar("T")


def _batches(items: Sequence[T]) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), BATCH_SIZE):
        yield items[start : start + BATCH_SIZE]


def id_updates(
    config: ProviderConfig, client: UpdateClient, zone: str, changes: Sequence[Change]
) -> Iterator[tuple[Sequence[Change], dns.update.UpdateMessage]]:
    """One UPDATE per batch of changed ids, with the batch it carries."""
    for batch in _batches(changes):
        txt = [TxtChange(record_name(config, c.domain), c.txt) for c in batch]
        yield batch, build_update(zone, txt, config.dns.txt_ttl, client.key)


def tlsrpt_updates(
    config: ProviderConfig, client: UpdateClient, zone: str, changes: Sequence[TlsrptChange]
) -> Iterator[dns.update.UpdateMessage]:
    """One UPDATE per batch of hosted TLS-RPT record changes."""
    for batch in _batches(changes):
        yield build_update(zone, [c.txt for c in batch], config.dns.txt_ttl, client.key)


def shown(client: UpdateClient, update: dns.update.UpdateMessage) -> str:
    """The UPDATE as nsupdate would read it (the report's ``dns_updates``)."""
    return update_text(update, client.server, client.key)


def assumed_zone(client: UpdateClient, name: str, notes: list[str]) -> str:
    """``--dry-run``: the zone of ``name``, or ``name`` itself (noted) when
    the primary cannot be asked."""
    try:
        return client.zone_for(name + ".")
    except PublishError as exc:
        zone = name + "."
        notes.append(f"the zone was not looked up ({exc}); assuming {zone}")
        return zone


def send_ids(
    config: ProviderConfig,
    client: UpdateClient,
    zone: str,
    changes: Sequence[Change],
    updates: list[str],
) -> None:
    """The ``publish`` step: every batch to the primary (each shown in
    ``updates``); a refusal names the batch's tenants."""
    for batch, update in id_updates(config, client, zone, changes):
        updates.append(shown(client, update))
        try:
            client.send(update)
        except PublishError as exc:
            raise ApplyError(PUBLISH, [c.domain for c in batch], str(exc)) from None


def send_tlsrpt(
    config: ProviderConfig,
    env: Environment,
    client: UpdateClient,
    changes: Sequence[TlsrptChange],
    *,
    updates: list[str],
    arrivals: list[Arrival],
) -> None:
    """The ``tlsrpt`` step: set or delete the hosted TLS-RPT records by the
    same TSIG-signed UPDATE path as the ids, then confirm them at the
    primary and every authoritative server."""
    assert config.tlsrpt.zone is not None  # (planned only with a zone)
    domains = [c.domain for c in changes]
    sent = time.monotonic()
    try:
        zone = client.zone_for(config.tlsrpt.zone + ".")
        for update in tlsrpt_updates(config, client, zone, changes):
            updates.append(shown(client, update))
            client.send(update)
    except PublishError as exc:
        raise ApplyError(TLSRPT, domains, str(exc)) from None
    wanted = {c.name: (c.domain, c.value) for c in changes}
    confirm_txt(config, env, wanted, TLSRPT)
    confirm_authorities(config, env, zone, wanted, TLSRPT, sent=sent, arrivals=arrivals)
