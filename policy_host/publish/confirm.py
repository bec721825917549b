"""`apply` after publishing: confirm the change at every authoritative server.

RFC 8461 section 8: a change counts as done only when every place a
sender's resolver may ask answers the new TXT records. The primary is read
back first (it took the UPDATE), then every other authoritative server of
the zone (``propagation``: serial and names, polled until they catch up).
Until then the state keeps the change pending, and a rerun confirms the
same ids. Each poll is bounded and names what it saw.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence

from policy_host.authdns import AuthDnsError
from policy_host.publish.environment import Environment
from policy_host.publish.plan import Change
from policy_host.publish.propagation import Arrival, await_propagation, lag_message
from policy_host.publish.steps import CONFIRM, POLL_INTERVAL, ApplyError
from policy_host.publish.update import PublishError, record_name, shows
from policy_host.read.config import ProviderConfig


def confirm_ids(
    config: ProviderConfig,
    env: Environment,
    zone: str,
    changes: Sequence[Change],
    *,
    sent: float,
    arrivals: list[Arrival],
) -> None:
    """The ``confirm`` step: every changed id record at the primary, then
    at every authoritative server of ``zone``. ``sent``: the
    ``time.monotonic()`` of the first UPDATE."""
    wanted = {record_name(config, c.domain): (c.domain, c.txt) for c in changes}
    confirm_txt(config, env, wanted)
    # RFC 8461 section 8: confirmed only once every authoritative server
    # answers the new records; until then the state keeps the change
    # pending and a rerun takes it up with the same ids.
    confirm_authorities(config, env, zone, wanted, CONFIRM, sent=sent, arrivals=arrivals)


def confirm_txt(
    config: ProviderConfig,
    env: Environment,
    wanted: Mapping[str, tuple[str, bytes | None]],
    step: str = CONFIRM,
) -> None:
    """Read every changed TXT back from the primary until it shows the change
    (``wanted``: name -> (domain, value, None for deleted))."""
    assert env.dns is not None
    todo = dict(wanted)
    total = len(todo)
    last: dict[str, str] = {}
    deadline = time.monotonic() + config.dns.timeout
    while True:
        for name, (_, value) in list(todo.items()):
            try:
                values = env.dns.txt(name)
            except PublishError as exc:
                last[name] = str(exc)
                continue
            if shows(values, value):
                del todo[name]
            else:
                seen = b" | ".join(values).decode("ascii", "replace") or "no TXT record"
                last[name] = f"the primary answers {seen!r} for {name}"
        env.progress(step, total - len(todo), total)
        if not todo:
            return
        if time.monotonic() >= deadline:
            name, (_, value) = next(iter(todo.items()))
            expected = repr(value.decode("ascii")) if value else "no TXT record"
            raise ApplyError(
                step,
                sorted(domain for domain, _ in todo.values()),
                f"{last.get(name, 'no answer')}; expected {expected}",
            )
        env.sleep(POLL_INTERVAL)


def confirm_authorities(
    config: ProviderConfig,
    env: Environment,
    zone: str,
    wanted: Mapping[str, tuple[str, bytes | None]],
    step: str,
    *,
    sent: float,
    arrivals: list[Arrival],
) -> None:
    """After ``confirm_txt``: wait until every authoritative server of
    ``zone`` shows the change too (RFC 8461 section 8); each server's
    outcome goes to ``arrivals``. ``sent``: the ``time.monotonic()`` of the
    UPDATE."""
    if env.authorities is None:
        return
    domains = sorted({domain for domain, _ in wanted.values()})
    try:
        servers = env.authorities(zone)
    except AuthDnsError as exc:
        raise ApplyError(step, domains, f"the authoritative servers of {zone}: {exc}") from None
    wait = config.authoritative.wait
    found = await_propagation(
        servers,
        zone,
        {name: value for name, (_, value) in wanted.items()},
        sent=sent,
        wait=wait,
        sleep=env.sleep,
        progress=lambda done, total: env.progress(step, done, total),
    )
    arrivals.extend(dataclasses.replace(arrival, step=step) for arrival in found)
    problem = lag_message(found, wait)
    if problem is not None:
        raise ApplyError(step, domains, problem)
