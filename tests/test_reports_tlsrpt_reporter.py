"""A real report generator and sender, tlsrpt-reporter (PyPI), delivering
to a provider set up as docs/reports.md says: nginx with the shipped
reports snippet in front of ``policy-host serve`` for the ``https:`` rua,
and Postfix (Debian) with the ``tlsrpt`` pipe to ``policy-host reports
ingest -`` for the ``mailto:`` rua, all in a network namespace of the
test's own.

The test plays the MTA: it sends the collector (tlsrpt-collectd) the
datagrams an MTA with TLSRPT support sends for each session, then rolls
the collector's day over (SIGUSR2, its development switch: reports are
made for the day before) and lets its report daemon (tlsrpt-reportd, with
tlsrpt-fetcher) build the RFC 8460 report and deliver it to both
destinations: by HTTPS POST with curl through nginx to the app, and by
mail through its sendmail command, which here has dkimpy's ``dkimsign``
sign the message (RFC 8460 section 3: reports MUST be DKIM-signed; the key
is published in the test's knot) and hands it to Postfix's ``sendmail``.
Both copies are one report, stored once; the mail copy, verified, marks it
DKIM-verified. The server and the pipe run as the service user (here
``nobody``), which owns ``state_dir``, as docs/install.md sets it up.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.dnsservers import KnotServer, Zone
from support.netns import NetNamespace
from support.postfix import (
    PIPE_USER,
    RUA_ADDRESS,
    Postfix,
    as_pipe_user,
    dkim_key,
    pipe_command,
    require_postfix,
    service_tree,
    txt_rdata,
)
from support.procs import LOOPBACK, Daemon, require_binary, wait_until
from support.tls import make_ca
from test_reports_nginx import NAME, PATH, PORT, TENANT, ReportsNginx
from test_static_nginx import require_stack

from policy_host.read.config import ProviderConfig, load_config

BIN = Path(sys.executable).parent
DOMAIN = "example.com"
RUA = f"https://{NAME}:{PORT}{PATH},mailto:{RUA_ADDRESS}"
SUBMITTER = "sender.example"
SELECTOR = "tlsrpt"
ORGANIZATION = "Test Sender Org"
SMTP_PORT = 2525
DNS_PORT = 5353
WAIT = 45.0  # seconds for both copies, once the report daemon runs
# One entry per session the MTA reports: True for a failed one.
SESSIONS = (True, True, False, False, False, False, False)


def _tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{name} is missing: install the dev extra (tlsrpt-reporter, dkimpy)")
    return str(path)


@dataclass(frozen=True)
class Provider:
    config: ProviderConfig
    ca: Path  # the test CA's certificate, for curl
    postfix: Postfix
    dkim_key: Path  # the sender's private key; its public half is in knot


@pytest.fixture(scope="module")
def provider() -> Iterator[Provider]:
    require_stack()
    require_postfix()
    # The service user must reach every file: a folder outside root's
    # /tmp/pytest-of-root.
    root = Path(tempfile.mkdtemp(prefix="ph-tlsrpt-", dir="/tmp"))
    try:
        config = service_tree(root, unverified="require", dns_port=DNS_PORT)
        run = root / "run"
        run.mkdir()
        shutil.chown(run, PIPE_USER)
        socket_path = run / "gunicorn.sock"
        text = config.path.read_text()
        assert "bind: 127.0.0.1:8080" in text
        config.path.write_text(text.replace("bind: 127.0.0.1:8080", f"bind: unix:{socket_path}"))
        config = load_config(config.path)
        ca = make_ca(root / "ca")
        cert, key = ca.issue("tlsrpt", [NAME])
        keys = root / "keys"
        keys.mkdir()
        private, public = dkim_key(keys, SELECTOR)
        zone = Zone(
            SUBMITTER,
            [f"{SELECTOR}._domainkey TXT {txt_rdata(f'v=DKIM1; k=rsa; s=tlsrpt; p={public}')}"],
        )
        policy_host = pipe_command()

        def gunicorn_ready() -> bool:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.connect(str(socket_path))
            return True

        gunicorn = Daemon(
            [*as_pipe_user(), *policy_host, "--config", str(config.path), "serve"],
            name="gunicorn",
            workdir=root / "gunicorn",
            ready=gunicorn_ready,
            ready_timeout=30,
        )
        nginx = ReportsNginx(
            root / "nginx",
            socket_path=socket_path,
            cert=cert,
            key=key,
            tenant=ca.issue("tenant", [TENANT]),
        )
        deliver = [*policy_host, "--config", str(config.path), "reports", "ingest", "-"]
        postfix = Postfix(root / "postfix", deliver, port=SMTP_PORT)
        knot = KnotServer([zone], port=DNS_PORT)
        with NetNamespace() as netns, netns.entered(), knot, gunicorn, nginx, postfix:
            yield Provider(config, ca.cert, postfix, private)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _datagram(failed: bool) -> bytes:
    """One session's datagram, as an MTA sends it to tlsrpt-collectd."""
    policy: dict[str, object] = {
        "policy-type": 2,  # sts
        "policy-string": [
            "version: STSv1",
            "mode: testing",
            "mx: mx1.example.com",
            "max_age: 86400",
        ],
        "policy-domain": DOMAIN,
        "mx-host": ["mx1.example.com"],
        "f": 1 if failed else 0,
        "t": 1 if failed else 0,
        "failure-details": [
            {"c": 301, "n": "mx1.example.com", "s": "192.0.2.1", "a": "fetch timed out"}
        ]
        if failed
        else [],
    }
    record = f"v=TLSRPTv1; rua={RUA}"
    return json.dumps({"dpv": "1", "d": DOMAIN, "pr": record, "policies": [policy]}).encode()


