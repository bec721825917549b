"""Report mail through a real MTA: Postfix (Debian) delivers to the
``reports ingest -`` pipe, as docs/reports.md configures it; DKIM keys are
published in the test's own DNS (knot), and the messages are signed by
dkimpy's signer on their way in (a good signature, a broken one, none, one
with ``l=``, one by a key limited to ``s=email``). Every message is
accepted by Postfix (never bounced); only the good one counts as verified.
Runs in a network namespace of the test's own; needs root, postfix, knot.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import shutil
import smtplib
import sqlite3
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
from support.netns import NetNamespace
from support.postfix import (
    RUA_ADDRESS,
    Postfix,
    dkim_key,
    pipe_command,
    require_postfix,
    service_tree,
    txt_rdata,
)
from support.procs import LOOPBACK, wait_until

from policy_host.read.config import ProviderConfig

SUBMITTER = "sender.example"
SMTP_PORT = 2525
DNS_PORT = 5353
HEADERS = [b"from", b"to", b"subject", b"date", b"message-id", b"tls-report-domain",
           b"tls-report-submitter"]  # fmt: skip


@dataclass(frozen=True)
class Mta:
    config: ProviderConfig
    maillog: Path
    keys: dict[str, bytes]


@pytest.fixture(scope="module")
def mta() -> Iterator[Mta]:
    require_postfix()
    # The pipe user must reach every file: a folder outside root's /tmp/pytest-of-root.
    root = Path(tempfile.mkdtemp(prefix="ph-postfix-", dir="/tmp"))
    try:
        config = service_tree(root, unverified="require", dns_port=DNS_PORT)
        keys_dir = root / "keys"
        keys_dir.mkdir()
        good, good_public = dkim_key(keys_dir, "good")
        email_only, email_public = dkim_key(keys_dir, "emailonly")
        zone = Zone(
            SUBMITTER,
            [
                f"good._domainkey TXT {txt_rdata(f'v=DKIM1; k=rsa; s=tlsrpt; p={good_public}')}",
                "emailonly._domainkey TXT "
                + txt_rdata(f"v=DKIM1; k=rsa; s=email; p={email_public}"),
            ],
        )
        deliver = [*pipe_command(), "--config", str(config.path), "reports", "ingest", "-"]
        postfix = Postfix(root / "postfix", deliver, port=SMTP_PORT)
        keys = {"good": good.read_bytes(), "emailonly": email_only.read_bytes()}
        knot = KnotServer([zone], port=DNS_PORT)
        with NetNamespace() as netns, netns.entered(), knot, postfix:
            yield Mta(config, postfix.maillog, keys)
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
    message["To"] = RUA_ADDRESS
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
            smtp.sendmail(f"tlsrpt@{SUBMITTER}", [RUA_ADDRESS], _variant(mta, case))
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
    # It logs a delivery once the pipe has exited, a moment after the store
    # has the report.
    with contextlib.suppress(TimeoutError):
        wait_until(
            lambda: mta.maillog.read_text().count("relay=tlsrpt") >= len(CASES),
            10,
            what="Postfix to log every delivery",
        )
    log = mta.maillog.read_text()
    assert log.count("relay=tlsrpt") == len(CASES), log[-3000:]
    assert "status=bounced" not in log and "status=deferred" not in log
    assert f"dkim d={SUBMITTER} s=good" in [a for o, a, _ in rows if o == "stored"]


def test_postfix_refuses_addresses_the_maps_do_not_list(mta: Mta) -> None:
    """The rua passes Postfix's recipient check because the transport map
    is in local_recipient_maps (docs/reports.md); any other local address
    is refused at RCPT TO, so nothing else reaches the pipe."""
    with smtplib.SMTP(LOOPBACK, SMTP_PORT, timeout=30) as smtp:
        smtp.ehlo()
        smtp.mail(f"tlsrpt@{SUBMITTER}")
        code, answer = smtp.rcpt("postmaster-unknown@provider.example")
        assert code == 550 and b"User unknown" in answer, (code, answer)
        assert smtp.rcpt(RUA_ADDRESS)[0] == 250
