"""``policy-host certs``: one certificate per ``mta-sts.<domain>``, by certbot.

For every hosted domain, in this order:

1. a valid certificate for the name is already there: nothing to do
   (certbot's own timer renews it, and its deploy hook reloads nginx);
2. the last order for this name failed less than ``acme.backoff`` seconds
   ago: wait (one attempt per name per period, so a broken customer never
   burns the CA's rate limits);
3. ``mta-sts.<domain>`` does not lead to our ``policy_host`` through its
   CNAME chain (asked through the recursive resolver): skip, the HTTP-01
   challenge could not reach us;
4. CAA (RFC 8659, RFC 8657) at the name or a parent stops every issuer in
   ``check.caa_issuers`` from issuing by HTTP-01 with our ACME account: skip;
5. more than ``acme.orders_per_hour`` orders in the last hour: defer;
6. otherwise ``certbot certonly --webroot`` with ``--cert-name`` equal to
   the host name, so the files are ``<config_dir>/live/<host>/``.

Steps 3 and 4 are ``precheck`` (the same judgements as ``check``). Then
nginx's server blocks are regenerated (``nginxconf.sync``): tested with
``nginx -t`` and reloaded only if they changed. Certificates of names no
longer hosted (a removed tenant past its withdrawal period) are listed, and
deleted with ``--delete-removed`` after nginx stopped using them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from policy_host.certs.account import account_uris
from policy_host.certs.attempts import HOUR, AttemptLog, attempt_log
from policy_host.certs.certificate import (
    CertsError,
    certificates_on_disk,
    valid_certificate,
)
from policy_host.certs.nginxconf import hosted_domains, policy_host_name, report, sync
from policy_host.certs.precheck import make_lookup, order_problem
from policy_host.check.dnsclient import Lookup
from policy_host.fileio import locked
from policy_host.model import POLICY_HOST_PREFIX, InvalidValue, hostname
from policy_host.read.config import ProviderConfig
from policy_host.records import AcmeIdentity
from policy_host.runner import Runner, run

log = logging.getLogger(__name__)

CERTBOT_TIMEOUT = 600.0
EXPIRY_WARNING_DAYS = 21

Clock = Callable[[], float]


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


def certbot_environment(config: ProviderConfig) -> dict[str, str] | None:
    """certbot's environment: ours, plus ``REQUESTS_CA_BUNDLE`` (the CA
    bundle certbot's HTTP library trusts for the ACME server's own HTTPS)
    when ``acme.ca_bundle`` is set; None: ours unchanged."""
    bundle = config.acme.ca_bundle
    if bundle is None:
        return None
    return {**os.environ, "REQUESTS_CA_BUNDLE": str(bundle)}


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
    lookup: Lookup
    runner: Runner = run
    clock: Clock = time.time
    dry_run: bool = False
    ignore_backoff: bool = False

    @property
    def db_path(self) -> Path:
        return self.config.certs_db

    def valid(self, host: str, now: float, attempts: AttemptLog) -> Outcome | None:
        cert = valid_certificate(self.config, host, now)
        if not self.dry_run:
            attempts.certificate(host, cert.not_after if cert is not None else None)
        if cert is None:
            return None
        days = int((cert.not_after - now) // 86_400)
        note = ""
        if days < EXPIRY_WARNING_DAYS:
            note = "; renewal is overdue: is certbot's timer running?"
        return Outcome(host, "valid", f"until {_when(cert.not_after)} ({days} days){note}")

    def obtain(self, domains: Iterable[str], attempts: AttemptLog) -> list[Outcome]:
        outcomes = []
        ordered = 0
        for domain in sorted(domains):
            host = policy_host_name(domain)
            outcome = self._before_order(host, attempts, ordered)
            if outcome is not None:
                outcomes.append(outcome)
                continue
            argv = certbot_command(self.config, host)
            ordered += 1
            if self.dry_run:
                outcomes.append(Outcome(host, "would-order", self._shown(argv)))
            else:
                outcomes.append(self._order(host, argv, attempts))
        return outcomes

    def _shown(self, argv: list[str]) -> str:
        """``argv`` as a shell would run it, with certbot's CA setting."""
        bundle = self.config.acme.ca_bundle
        prefix = f"REQUESTS_CA_BUNDLE={shlex.quote(str(bundle))} " if bundle else ""
        return prefix + shlex.join(argv)

    def _before_order(self, host: str, attempts: AttemptLog, ordered: int) -> Outcome | None:
        """What stops an order for ``host`` now (steps 1-5), or None."""
        acme = self.config.acme
        now = self.clock()
        have = self.valid(host, now, attempts)
        if have is not None:
            return have
        last = attempts.last(host)
        if (
            not self.ignore_backoff
            and last is not None
            and not last.ok
            and now - last.at < acme.backoff
        ):
            return Outcome(
                host,
                "waiting",
                f"the order at {_when(last.at)} failed ({last.message}); "
                f"next attempt after {_when(last.at + acme.backoff)}",
            )
        # Read each time: the first order of a run registers the account.
        us = AcmeIdentity(self.config.check.caa_issuers, account_uris(acme))
        reason = order_problem(self.lookup, host, self.config.policy_host, us)
        if reason is not None:
            return Outcome(host, "skipped", reason)
        recent = attempts.orders_since(now - HOUR) + (ordered if self.dry_run else 0)
        if recent >= acme.orders_per_hour:
            return Outcome(
                host,
                "deferred",
                f"{recent} orders in the last hour "
                f"(acme.orders_per_hour is {acme.orders_per_hour})",
            )
        return None

    def _order(self, host: str, argv: list[str], attempts: AttemptLog) -> Outcome:
        started = self.clock()
        attempts.ordering(host, started)
        self.config.acme.webroot.mkdir(parents=True, exist_ok=True)
        log.info("ordering a certificate for %s", host)
        result = self.runner(argv, timeout=CERTBOT_TIMEOUT, env=certbot_environment(self.config))
        if result.ok:
            have = self.valid(host, self.clock(), attempts)
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
                outcomes.append(Outcome(host, "would-delete", self._shown(argv)))
                continue
            result = self.runner(
                argv, timeout=CERTBOT_TIMEOUT, env=certbot_environment(self.config)
            )
            if result.ok:
                outcomes.append(Outcome(host, "removed", "no longer hosted; certificate deleted"))
            else:
                outcomes.append(
                    Outcome(host, "failed", f"certbot delete failed: {result.last_lines(3)}")
                )
        return outcomes


def _domain_args(values: Sequence[str]) -> list[str]:
    domains = []
    for value in values:
        text = value.rstrip(".").lower().removeprefix(POLICY_HOST_PREFIX)
        try:
            domains.append(hostname(text, what="domain").ascii)
        except InvalidValue as exc:
            raise CertsError(str(exc)) from None
    return domains


def _store_expiry(
    config: ProviderConfig, domains: Iterable[str], now: float, attempts: AttemptLog
) -> None:
    """Keep each policy name's valid certificate's expiry (after this run's
    orders) for `apply`, `promote` and the status page, which run as the
    service user and cannot read certbot's files."""
    for domain in domains:
        host = policy_host_name(domain)
        cert = valid_certificate(config, host, now)
        attempts.certificate(host, cert.not_after if cert is not None else None)


def run_certs(
    config: ProviderConfig,
    *,
    lookup: Lookup | None = None,
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
        lookup if lookup is not None else make_lookup(config),
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
            stack.enter_context(locked(config.state_dir / "certs.lock", write_pid=True))
        attempts = stack.enter_context(attempt_log(run_.db_path, dry_run))
        outcomes = run_.obtain(wanted, attempts)
        if not dry_run:
            _store_expiry(config, wanted, clock(), attempts)
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