def _reporter_config(work: Path, provider: Provider) -> Path:
    """tlsrpt-reporter's config: HTTPS with curl (the gzip report on
    stdin), mail signed by dkimsign and handed to Postfix's sendmail."""
    curl = require_binary("curl")
    http_script = (
        f"{curl} --silent --fail --cacert {provider.ca} --resolve {NAME}:{PORT}:{LOOPBACK} "
        "--header 'Content-Type: application/tlsrpt+gzip' --data-binary @-"
    )
    sign = [_tool("dkimsign"), SELECTOR, SUBMITTER, str(provider.dkim_key)]
    sendmail = f"{shlex.join(sign)} | {shlex.join(provider.postfix.sendmail_argv())}"
    cfg = work / "tlsrpt.cfg"
    cfg.write_text(
        f"""[tlsrpt_collectd]
storage = sqlite://{work}/collectd.sqlite
socketname = {work}/collectd.socket
logfilename = {work}/collectd.log
log_level = debug
sockettimeout = 1
max_uncommited_datagrams = 1

[tlsrpt_fetcher]
storage = sqlite://{work}/collectd.sqlite
logfilename = {work}/fetcher.log

[tlsrpt_reportd]
organization_name = {ORGANIZATION}
contact_info = tlsrpt@{SUBMITTER}
sender_address = tlsrpt@{SUBMITTER}
dbname = {work}/reportd.sqlite
logfilename = {work}/reportd.log
log_level = debug
http_script = {http_script}
sendmail_script = {sendmail}
fetchers = {_tool("tlsrpt-fetcher")} --config_file {cfg}
interval_main_loop = 1
min_wait_domainlist = 0
max_wait_domainlist = 1
min_wait_domaindetails = 0
max_wait_domaindetails = 1
spread_out_delivery = 1
"""
    )
    return cfg


def _read(db: Path, sql: str) -> list[tuple[object, ...]]:
    """Rows from the report store, read-only (the store is the service
    user's; the first writer may not have committed its schema yet)."""
    if not db.exists():
        return []
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
            return conn.execute(sql).fetchall()
    except sqlite3.OperationalError:
        return []


REPORT = (
    f"SELECT copies, verified, channel, report_id FROM report WHERE organization = '{ORGANIZATION}'"
)


