"""pytest fixtures that run a real knotd + unbound on loopback for a test.

Use them from a conftest.py or a test module with::

    pytest_plugins = ["support.fixtures_dns"]

and override ``dns_zones`` (and/or ``dns_key``) in a module or class to
serve other zones. ``dns_world`` starts both servers for one test and
always stops them afterwards.

When knotd, knotc or unbound is missing the tests are skipped, except
under ``CI=true``, where they fail with the name of the missing program.

PYTEST_DONT_REWRITE (no asserts here; test modules may import this module
before pytest loads it as a plugin).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from .dnsservers import DnsWorld, KnotServer, TsigKey, UnboundResolver, Zone, start_dns
from .procs import MissingBinaryError, require_binary

__all__ = [
    "DNS_BINARIES",
    "default_dns_zones",
    "dns_key",
    "dns_world",
    "dns_zones",
    "in_ci",
    "knot_server",
    "require_dns_binaries",
    "unbound_resolver",
]

#: Programs the DNS harness runs (Debian packages knot and unbound).
DNS_BINARIES = ("knotd", "knotc", "unbound")

#: The policy id the default zones publish.
DEFAULT_POLICY_ID = "20260101T000000"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def require_dns_binaries(names: tuple[str, ...] = DNS_BINARIES) -> None:
    """Skip the test if a program is missing; under CI=true, fail it instead."""
    missing: list[str] = []
    for name in names:
        try:
            require_binary(name)
        except MissingBinaryError:
            missing.append(name)
    if not missing:
        return
    message = (
        f"DNS test harness needs {', '.join(missing)} (Debian packages knot, unbound), "
        "which is not installed"
    )
    if in_ci():
        pytest.fail(f"{message}; CI=true, so this is a failure, not a skip", pytrace=False)
    pytest.skip(message)


def default_dns_zones() -> list[Zone]:
    """A customer zone delegating its MTA-STS TXT to a provider zone by CNAME.

    ``_mta-sts.customer.example CNAME customer.example._mta-sts.provider.example``
    and the provider zone (dynamic, so updates signed with the key work)
    holds the TXT ``v=STSv1; id=20260101T000000;``.
    """
    return [
        Zone(
            "customer.example",
            [
                "_mta-sts CNAME customer.example._mta-sts.provider.example.",
                "mta-sts CNAME mta-sts.provider.example.",
                "@ MX 10 mx.customer.example.",
                "mx A 127.0.0.1",
            ],
        ),
        Zone(
            "provider.example",
            [
                f'customer.example._mta-sts TXT "v=STSv1; id={DEFAULT_POLICY_ID};"',
                "mta-sts A 127.0.0.1",
            ],
            dynamic=True,
        ),
    ]


@pytest.fixture
def dns_key() -> TsigKey:
    """A fresh TSIG key (random secret) for updates to the dynamic zones."""
    return TsigKey.generate()


@pytest.fixture
def dns_zones() -> list[Zone]:
    """The zones ``dns_world`` serves; override this fixture to serve others."""
    return default_dns_zones()


@pytest.fixture
def dns_world(dns_zones: list[Zone], dns_key: TsigKey) -> Iterator[DnsWorld]:
    """knotd serving ``dns_zones`` plus an unbound in front; stopped after the test."""
    require_dns_binaries()
    with start_dns(dns_zones, dns_key) as (knot, unbound):
        yield DnsWorld(knot=knot, unbound=unbound, key=dns_key)


@pytest.fixture
def knot_server(dns_world: DnsWorld) -> KnotServer:
    return dns_world.knot


@pytest.fixture
def unbound_resolver(dns_world: DnsWorld) -> UnboundResolver:
    return dns_world.unbound
