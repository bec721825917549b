"""``policy-host certs``: one certificate per ``mta-sts.<domain>``, by certbot.

For every hosted domain, in this order:

1. a valid certificate for the name is already there: nothing to do
   (certbot's own timer renews it, and its deploy hook reloads nginx);
2. the last order for this name failed less than ``acme.backoff`` seconds
   ago: wait (one attempt per name per period, so a broken customer never
   burns the CA's rate limits);
3. ``mta-sts.<domain>`` is not a CNAME to our ``policy_host`` (asked through
   the recursive resolver): skip, the HTTP-01 challenge could not reach us;
4. CAA (RFC 8659) at the name or a parent forbids every issuer in
   ``check.caa_issuers``: skip;
5. more than ``acme.orders_per_hour`` orders in the last hour: defer;
6. otherwise ``certbot certonly --webroot`` with ``--cert-name`` equal to
   the host name, so the files are ``<config_dir>/live/<host>/``.

Then nginx's server blocks are regenerated (``nginxconf.sync``): tested with
``nginx -t`` and reloaded only if they changed. Certificates of names no
longer hosted (a removed tenant past its withdrawal period) are listed, and
deleted with ``--delete-removed`` after nginx stopped using them.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import shlex
import sqlite3
import ssl
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import dns.exception
import dns.name
import dns.resolver

from policy_host.certs.nginxconf import (
    cert_files,
    hosted_domains,
    locked,
    policy_host_name,
    report,
    sync,
)
from policy_host.errors import PolicyHostError
from policy_host.model import POLICY_HOST_PREFIX, InvalidValue, hostname
from policy_host.read.config import ProviderConfig
from policy_host.runner import Runner, run

log = logging.getLogger(__name__)

CERTBOT_TIMEOUT = 600.0
OPENSSL_TIMEOUT = 30.0
HOUR = 3600.0
EXPIRY_WARNING_DAYS = 21
# RFC 8659 section 4: an unknown property with the critical flag forbids
# issuance; these are the ones a CA understands.
_CAA_KNOWN_TAGS = ("issue", "issuewild", "iodef", "contactemail", "contactphone")
_CAA_CRITICAL = 128

Clock = Callable[[], float]


class CertsError(PolicyHostError):
    """A certificate could not be read, or the run could not start."""


# --------------------------------------------------------------------------
# What is on disk
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Certificate:
    host: str
    not_after: float
    names: tuple[str, ...]


def read_certificate(config: ProviderConfig, host: str, runner: Runner) -> Certificate | None:
    """The certificate certbot keeps for ``host``, or None if there is none."""
    chain, key = cert_files(config.acme, host)
    if not chain.exists() or not key.exists():
        return None
    result = runner(
        ["openssl", "x509", "-in", str(chain), "-noout", "-enddate", "-ext", "subjectAltName"],
        timeout=OPENSSL_TIMEOUT,
    )
    if not result.ok:
        raise CertsError(f"{chain}: cannot read the certificate: {result.last_lines()}")
    not_after = None
    names: list[str] = []
    for line in result.output.splitlines():
        line = line.strip()
        if line.startswith("notAfter="):
            not_after = ssl.cert_time_to_seconds(line.removeprefix("notAfter="))
        for item in line.split(","):
            item = item.strip()
            if item.startswith("DNS:"):
                names.append(item.removeprefix("DNS:").lower())
    if not_after is None:
        raise CertsError(f"{chain}: no expiry date in the certificate")
    return Certificate(host, not_after, tuple(names))


def certificates_on_disk(config: ProviderConfig) -> list[str]:
    """Names of the certificates certbot keeps that look like ours."""
    live = config.acme.config_dir / "live"
    try:
        return sorted(
            p.name for p in live.iterdir() if p.is_dir() and p.name.startswith(POLICY_HOST_PREFIX)
        )
    except FileNotFoundError:
        return []


# --------------------------------------------------------------------------
# DNS: does the name point at us, and may the CA issue for it?
# --------------------------------------------------------------------------


def make_resolver(config: ProviderConfig) -> dns.resolver.Resolver:
    """A resolver without cache: ``dns.resolver`` from the config, else the system's."""
    if config.dns.resolver is not None:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [config.dns.resolver[0]]
        resolver.port = config.dns.resolver[1]
    else:
        resolver = dns.resolver.Resolver()
    resolver.timeout = resolver.lifetime = config.dns.timeout
    resolver.cache = None
    return resolver