def test_tlsrpt_reporter_reports_arrive_by_https_and_by_postfix_dkim_signed(
    provider: Provider, tmp_path: Path
) -> None:
    work = tmp_path / "tlsrpt"
    work.mkdir()
    cfg = _reporter_config(work, provider)
    socket_path = work / "collectd.socket"
    collectd = Daemon(
        [_tool("tlsrpt-collectd"), "--config_file", str(cfg)],
        name="tlsrpt-collectd",
        workdir=work / "c",
        ready=socket_path.exists,
        ready_timeout=20,
    )
    db = provider.config.reports_db
    rows: list[tuple[object, ...]] = []
    with collectd:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as mta:
            for failed in SESSIONS:
                mta.sendto(_datagram(failed), str(socket_path))
        time.sleep(1.5)  # the collector commits on its socket timeout
        os.kill(collectd.pid, signal.SIGUSR2)  # the PID this test started
        time.sleep(1.5)
        reportd = Daemon(
            [_tool("tlsrpt-reportd"), "--config_file", str(cfg)],
            name="tlsrpt-reportd",
            workdir=work / "r",
            ready=lambda: True,
        )
        with reportd:
            deadline = time.monotonic() + WAIT
            while time.monotonic() < deadline:
                rows = _read(db, REPORT)
                if rows and rows[0][0] == 2 and rows[0][1] == 1:
                    break
                time.sleep(0.5)
    logs = f"{(work / 'reportd.log').read_text()[-2000:]}\n{provider.postfix.log()[-2000:]}"
    # Both copies arrived, and one of them was mail whose DKIM signature
    # counts: under `unverified_mail: require` an unsigned or badly signed
    # copy would be kept aside, and HTTPS never verifies.
    assert len(rows) == 1 and rows[0][:2] == (2, 1), logs
    assert rows[0][2] in ("https", "mail")
    # Postfix delivered the mail to the pipe once, and the pipe said which
    # report it held (its stdout ends up in the delivery status).
    # Postfix logs the delivery once the pipe has exited, a moment after
    # the store has the report.
    with contextlib.suppress(TimeoutError):
        wait_until(
            lambda: "relay=tlsrpt, " in provider.postfix.log(),
            10,
            what="Postfix to log the delivery",
        )
    maillog = provider.postfix.log()
    delivered = re.findall(r"relay=tlsrpt, .* status=sent \(delivered via tlsrpt service "
                           r"\((?:stored|duplicate): (.+)\)\)", maillog)  # fmt: skip
    assert delivered == [rows[0][3]], maillog[-3000:]
    assert "status=bounced" not in maillog and "status=deferred" not in maillog
    # Two copies and one mail delivery: the other copy came by HTTPS. The
    # first to arrive is the one whose raw bytes are kept (later copies of
    # the same content only count).
    raw = _read(db, "SELECT channel, origin, outcome, verified, auth FROM raw")
    assert len(raw) == 1 and raw[0][2] == "stored", raw
    channel, origin, _, verified, auth = raw[0]
    if channel == "mail":
        assert (verified, auth) == (1, f"dkim d={SUBMITTER} s={SELECTOR}")
    else:  # through nginx, which passes the client's address on
        assert (channel, origin, verified) == ("https", LOOPBACK, 0)
    failures = sum(SESSIONS)
    result = _read(
        db,
        "SELECT r.domain, r.policy_type, r.mx_host, r.success, r.failure, r.verified "
        f"FROM result r JOIN report p ON p.id = r.report WHERE p.organization = '{ORGANIZATION}'",
    )
    assert result == [(DOMAIN, "sts", '["mx1.example.com"]', len(SESSIONS) - failures, failures, 1)]
    detail = _read(
        db,
        "SELECT d.result_type, d.count, d.receiving_mx_hostname, d.sending_mta_ip, "
        "d.additional_information FROM detail d JOIN result r ON r.id = d.result "
        f"JOIN report p ON p.id = r.report WHERE p.organization = '{ORGANIZATION}'",
    )
    assert detail == [("sts-policy-fetch-error", failures, "mx1.example.com", "192.0.2.1",
                       "fetch timed out")]  # fmt: skip
