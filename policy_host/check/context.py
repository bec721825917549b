"""What every tenant's check is given: config, resolver, fetcher, clock."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from policy_host.check.dnsclient import Lookup
from policy_host.fetch import FetchResult
from policy_host.read.config import ProviderConfig
from policy_host.records import AcmeIdentity

Clock = Callable[[], dt.datetime]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Fetcher(Protocol):
    """Fetches a policy as a sender would (``fetch.HttpsFetcher``).

    ``connect`` set: every fetch goes there, whatever DNS says.
    """

    connect: tuple[str, int] | None

    async def fetch(self, host: str, addresses: Sequence[str]) -> FetchResult: ...


@dataclass(frozen=True)
class CheckContext:
    """What every tenant's check needs besides the tenant.

    ``acme_accounts``: our ACME account URIs (``certs.account``), against
    which a CAA ``accounturi`` is judged; empty before the first order.
    """

    config: ProviderConfig
    lookup: Lookup
    expected_ids: Mapping[str, str]
    fetcher: Fetcher | None = None
    clock: Clock = utc_now
    acme_accounts: frozenset[str] = frozenset()

    @property
    def acme(self) -> AcmeIdentity:
        return AcmeIdentity(self.config.check.caa_issuers, self.acme_accounts)
