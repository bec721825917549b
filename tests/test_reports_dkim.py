"""DKIM on report mail (RFC 8460 section 3), signed with dkimpy's signer and
verified with the key records passed in as a lookup: which signatures count,
and what `require` and `record` do with the others."""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Callable
from pathlib import Path

import dkim
import pytest
from support.reportenv import CORPUS, Store, make_ingester, report_tree

from policy_host.reports.dkimcheck import verify
from policy_host.reports.ingest import Ingester
from policy_host.reports.model import MAIL, Envelope
from policy_host.reports.schema import DUPLICATE, STORED, UNVERIFIED

SUBMITTER = "mailsender.example"
HEADERS = [b"from", b"to", b"subject", b"date", b"message-id", b"tls-report-domain",
           b"tls-report-submitter"]  # fmt: skip


@pytest.fixture(scope="module")
def rsa_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, str]:
    """(private key PEM, public key base64 for a DKIM record)."""
    folder = tmp_path_factory.mktemp("dkim")
    private = folder / "key.pem"
    subprocess.run(
        ["openssl", "genrsa", "-out", str(private), "2048"], check=True, capture_output=True
    )
    der = subprocess.run(
        ["openssl", "rsa", "-in", str(private), "-pubout", "-outform", "DER"],
        check=True,
        capture_output=True,
    ).stdout
    return private.read_bytes(), base64.b64encode(der).decode()


def _lookup(records: dict[str, str]) -> Callable[..., bytes | None]:
    def lookup(name: bytes | str, timeout: float = 5) -> bytes | None:
        text = (name.decode() if isinstance(name, bytes) else name).rstrip(".")
        found = records.get(text)
        return found.encode() if found is not None else None

    return lookup


def _sign(message: bytes, key: bytes, *, domain: str = SUBMITTER, length: bool = False) -> bytes:
    signature = dkim.sign(
        message, b"sel", domain.encode(), key, include_headers=HEADERS, length=length
    )
    assert isinstance(signature, bytes)
    return signature + message


MESSAGE = (CORPUS / "mail-report.eml").read_bytes()


@pytest.mark.parametrize(
    ("service", "signer", "length", "tamper", "verified", "reason"),
    [
        ("s=tlsrpt; ", SUBMITTER, False, False, True, f"dkim d={SUBMITTER} s=sel"),
        ("", SUBMITTER, False, False, True, f"dkim d={SUBMITTER} s=sel"),
        ("s=*; ", SUBMITTER, False, False, True, f"dkim d={SUBMITTER} s=sel"),
        ("s=tlsrpt; ", "example", False, False, False, "not the submitter"),
        ("s=email:tlsrpt; ", SUBMITTER, False, False, True, f"dkim d={SUBMITTER} s=sel"),
        ("s=email; ", SUBMITTER, False, False, False, "the key's s= does not allow tlsrpt"),
        ("s=email:other; ", SUBMITTER, False, False, False, "s=sel: unusable key"),
        ("s=tlsrpt; ", SUBMITTER, True, False, False, "has an l= tag"),
        ("s=tlsrpt; ", SUBMITTER, False, True, False, "body hash mismatch"),
        ("s=tlsrpt; ", "other.example", False, False, False, "not the submitter"),
    ],
)
def test_which_signatures_count(
    rsa_key: tuple[bytes, str],
    service: str,
    signer: str,
    length: bool,
    tamper: bool,
    verified: bool,
    reason: str,
) -> None:
    private, public = rsa_key
    signed = _sign(MESSAGE, private, domain=signer, length=length)
    if tamper:
        signed = signed.replace(b"This is an aggregate", b"This is a forged")
    lookup = _lookup({f"sel._domainkey.{signer}": f"v=DKIM1; k=rsa; {service}p={public}"})
    verdict = verify(signed, SUBMITTER, lookup)
    assert verdict.verified is verified
    assert reason in verdict.auth


def test_unsigned_mail_is_not_verified() -> None:
    verdict = verify(MESSAGE, SUBMITTER, _lookup({}))
    assert (verdict.verified, verdict.auth) == (False, "no DKIM signature")


def test_a_key_that_is_not_published_does_not_verify(rsa_key: tuple[bytes, str]) -> None:
    verdict = verify(_sign(MESSAGE, rsa_key[0]), SUBMITTER, _lookup({}))
    assert not verdict.verified
    assert f"dkim d={SUBMITTER} s=sel:" in verdict.auth


def _ingester(tmp_path: Path, unverified: str, records: dict[str, str]) -> Ingester:
    config = report_tree(tmp_path, unverified=unverified)
    ingester = make_ingester(config, Store(config.reports_db))
    ingester.lookup = _lookup(records)
    return ingester


def _mail(ingester: Ingester, message: bytes) -> str:
    with ingester.store.transaction() as conn:
        return ingester.message(conn, message, Envelope(MAIL, origin="test")).outcome


def test_require_keeps_unverified_mail_aside(tmp_path: Path) -> None:
    ingester = _ingester(tmp_path, "require", {})
    assert _mail(ingester, MESSAGE) == UNVERIFIED
    conn = ingester.store.conn
    assert conn.execute("SELECT count(*) FROM report").fetchone() == (0,)
    assert conn.execute("SELECT outcome, reason, domains FROM raw").fetchone() == (
        UNVERIFIED,
        "no DKIM signature",
        "example.com",
    )


def test_record_stores_unverified_mail_marked_as_such(
    tmp_path: Path, rsa_key: tuple[bytes, str]
) -> None:
    private, public = rsa_key
    ingester = _ingester(
        tmp_path, "record", {f"sel._domainkey.{SUBMITTER}": f"v=DKIM1; s=tlsrpt; p={public}"}
    )
    assert _mail(ingester, MESSAGE) == STORED
    conn = ingester.store.conn
    assert conn.execute("SELECT verified FROM report").fetchone() == (0,)
    assert conn.execute("SELECT verified FROM result").fetchone() == (0,)
    # The same report, now signed: a duplicate that makes the stored one verified.
    assert _mail(ingester, _sign(MESSAGE, private)) == DUPLICATE
    assert conn.execute("SELECT verified, copies FROM report").fetchone() == (1, 2)
    assert conn.execute("SELECT verified FROM result").fetchone() == (1,)
    # The daily totals moved from unverified to verified with it.
    assert conn.execute("SELECT verified, reports FROM daily ORDER BY verified").fetchall() == [
        (0, 0),
        (1, 1),
    ]


def test_require_stores_verified_mail(tmp_path: Path, rsa_key: tuple[bytes, str]) -> None:
    private, public = rsa_key
    ingester = _ingester(
        tmp_path, "require", {f"sel._domainkey.{SUBMITTER}": f"v=DKIM1; s=tlsrpt; p={public}"}
    )
    assert _mail(ingester, _sign(MESSAGE, private)) == STORED
    row = ingester.store.conn.execute("SELECT verified, channel FROM report").fetchone()
    assert row == (1, MAIL)
    auth = ingester.store.conn.execute("SELECT auth FROM raw").fetchone()
    assert auth == (f"dkim d={SUBMITTER} s=sel",)
