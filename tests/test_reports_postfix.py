"""Report mail through a real MTA: Postfix (Debian) delivers to the
``reports ingest -`` pipe, as docs/reports.md configures it; DKIM keys are
published in the test's own DNS (knot), and the messages are signed by
dkimpy's signer on their way in (a good signature, a broken one, none, one
with ``l=``, one by a key limited to ``s=email``). Every message is
accepted by Postfix (never bounced); only the good one counts as verified.
Runs in a network namespace of the test's own; needs root, postfix, knot.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import os
import shutil
import smtplib
import sqlite3
import subprocess
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path

import dkim
import pytest
from support.dnsservers import KnotServer, Zone
from support.fixtures_dns import in_ci
from support.layout import ROOT
from support.netns import NetNamespace, netns_supported
from support.procs import LOOPBACK, Daemon, MissingBinaryError, port_open, require_binary
from support.reportenv import report_tree
from support.stack import CLI

from policy_host.read.config import ProviderConfig, load_config

SUBMITTER = "sender.example"
SMTP_PORT = 2525
DNS_PORT = 5353
HEADERS = [b"from", b"to", b"subject", b"date", b"message-id", b"tls-report-domain",
           b"tls-report-submitter"]  # fmt: skip


def _require() -> None:
    why = netns_supported()
    if why is None:
        try:
            for name in ("postfix", "knotd", "openssl"):
                require_binary(name)
        except MissingBinaryError as exc:
            why = str(exc)
    if why is None:
        return
    if in_ci():
        pytest.fail(f"{why}; CI=true, so this is a failure, not a skip", pytrace=False)
    pytest.skip(why)


def _rsa_key(folder: Path, name: str) -> tuple[bytes, str]:
    private = folder / f"{name}.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(private), "2048"], check=True,
                   capture_output=True)  # fmt: skip
    der = subprocess.run(
        ["openssl", "rsa", "-in", str(private), "-pubout", "-outform", "DER"],
        check=True,
        capture_output=True,
    ).stdout
    return private.read_bytes(), base64.b64encode(der).decode()


def _txt(value: str) -> str:
    """A TXT rdata of strings of at most 255 bytes (RFC 1035 section 3.3)."""
    return " ".join(f'"{value[i : i + 200]}"' for i in range(0, len(value), 200))


MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = mx.provider.example
mydomain = provider.example
mydestination = provider.example
inet_interfaces = {loopback}
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
transport_maps = inline:{{ tlsrpt@provider.example=tlsrpt: }}
local_recipient_maps =
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
smtputf8_enable = no
biff = no
tlsrpt_destination_recipient_limit = 1
"""
SERVICES = """\
{loopback}:{port} inet n - n - - smtpd
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
proxymap unix - - n - - proxymap
smtp unix - - n - - smtp
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
tlsrpt unix - n n - 4 pipe
  flags=Rq user=nobody argv={deliver}
"""


def _pipe_command() -> list[str]:
    """``policy-host`` as the unprivileged pipe user can run it: the
    installed script, or, where its interpreter lives in a folder only root
    may enter (a Python built under /root), the system's Python 3 with this
    tree and the environment's packages on its path."""
    python_path = ":".join(
        p for p in (os.environ.get("PYTHONPATH", ""), str(ROOT),
                    sysconfig.get_paths()["purelib"]) if p
    )  # fmt: skip
    env = ["/usr/bin/env", f"PYTHONPATH={python_path}"]
    probe = subprocess.run(["runuser", "-u", "nobody", "--", *env, *CLI, "--version"],
                           capture_output=True, timeout=60, check=False)  # fmt: skip
    if probe.returncode == 0:
        return [*env, *CLI]
    system = [*env, "/usr/bin/python3", "-m", "policy_host.cli.main"]
    probe = subprocess.run(["runuser", "-u", "nobody", "--", *system, "--version"],
                           capture_output=True, timeout=60, check=False)  # fmt: skip
    if probe.returncode != 0:
        pytest.fail(f"the pipe user cannot run policy-host: {probe.stderr!r}")
    return system


