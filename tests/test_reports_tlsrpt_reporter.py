"""A real report generator and sender: tlsrpt-reporter (PyPI).

The test plays the MTA: it sends the collector (tlsrpt-collectd) the
datagrams an MTA with TLSRPT support sends for each session, then rolls
the collector's day over (SIGUSR2, its development switch: reports are
made for the day before) and lets its report daemon (tlsrpt-reportd, with
tlsrpt-fetcher) build the RFC 8460 report and deliver it to both `rua`
destinations: by HTTPS POST with curl through nginx to the app, and by mail
through its sendmail command, which here is the ingest pipe itself (no MTA
between them in this test). Both copies are one report, stored once.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import sqlite3
import sys
import time
from pathlib import Path

import pytest
from support.procs import LOOPBACK, Daemon, require_binary
from support.stack import CLI
from test_reports_nginx import NAME, PATH, PORT, Front, front

from policy_host.reports.store import Store

__all__ = ["front"]  # the nginx + app fixture, shared

BIN = Path(sys.executable).parent
DOMAIN = "example.com"
RUA = f"https://{NAME}:{PORT}{PATH},mailto:tlsrpt@provider.example"


def _tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{name} is missing: install the dev extra (tlsrpt-reporter)")
    return str(path)


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


def test_reports_from_tlsrpt_reporter_arrive_by_https_and_mail(
    front: Front, tmp_path: Path
) -> None:
    curl = require_binary("curl")
    ca = front.ca
    work = tmp_path / "tlsrpt"
    work.mkdir()
    socket_path = work / "collectd.socket"
    ingest = " ".join(shlex.quote(a) for a in [*CLI, "--config", str(front.config.path)])
    cfg = work / "tlsrpt.cfg"
    # As the project documents it (curl reads the gzip report on stdin);
    # the report name resolves to nginx's loopback listener.
    http_script = (
        f"{curl} --silent --fail --cacert {ca} --resolve {NAME}:{PORT}:{LOOPBACK} "
        "--header 'Content-Type: application/tlsrpt+gzip' --data-binary @-"
    )
    cfg.write_text(
        f"""[tlsrpt_collectd]
storage = sqlite://{work}/collectd.sqlite
socketname = {socket_path}
logfilename = {work}/collectd.log
log_level = debug
sockettimeout = 1
max_uncommited_datagrams = 1

[tlsrpt_fetcher]
storage = sqlite://{work}/collectd.sqlite
logfilename = {work}/fetcher.log

[tlsrpt_reportd]
organization_name = Test Sender Org
contact_info = tlsrpt@sender.example
sender_address = tlsrpt@sender.example
dbname = {work}/reportd.sqlite
logfilename = {work}/reportd.log
log_level = debug
http_script = {http_script}
sendmail_script = {ingest} reports ingest -
fetchers = {_tool("tlsrpt-fetcher")} --config_file {cfg}
interval_main_loop = 1
min_wait_domainlist = 0
max_wait_domainlist = 1
min_wait_domaindetails = 0
max_wait_domaindetails = 1
spread_out_delivery = 1
"""
    )
    collectd = Daemon(
        [_tool("tlsrpt-collectd"), "--config_file", str(cfg)],
        name="tlsrpt-collectd",
        workdir=work / "c",
        ready=socket_path.exists,
        ready_timeout=20,
    )
    with collectd:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as mta:
            for failed in (True, True, False, False, False, False, False):
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
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                with Store(front.config.reports_db) as store:
                    row = store.conn.execute(
                        "SELECT copies FROM report WHERE organization = 'Test Sender Org'"
                    ).fetchone()
                if row is not None and row[0] >= 2:
                    break
                time.sleep(0.5)
    log = (work / "reportd.log").read_text()
    assert row is not None and row[0] == 2, log[-3000:]
    with Store(front.config.reports_db) as store:
        conn = store.conn
        report = conn.execute(
            "SELECT channel, verified, quirks FROM report WHERE organization = 'Test Sender Org'"
        ).fetchone()
        result = conn.execute(
            "SELECT r.domain, r.policy_type, r.mx_host, r.success, r.failure FROM result r "
            "JOIN report p ON p.id = r.report WHERE p.organization = 'Test Sender Org'"
        ).fetchone()
        detail = conn.execute(
            "SELECT d.result_type, d.count, d.receiving_mx_hostname, d.sending_mta_ip, "
            "d.additional_information FROM detail d JOIN result r ON r.id = d.result "
            "JOIN report p ON p.id = r.report WHERE p.organization = 'Test Sender Org'"
        ).fetchone()
        channels = sorted(
            c
            for (c,) in conn.execute(
                "SELECT channel FROM raw WHERE outcome IN ('stored', 'unverified')"
            )
        )
    assert result == (DOMAIN, "sts", '["mx1.example.com"]', 5, 2)
    assert detail == ("sts-policy-fetch-error", 2, "mx1.example.com", "192.0.2.1",
                      "fetch timed out")  # fmt: skip
    # The first copy to arrive is the one whose raw bytes are kept.
    assert report[0] in ("https", "mail") and channels in (["https"], ["mail"])
    assert isinstance(conn, sqlite3.Connection)
