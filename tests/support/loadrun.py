"""A steady request loop through nginx over many tenants while `apply`
changes policies, again and again; every answer is checked.

Used by the short run in the suite (``tests/test_load.py``) and the long,
parameterised one (``bench/load_bench.py``), both on a ``support.front``
(nginx on 443 with a certificate per tenant, gunicorn, knotd).

Clients fetch ``https://mta-sts.<domain>/.well-known/mta-sts.txt`` as
senders do: SNI and Host the tenant's name, a new TLS connection each time
(or a few requests per connection), from many loopback source addresses
(so nginx's per-client limits see many senders, as in production). A
changer rewrites some tenants' files and runs ``policy-host apply`` in a
loop; now and then it also reloads nginx (as certbot's renewal hook does)
and the gunicorn master (SIGHUP: new workers).

Each answer must be a 200 with a complete policy (``strict_policy``)
equal to the tenant's version before or after the change in progress: a
version ``i`` may be served from the moment its apply started until the
apply of version ``i + 1`` finished (which verified it everywhere).

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import collections
import os
import random
import signal
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field

from .front import HTTPS, Front
from .rawhttp import NoReplyError, SourceAddresses, connect, exchange, request_bytes
from .strict_policy import PolicyParseError, parse_policy

__all__ = ["LoadReport", "run_load", "tenant_policy"]

PATH = "/.well-known/mta-sts.txt"


def tenant_policy(domain: str, version: int) -> str:
    """Tenant file text for ``version`` of ``domain``: mode, mx and max_age
    all move, so every version's bytes differ."""
    mode = ("enforce", "testing")[version % 2]
    mx = "".join(f"  - mx{n}.{domain}\n" for n in range(1 + version % 3))
    return f"mode: {mode}\nmx:\n{mx}  - '*.mail.{domain}'\nmax_age: {604800 + version}\n"


@dataclass
class Version:
    body: bytes
    started: float  # its apply began (the file was already written)
    finished: float | None = None  # its apply returned: served everywhere


@dataclass
class LoadReport:
    seconds: float = 0.0
    tenants: int = 0
    requests: int = 0
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    verified: int = 0
    wrong: list[str] = field(default_factory=list)
    applies: int = 0
    changes: int = 0
    nginx_reloads: int = 0
    gunicorn_reloads: int = 0
    apply_failures: list[str] = field(default_factory=list)
    # Requests sent on a reused keep-alive connection that the server closed
    # without a byte (nginx's old workers do, on a reload): a client retries
    # those on a new connection (RFC 9112 section 9.3.1); not counted above.
    retried: int = 0

    @property
    def non_200(self) -> int:
        """Answers for hosted names that were not 200, and failed requests."""
        return self.requests - self.statuses[200]

    @property
    def server_errors(self) -> int:
        return sum(count for status, count in self.statuses.items() if status >= 500)

    @property
    def ok(self) -> bool:
        return (
            self.requests > 0
            and self.non_200 == 0
            and self.server_errors == 0
            and not self.wrong
            and self.verified == self.requests
            and not self.apply_failures
        )

    def lines(self) -> list[str]:
        rate = self.requests / self.seconds if self.seconds else 0.0
        return [
            f"duration: {self.seconds:.1f} s, {self.tenants} tenants",
            f"requests: {self.requests} ({rate:.0f}/s)",
            f"non-200 for hosted names: {self.non_200}"
            + (f" {dict(self.statuses)} {dict(self.errors)}" if self.non_200 else ""),
            f"5xx: {self.server_errors}",
            f"bodies verified (complete, valid, old or new version): {self.verified}"
            f" of {self.requests}; wrong: {len(self.wrong)}",
            f"keep-alive requests retried on a new connection: {self.retried}",
            f"applies: {self.applies} ({self.changes} policy changes, "
            f"{len(self.apply_failures)} failed); nginx reloads: {self.nginx_reloads}; "
            f"gunicorn reloads (SIGHUP): {self.gunicorn_reloads}",
        ]


class _History:
    """Every version of every tenant, with when it could be served."""

    def __init__(self) -> None:
        self.versions: dict[str, list[Version]] = {}
        self.lock = threading.Lock()

    def add(self, domain: str, body: bytes, started: float) -> None:
        with self.lock:
            self.versions.setdefault(domain, []).append(Version(body, started))

    def finish(self, domains: list[str], finished: float) -> None:
        with self.lock:
            for domain in domains:
                self.versions[domain][-1].finished = finished

    def allowed(self, domain: str, started: float, ended: float) -> list[bytes]:
        """Versions that may be served to a request made in [started, ended]."""
        with self.lock:
            versions = list(self.versions[domain])
        allowed = []
        for index, version in enumerate(versions):
            if version.started > ended:
                break
            following = versions[index + 1] if index + 1 < len(versions) else None
            superseded = following.finished if following is not None else None
            if superseded is None or superseded >= started:
                allowed.append(version.body)
        return allowed