@dataclass(frozen=True)
class Mta:
    config: ProviderConfig
    maillog: Path
    keys: dict[str, bytes]


@pytest.fixture(scope="module")
def mta() -> Iterator[Mta]:
    _require()
    # The pipe runs as nobody (Postfix refuses root), standing for the
    # service user: a folder all can read, and a state folder it owns
    # (``reports`` runs only as the owner of state_dir).
    root = Path(tempfile.mkdtemp(prefix="ph-postfix-", dir="/tmp"))
    try:
        root.chmod(0o755)
        config = report_tree(root, unverified="require")
        config.tenants_dir.parent.chmod(0o755)
        with config.path.open("a") as handle:
            handle.write(f"dns:\n  resolver: {LOOPBACK}:{DNS_PORT}\n")
        config = load_config(config.path)
        config.state_dir.mkdir(mode=0o777)
        config.state_dir.chmod(0o777)
        shutil.chown(config.state_dir, "nobody")
        keys_dir = root / "keys"
        keys_dir.mkdir()
        good, good_public = _rsa_key(keys_dir, "good")
        email_only, email_public = _rsa_key(keys_dir, "emailonly")
        zone = Zone(
            SUBMITTER,
            [
                f"good._domainkey TXT {_txt(f'v=DKIM1; k=rsa; s=tlsrpt; p={good_public}')}",
                f"emailonly._domainkey TXT {_txt(f'v=DKIM1; k=rsa; s=email; p={email_public}')}",
            ],
        )
        postfix = root / "postfix"
        (postfix / "conf").mkdir(parents=True)
        (postfix / "data").mkdir()
        (postfix / "queue").mkdir()
        shutil.chown(postfix / "data", "postfix")
        deliver = postfix / "deliver"
        argv = " ".join([*_pipe_command(), "--config", str(config.path), "reports", "ingest", "-"])
        deliver.write_text(f"#!/bin/sh\nexec {argv}\n")
        deliver.chmod(0o755)
        conf = postfix / "conf"
        (conf / "main.cf").write_text(MAIN_CF.format(root=postfix, loopback=LOOPBACK))
        (conf / "master.cf").write_text(
            SERVICES.format(loopback=LOOPBACK, port=SMTP_PORT, deliver=deliver)
        )
        master = subprocess.run(
            ["postconf", "-c", str(conf), "-h", "daemon_directory"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
        with NetNamespace() as netns, netns.entered():
            # `postfix check` makes the queue folders with their owners.
            subprocess.run(["postfix", "-c", str(conf), "check"], check=True, timeout=60)
            knot = KnotServer([zone], port=DNS_PORT)
            daemon = Daemon(
                [f"{master}/master", "-c", str(conf), "-d"],
                name="postfix-master",
                workdir=postfix / "run",
                ready=lambda: port_open(LOOPBACK, SMTP_PORT),
                ready_timeout=30,
            )
            with knot, daemon:
                yield Mta(config, postfix / "maillog", {"good": good, "emailonly": email_only})
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _message(report_id: str) -> bytes:
    report = {
        "organization-name": "Sender Example",
        "date-range": {
            "start-datetime": "2026-12-01T00:00:00Z",
            "end-datetime": "2026-12-01T23:59:59Z",
        },
        "contact-info": "tlsrpt@sender.example",
        "report-id": report_id,
        "policies": [
            {
                "policy": {
                    "policy-type": "sts",
                    "policy-domain": "example.com",
                    "policy-string": [
                        "version: STSv1",
                        "mode: testing",
                        "mx: mx1.example.com",
                        "max_age: 86400",
                    ],
                    "mx-host": ["mx1.example.com"],
                },
                "summary": {"total-successful-session-count": 9, "total-failure-session-count": 0},
            }
        ],
    }
    message = MIMEMultipart("report", report_type="tlsrpt")
    message["From"] = f"tlsrpt@{SUBMITTER}"
    message["To"] = "tlsrpt@provider.example"
    message["Subject"] = (
        f"Report Domain: example.com Submitter: {SUBMITTER} Report-ID: <{report_id}>"
    )
    message["Date"] = "Wed, 02 Dec 2026 03:00:00 +0000"
    message["Message-ID"] = f"<{report_id}@{SUBMITTER}>"
    message["TLS-Report-Domain"] = "example.com"
    message["TLS-Report-Submitter"] = SUBMITTER
    message.attach(MIMEText("This is an aggregate TLS report."))
    name = f"{SUBMITTER}!example.com!1796083200!1796169599.json.gz"
    part = MIMEApplication(gzip.compress(json.dumps(report).encode()), "tlsrpt+gzip", name=name)
    part.add_header("Content-Disposition", "attachment", filename=name)
    message.attach(part)
    return message.as_bytes().replace(b"\n", b"\r\n")


def _signed(message: bytes, key: bytes, selector: str, *, length: bool = False) -> bytes:
    signature = dkim.sign(message, selector.encode(), SUBMITTER.encode(), key,
                          include_headers=HEADERS, length=length)  # fmt: skip
    assert isinstance(signature, bytes)
    return signature + message


CASES = {
    "good": ("stored", ""),
    "bad-signature": ("unverified", "body hash mismatch"),
    "unsigned": ("unverified", "no DKIM signature"),
    "length-tag": ("unverified", "has an l= tag"),
    "email-only-key": ("unverified", "the key's s= does not allow tlsrpt"),
}


def _variant(mta: Mta, case: str) -> bytes:
    message = _message(f"postfix-{case}")
    good = mta.keys["good"]
    if case == "good":
        return _signed(message, good, "good")
    if case == "bad-signature":
        return _signed(message, good, "good").replace(b"aggregate TLS", b"forged TLS")
    if case == "length-tag":
        return _signed(message, good, "good", length=True)
    if case == "email-only-key":
        return _signed(message, mta.keys["emailonly"], "emailonly")
    return message


def test_report_mail_through_postfix_and_dkim(mta: Mta) -> None:
    with smtplib.SMTP(LOOPBACK, SMTP_PORT, timeout=30) as smtp:
        for case in CASES:
            smtp.sendmail(f"tlsrpt@{SUBMITTER}", ["tlsrpt@provider.example"], _variant(mta, case))
    deadline = time.monotonic() + 60
    rows: list[tuple[str, str, str]] = []
    while time.monotonic() < deadline:
        if mta.config.reports_db.exists():
            # The first pipe run may have made the file but not yet
            # committed its schema.
            with (
                sqlite3.connect(mta.config.reports_db) as conn,
                contextlib.suppress(sqlite3.OperationalError),
            ):
                rows = conn.execute(
                    "SELECT r.outcome, r.auth, p.report_id FROM raw r LEFT JOIN report p "
                    "ON r.report = p.id"
                ).fetchall()
            if len(rows) >= len(CASES):
                break
        time.sleep(0.5)
    log = mta.maillog.read_text()
    assert len(rows) == len(CASES), log[-3000:]
    by_outcome = sorted((outcome, auth) for outcome, auth, _ in rows)
    expected = []
    for case, (outcome, reason) in CASES.items():
        matching = [a for o, a in by_outcome if o == outcome and reason in a]
        assert matching, (case, by_outcome)
        expected.append(outcome)
    assert sorted(o for o, _ in by_outcome) == sorted(expected)
    assert next(r for r in rows if r[0] == "stored")[2] == "postfix-good"
    # Postfix delivered every message to the pipe: none bounced or deferred.
    assert log.count("relay=tlsrpt") == len(CASES)
    assert "status=bounced" not in log and "status=deferred" not in log
    assert f"dkim d={SUBMITTER} s=good" in [a for o, a, _ in rows if o == "stored"]