def cname_problem(resolver: dns.resolver.Resolver, host: str, target: str) -> str | None:
    """Why ``host`` is not a CNAME to ``target`` (None when it is)."""
    try:
        answer = resolver.resolve(host, "CNAME", raise_on_no_answer=False)
    except dns.resolver.NXDOMAIN:
        return f"{host} does not exist (NXDOMAIN); the customer has not added its CNAME yet"
    except dns.exception.DNSException as exc:
        return f"DNS error looking up {host}: {exc}"
    if answer.rrset is None:
        return f"{host} is not a CNAME (expected one to {target})"
    got = answer.rrset[0].target.to_text(omit_final_dot=True).lower()
    if got != target:
        return f"{host} is a CNAME to {got}, not to {target}"
    return None


def caa_problem(resolver: dns.resolver.Resolver, host: str, issuers: Sequence[str]) -> str | None:
    """Why CAA (RFC 8659) forbids every issuer in ``issuers`` for ``host``.

    The relevant record set is the first found climbing from ``host`` to
    its parents (section 3); a CNAME at a name is followed by the resolver.
    A lookup error is a reason too: a CA must not issue then either.
    """
    name = dns.name.from_text(host)
    while len(name) > 1:  # stop before the root
        try:
            rrset = resolver.resolve(name, "CAA", raise_on_no_answer=False).rrset
        except dns.resolver.NXDOMAIN:
            rrset = None
        except dns.exception.DNSException as exc:
            return f"DNS error looking up CAA at {name}: {exc}"
        if rrset:
            allowed: list[str] = []
            for rdata in rrset:
                tag = rdata.tag.decode("ascii", "replace").lower()
                if rdata.flags & _CAA_CRITICAL and tag not in _CAA_KNOWN_TAGS:
                    return f"CAA at {name} has an unknown critical property {tag!r}"
                if tag == "issue":
                    value = rdata.value.decode("ascii", "replace")
                    allowed.append(value.split(";", 1)[0].strip().lower())
            if allowed and not set(allowed) & set(issuers):
                shown = ", ".join(sorted(a or "nobody" for a in set(allowed)))
                return (
                    f"CAA at {name.to_text(omit_final_dot=True)} allows only {shown}, "
                    f"not {', '.join(issuers)}"
                )
            return None
        name = name.parent()
    return None


# --------------------------------------------------------------------------
# Attempts and orders: a small SQLite file of our own in state_dir
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    host: str
    at: float
    ok: bool
    message: str