def run_load(
    front: Front,
    domains: list[str],
    *,
    seconds: float,
    clients: int = 8,
    changes_per_round: int = 5,
    per_connection: int = 1,
    reload_nginx_every: int = 3,
    sighup_every: int = 4,
    seed: int = 7,
    min_applies: int = 0,
    max_seconds: float | None = None,
) -> LoadReport:
    """Run clients and the changer for ``seconds`` (longer, up to
    ``max_seconds``, until ``min_applies`` applies are done); the tenants
    must have been written with ``tenant_policy(domain, 0)`` and applied."""
    report = LoadReport(tenants=len(domains))
    history = _History()
    sources = SourceAddresses(count=1000, base=100)
    now = time.monotonic()
    for domain in domains:
        body = _served_body(front, domain, sources.next())
        history.add(domain, body, now - 1)
        history.finish([domain], now - 1)
    stop = threading.Event()
    lock = threading.Lock()
    context = front.tls_context()

    def record(status: int, error: str | None, wrong: str | None, verified: bool) -> None:
        with lock:
            report.requests += 1
            if error is not None:
                report.errors[error] += 1
                report.statuses[0] += 1
            else:
                report.statuses[status] += 1
            if verified:
                report.verified += 1
            if wrong is not None and len(report.wrong) < 50:
                report.wrong.append(wrong)

    def client(number: int) -> None:
        rng = random.Random(seed * 1000 + number)
        while not stop.is_set():
            domain = rng.choice(domains)
            host = f"mta-sts.{domain}"
            try:
                with (
                    connect(HTTPS, source=sources.next(), timeout=5) as raw,
                    context.wrap_socket(raw, server_hostname=host) as sock,
                ):
                    for n in range(per_connection):
                        last = n == per_connection - 1
                        started = time.monotonic()
                        try:
                            reply = exchange(sock, request_bytes(PATH, host, close=last), timeout=5)
                        except NoReplyError as exc:
                            if n == 0 or not exc.empty:
                                raise
                            with lock:
                                report.retried += 1
                            break
                        ended = time.monotonic()
                        _check(reply.status, reply.body, domain, started, ended)
                        if stop.is_set():
                            break
            except (OSError, ssl.SSLError, NoReplyError) as exc:
                record(0, type(exc).__name__, None, False)

    def _check(status: int, body: bytes, domain: str, started: float, ended: float) -> None:
        if status != 200:
            record(status, None, f"{domain}: HTTP {status}", False)
            return
        try:
            parse_policy(body)
        except PolicyParseError as exc:
            record(status, None, f"{domain}: not a complete valid policy ({exc}): {body!r}", False)
            return
        allowed = history.allowed(domain, started, ended)
        if body not in allowed:
            record(status, None, f"{domain}: neither the old nor the new version: {body!r}", False)
            return
        record(status, None, None, True)

    def changer() -> None:
        rng = random.Random(seed)
        version = dict.fromkeys(domains, 0)
        round_number = 0
        while not stop.is_set():
            round_number += 1
            picked = rng.sample(domains, min(changes_per_round, len(domains)))
            started = time.monotonic()
            for domain in picked:
                version[domain] += 1
                front.write_tenant(domain, tenant_policy(domain, version[domain]))
                history.add(domain, _render(domain, version[domain]), started)
            done = front.cli("apply", timeout=120)
            if done.returncode != 0:
                report.apply_failures.append(done.stderr.strip()[-500:])
                return
            history.finish(picked, time.monotonic())
            report.applies += 1
            report.changes += len(picked)
            if reload_nginx_every and round_number % reload_nginx_every == 0:
                subprocess.run(
                    front.nginx.reload_command, check=True, timeout=30, capture_output=True
                )
                report.nginx_reloads += 1
            if sighup_every and round_number % sighup_every == 0:
                os.kill(front.master_pid(), signal.SIGHUP)
                report.gunicorn_reloads += 1

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(clients)]
    changing = threading.Thread(target=changer, daemon=True)
    began = time.monotonic()
    for thread in threads:
        thread.start()
    changing.start()
    time.sleep(seconds)
    limit = began + max(seconds, max_seconds or 0.0)
    while report.applies < min_applies and changing.is_alive() and time.monotonic() < limit:
        time.sleep(0.1)
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    changing.join(timeout=150)
    report.seconds = time.monotonic() - began
    if changing.is_alive() or any(thread.is_alive() for thread in threads):
        report.apply_failures.append("a client or the changer did not stop")
    return report


def _render(domain: str, version: int) -> bytes:
    """The bytes ``tenant_policy(domain, version)`` is served as (the
    package's own renderer: the clients check them with strict_policy)."""
    from policy_host.model import Policy
    from policy_host.render import render

    mode = ("enforce", "testing")[version % 2]
    mx = (*(f"mx{n}.{domain}" for n in range(1 + version % 3)), f"*.mail.{domain}")
    return render(Policy(mode, mx, 604800 + version))


def _served_body(front: Front, domain: str, source: str) -> bytes:
    host = f"mta-sts.{domain}"
    reply = front.https(host, request_bytes(PATH, host), source=source)
    if reply.status != 200:
        raise RuntimeError(f"{host} is not served before the load starts: {reply.status}")
    return reply.body