class AttemptLog:
    """When each name was last ordered and how it went; orders per hour."""

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = path
        if read_only:
            # --dry-run: read what is there, create and change nothing.
            target = f"file:{path}?mode=ro" if path.exists() else "file::memory:"
            self.db = sqlite3.connect(target, uri=True, isolation_level=None)
            if path.exists():
                return
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(path, timeout=10, isolation_level=None)
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS attempts (
                host TEXT PRIMARY KEY, at REAL NOT NULL, ok INTEGER NOT NULL,
                message TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS orders (at REAL NOT NULL, host TEXT NOT NULL);
            CREATE INDEX IF NOT EXISTS orders_at ON orders (at);
            """
        )

    def close(self) -> None:
        self.db.close()

    def last(self, host: str) -> Attempt | None:
        row = self.db.execute(
            "SELECT host, at, ok, message FROM attempts WHERE host = ?", (host,)
        ).fetchone()
        return Attempt(row[0], row[1], bool(row[2]), row[3]) if row else None

    def orders_since(self, since: float) -> int:
        count: int = self.db.execute(
            "SELECT count(*) FROM orders WHERE at >= ?", (since,)
        ).fetchone()[0]
        return count

    def ordering(self, host: str, at: float) -> None:
        """Count an order before it is sent: a crash mid-order still counts."""
        with self.db:
            self.db.execute("INSERT INTO orders (at, host) VALUES (?, ?)", (at, host))
            self.db.execute("DELETE FROM orders WHERE at < ?", (at - 7 * 24 * HOUR,))

    def record(self, host: str, at: float, ok: bool, message: str) -> None:
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO attempts (host, at, ok, message) VALUES (?, ?, ?, ?)",
                (host, at, int(ok), message),
            )


# --------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------


def certbot_command(config: ProviderConfig, host: str) -> list[str]:
    """``certbot certonly --webroot`` for one name, non-interactive."""
    acme = config.acme
    argv = [
        *acme.certbot,
        "certonly",
        "--non-interactive",
        "--agree-tos",
        "--webroot",
        "--webroot-path",
        str(acme.webroot),
        "--domain",
        host,
        "--cert-name",
        host,
        "--server",
        acme.directory,
        "--config-dir",
        str(acme.config_dir),
        "--work-dir",
        str(acme.work_dir),
        "--logs-dir",
        str(acme.logs_dir),
        "--keep-until-expiring",
    ]
    if acme.email:
        argv += ["--email", acme.email, "--no-eff-email"]
    else:
        argv.append("--register-unsafely-without-email")
    return argv


def certbot_delete_command(config: ProviderConfig, host: str) -> list[str]:
    acme = config.acme
    return [
        *acme.certbot,
        "delete",
        "--non-interactive",
        "--cert-name",
        host,
        "--config-dir",
        str(acme.config_dir),
        "--work-dir",
        str(acme.work_dir),
        "--logs-dir",
        str(acme.logs_dir),
    ]


@dataclass(frozen=True)
class Outcome:
    """What happened to one name: ``status`` is one of valid, ordered,
    failed, waiting, skipped, deferred, would-order, removed, kept."""

    host: str
    status: str
    detail: str

    @property
    def failed(self) -> bool:
        return self.status == "failed"

    def __str__(self) -> str:
        return f"{self.host}: {self.status}: {self.detail}"


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(seconds))


@dataclass
class CertsRun:
    config: ProviderConfig
    resolver: dns.resolver.Resolver
    runner: Runner = run
    clock: Clock = time.time
    dry_run: bool = False
    ignore_backoff: bool = False

    @property
    def db_path(self) -> Path:
        return self.config.state_dir / "certs.sqlite3"

    def valid(self, host: str, now: float) -> Outcome | None:
        cert = read_certificate(self.config, host, self.runner)
        if cert is None or host not in cert.names or cert.not_after <= now:
            return None
        days = int((cert.not_after - now) // 86_400)
        note = ""
        if days < EXPIRY_WARNING_DAYS:
            note = "; renewal is overdue: is certbot's timer running?"
        return Outcome(host, "valid", f"until {_when(cert.not_after)} ({days} days){note}")

    def obtain(self, domains: Iterable[str], attempts: AttemptLog) -> list[Outcome]:
        config = self.config
        acme = config.acme
        outcomes = []
        ordered = 0
        for domain in sorted(domains):
            host = policy_host_name(domain)
            now = self.clock()
            have = self.valid(host, now)
            if have is not None:
                outcomes.append(have)
                continue
            last = attempts.last(host)
            if (
                not self.ignore_backoff
                and last is not None
                and not last.ok
                and now - last.at < acme.backoff
            ):
                outcomes.append(
                    Outcome(
                        host,
                        "waiting",
                        f"the order at {_when(last.at)} failed ({last.message}); "
                        f"next attempt after {_when(last.at + acme.backoff)}",
                    )
                )
                continue
            reason = cname_problem(self.resolver, host, config.policy_host) or caa_problem(
                self.resolver, host, config.check.caa_issuers
            )
            if reason is not None:
                outcomes.append(Outcome(host, "skipped", reason))
                continue
            recent = attempts.orders_since(now - HOUR) + (ordered if self.dry_run else 0)
            if recent >= acme.orders_per_hour:
                outcomes.append(
                    Outcome(
                        host,
                        "deferred",
                        f"{recent} orders in the last hour "
                        f"(acme.orders_per_hour is {acme.orders_per_hour})",
                    )
                )
                continue
            argv = certbot_command(config, host)
            ordered += 1
            if self.dry_run:
                outcomes.append(Outcome(host, "would-order", shlex.join(argv)))
                continue
            outcomes.append(self._order(host, argv, attempts))
        return outcomes

    def _order(self, host: str, argv: list[str], attempts: AttemptLog) -> Outcome:
        started = self.clock()
        attempts.ordering(host, started)
        self.config.acme.webroot.mkdir(parents=True, exist_ok=True)
        log.info("ordering a certificate for %s", host)
        result = self.runner(argv, timeout=CERTBOT_TIMEOUT)
        if result.ok:
            have = self.valid(host, self.clock())
            if have is not None:
                attempts.record(host, started, True, "ok")
                return Outcome(host, "ordered", have.detail)
            message = f"certbot succeeded but no valid certificate for {host} was found"
        else:
            message = f"certbot exited with {result.returncode}: {result.last_lines(3)}"
        attempts.record(host, started, False, message)
        return Outcome(host, "failed", message)

    def removed(self, hosted: set[str], delete: bool) -> list[Outcome]:
        outcomes = []
        wanted = {policy_host_name(d) for d in hosted}
        for host in certificates_on_disk(self.config):
            if host in wanted:
                continue
            if not delete:
                outcomes.append(
                    Outcome(host, "kept", "no longer hosted; delete it with --delete-removed")
                )
                continue
            argv = certbot_delete_command(self.config, host)
            if self.dry_run:
                outcomes.append(Outcome(host, "would-delete", shlex.join(argv)))
                continue
            result = self.runner(argv, timeout=CERTBOT_TIMEOUT)
            if result.ok:
                outcomes.append(Outcome(host, "removed", "no longer hosted; certificate deleted"))
            else:
                outcomes.append(
                    Outcome(host, "failed", f"certbot delete failed: {result.last_lines(3)}")
                )
        return outcomes


@contextlib.contextmanager
def _attempt_log(path: Path, read_only: bool) -> Iterator[AttemptLog]:
    attempts = AttemptLog(path, read_only=read_only)
    try:
        yield attempts
    finally:
        attempts.close()


def _domain_args(values: Sequence[str]) -> list[str]:
    domains = []
    for value in values:
        text = value.rstrip(".").lower().removeprefix(POLICY_HOST_PREFIX)
        try:
            domains.append(hostname(text, what="domain").ascii)
        except InvalidValue as exc:
            raise CertsError(str(exc)) from None
    return domains


def run_certs(
    config: ProviderConfig,
    *,
    resolver: dns.resolver.Resolver | None = None,
    runner: Runner = run,
    clock: Clock = time.time,
    dry_run: bool = False,
    only: Sequence[str] = (),
    delete_removed: bool = False,
    ignore_backoff: bool = False,
    reload_nginx: bool = True,
    out: TextIO | None = None,
) -> int:
    """The whole ``certs`` command; returns the exit status (1: an order failed)."""
    stream = out if out is not None else sys.stdout
    run_ = CertsRun(
        config,
        resolver if resolver is not None else make_resolver(config),
        runner,
        clock,
        dry_run,
        ignore_backoff,
    )
    hosted = hosted_domains(config)
    wanted = set(_domain_args(only)) if only else hosted
    unknown = sorted(wanted - hosted)
    if unknown:
        raise CertsError(f"not hosted here: {', '.join(unknown)}")
    with contextlib.ExitStack() as stack:
        if not dry_run:
            stack.enter_context(locked(config.state_dir / "certs.lock"))
        attempts = stack.enter_context(_attempt_log(run_.db_path, dry_run))
        outcomes = run_.obtain(wanted, attempts)
        for outcome in outcomes:
            print(outcome, file=stream)
        nginx = sync(config, runner=runner, domains=hosted, dry_run=dry_run, reload=reload_nginx)
        report(nginx, dry_run=dry_run, out=stream)
        if not only:
            removed = run_.removed(hosted, delete_removed)
            for outcome in removed:
                print(outcome, file=stream)
            outcomes += removed
    failed = [o for o in outcomes if o.failed]
    return 1 if failed else 0


def cmd_certs(args: argparse.Namespace, config: ProviderConfig) -> int:
    return run_certs(
        config,
        dry_run=args.dry_run,
        only=args.domains,
        delete_removed=args.delete_removed,
        ignore_backoff=args.ignore_backoff,
        reload_nginx=not args.no_reload,
    )


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    p = sub.add_parser(
        "certs",
        parents=[common],
        help="get a certificate per mta-sts.<domain> (certbot), update nginx",
        description="For each hosted domain whose mta-sts.<domain> is a CNAME to policy_host "
        "(and whose CAA allows the CA), run `certbot certonly --webroot` unless a valid "
        "certificate exists, the last order failed within acme.backoff seconds, or "
        "acme.orders_per_hour orders were made in the last hour. Then regenerate nginx's "
        "server blocks (nginx -t, reload). Exit 1 if an order failed.",
    )
    p.add_argument("domains", nargs="*", metavar="DOMAIN", help="only these domains")
    p.add_argument(
        "--dry-run", action="store_true", help="print the certbot commands; change nothing"
    )
    p.add_argument(
        "--delete-removed",
        action="store_true",
        help="delete certificates of names no longer hosted (after nginx stopped using them)",
    )
    p.add_argument(
        "--ignore-backoff", action="store_true", help="retry names whose last order failed"
    )
    p.add_argument("--no-reload", action="store_true", help="do not reload nginx")
    p.set_defaults(handler=cmd_certs)
