"""Report files from the corpus (tests/reports/corpus), each with the outcome
tests/reports/expected.txt names, every RFC 8460 field kept by name, and
hostile input refused within bounded time and memory."""

from __future__ import annotations

import datetime
import json
import time
import tracemalloc
import zlib
from pathlib import Path

import pytest
from support.reportenv import CORPUS, EXPECTED, Store, ingest_paths, make_ingester, report_tree

from policy_host.read.config import ProviderConfig
from policy_host.reports.ingest import Ingester
from policy_host.reports.model import FILE, Envelope
from policy_host.reports.parse import Refused, parse_report
from policy_host.reports.schema import DUPLICATE, NOT_REPORT, REFUSED, STORED


def _expected() -> list[tuple[str, str, str]]:
    rows = []
    for line in EXPECTED.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, outcome, detail = (part.strip() for part in line.split("|"))
            rows.append((name, outcome, detail))
    return rows


@pytest.fixture
def config(tmp_path: Path) -> ProviderConfig:
    return report_tree(tmp_path)


@pytest.fixture
def ingester(config: ProviderConfig) -> Ingester:
    return make_ingester(config, Store(config.reports_db))


def _quirks(store: Store, organization: str, report_id: str) -> str:
    row = store.conn.execute(
        "SELECT quirks FROM report WHERE organization = ? AND report_id = ?",
        (organization, report_id),
    ).fetchone()
    return str(row[0]) if row else ""


def test_every_corpus_file_is_listed_in_expected() -> None:
    assert sorted(p.name for p in CORPUS.iterdir()) == sorted(n for n, _, _ in _expected())


@pytest.mark.parametrize(("name", "outcome", "detail"), _expected(), ids=lambda v: str(v)[:40])
def test_corpus_file_has_its_outcome(
    ingester: Ingester, name: str, outcome: str, detail: str
) -> None:
    [result] = ingest_paths(ingester, [CORPUS / name])
    assert result.outcome == outcome
    if outcome == STORED:
        assert _quirks(ingester.store, result.organization, result.report_id) == detail
    else:
        assert detail in result.reason
        # Never silently dropped: the raw bytes are kept with the reason.
        row = ingester.store.conn.execute("SELECT outcome, reason, id FROM raw").fetchone()
        assert (row[0], row[1]) == (outcome, result.reason)
        assert ingester.store.raw_body(row[2]) == (CORPUS / name).read_bytes()


def test_every_rfc_field_is_stored_under_its_name(ingester: Ingester) -> None:
    ingest_paths(ingester, [CORPUS / "every-field.json"])
    conn = ingester.store.conn
    report = conn.execute(
        "SELECT organization, report_id, contact, start, end FROM report"
    ).fetchone()
    day = datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC).timestamp()
    assert report == (
        "Example Sender Inc.",
        "every-field-1",
        "tlsrpt@sender.example",
        day,
        day + 86_399,
    )
    result = conn.execute(
        "SELECT domain, policy_type, policy_string, mx_host, success, failure FROM result"
    ).fetchone()
    assert result[:2] == ("example.com", "sts")
    assert json.loads(result[2]) == [
        "version: STSv1",
        "mode: testing",
        "mx: mx1.example.com",
        "max_age: 86400",
    ]
    assert json.loads(result[3]) == ["mx1.example.com", "*.mx.example.com"]
    assert result[4:] == (95, 5)
    details = conn.execute(
        "SELECT result_type, count, sending_mta_ip, receiving_mx_hostname, receiving_mx_helo, "
        "receiving_ip, additional_information, failure_reason_code FROM detail ORDER BY rowid"
    ).fetchall()
    assert details == [
        (
            "certificate-expired",
            3,
            "2001:db8::25",
            "mx1.example.com",
            "mx1.example.com",
            "192.0.2.25",
            "https://sender.example/tlsrpt/help",
            "X509_V_ERR_CERT_HAS_EXPIRED",
        ),
        ("sts-policy-fetch-error", 2, "198.51.100.7", "mx2.example.com", None, None, None, None),
    ]


@pytest.mark.parametrize(
    ("name", "column", "expected"),
    [
        ("datetime-without-zone.json", "r.start", 1_796_083_200.0),
        ("mx-host-string.json", "r.mx_host", '["mx1.example.com"]'),
        ("domain-case.json", "r.domain", "example.org"),
        ("domain-u-label.json", "r.domain", "xn--bcher-kva.example"),
        ("sender.example!example.net!1764547200!1764633599.json", "r.domain", "example.net"),
        ("totals-disagree.json", "r.failure", 7),
        ("totals-disagree.json", "(SELECT sum(count) FROM detail)", 3),
        ("empty-ip.json", "(SELECT count(*) FROM detail WHERE receiving_ip IS NULL)", 2),
        (
            "unknown-result-type.json",
            "(SELECT result_type FROM detail)",
            "quantum-entanglement-failure",
        ),
        ("contact-info-null.json", "p.contact", None),
    ],
)
def test_quirk_is_read_as_meant(
    ingester: Ingester, name: str, column: str, expected: object
) -> None:
    ingest_paths(ingester, [CORPUS / name])
    row = ingester.store.conn.execute(
        f"SELECT {column} FROM result r JOIN report p ON p.id = r.report"
    ).fetchone()
    assert row[0] == expected


def test_a_duplicate_is_stored_once(ingester: Ingester) -> None:
    first, second = ingest_paths(ingester, [CORPUS / "every-field.json"] * 2)
    assert (first.outcome, second.outcome) == (STORED, DUPLICATE)
    conn = ingester.store.conn
    assert conn.execute("SELECT count(*), max(copies) FROM report").fetchone() == (1, 2)
    assert conn.execute("SELECT count(*) FROM result").fetchone() == (1,)
    assert conn.execute("SELECT count(*) FROM raw").fetchone() == (1,)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-12-01T00:00:00Z", 1_796_083_200.0),
        ("2026-12-01t00:00:00z", 1_796_083_200.0),
        ("2026-12-01T01:00:00+01:00", 1_796_083_200.0),
        ("2026-12-01T01:00:00+0100", 1_796_083_200.0),
        ("2026-12-01T00:00:00.1234567Z", 1_796_083_200.123456),
        ("2026-12-01 00:00:00", 1_796_083_200.0),
    ],
)
def test_datetimes_senders_write(text: str, expected: float) -> None:
    doc = {
        "organization-name": "o",
        "report-id": "r",
        "date-range": {"start-datetime": text, "end-datetime": "2026-12-02T00:00:00Z"},
        "policies": [],
    }
    report = parse_report(json.dumps(doc).encode(), Envelope(FILE))
    assert report.start == pytest.approx(expected)


@pytest.mark.parametrize("text", ["2026-13-01T00:00:00Z", "yesterday", "", "2026-12-01"])
def test_impossible_datetimes_are_refused(text: str) -> None:
    doc = {
        "organization-name": "o",
        "report-id": "r",
        "date-range": {"start-datetime": text, "end-datetime": "2026-12-02T00:00:00Z"},
    }
    with pytest.raises(Refused, match="start-datetime"):
        parse_report(json.dumps(doc).encode(), Envelope(FILE))


# -- hostile input ---------------------------------------------------------

CAP = 10 * 1024 * 1024


def _gzip_bomb(size: int) -> bytes:
    """``size`` bytes of a JSON-looking body, gzip-compressed to a few hundred KiB."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    parts = [packer.compress(b'{"organization-name": "')]
    block = b"A" * (1024 * 1024)
    parts.extend(packer.compress(block) for _ in range(size // len(block)))
    parts.append(packer.flush())
    return b"".join(parts)


def _bounded(ingester: Ingester, body: bytes, *, labelled_gzip: bool) -> tuple[str, str, int]:
    tracemalloc.start()
    began = time.monotonic()
    try:
        with ingester.store.transaction() as conn:
            outcome = ingester.report_body(
                conn, body, Envelope(FILE, origin="hostile"), labelled_gzip=labelled_gzip
            )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.monotonic() - began < 20
    return outcome.outcome, outcome.reason, peak


def test_gzip_bomb_is_refused_without_inflating_past_the_cap(ingester: Ingester) -> None:
    bomb = _gzip_bomb(1024 * 1024 * 1024)  # 1 GiB inflated
    assert len(bomb) < 2 * 1024 * 1024
    outcome, reason, peak = _bounded(ingester, bomb, labelled_gzip=True)
    assert (outcome, reason) == (REFUSED, f"decompressed report is larger than {CAP} bytes")
    assert peak < 3 * CAP


def test_fifty_megabyte_json_is_refused(ingester: Ingester) -> None:
    body = b'{"organization-name": "' + b"x" * (50 * 1024 * 1024) + b'"}'
    outcome, reason, peak = _bounded(ingester, body, labelled_gzip=False)
    assert (outcome, reason) == (REFUSED, f"report is larger than {CAP} bytes")
    assert peak < 2 * len(body)


def test_deep_nesting_is_refused(ingester: Ingester) -> None:
    body = b'{"a":' * 200_000 + b"1" + b"}" * 200_000
    outcome, reason, _ = _bounded(ingester, body, labelled_gzip=False)
    assert (outcome, reason) == (REFUSED, "JSON nested too deeply")


def test_mail_with_a_thousand_parts_is_kept_aside(ingester: Ingester) -> None:
    boundary = "b0und"
    parts = "".join(
        f"--{boundary}\r\nContent-Type: text/plain\r\n\r\npart {i}\r\n" for i in range(1000)
    )
    message = (
        "From: x@spam.example\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=tlsrpt; boundary="{boundary}"\r\n\r\n'
        f"{parts}--{boundary}--\r\n"
    ).encode()
    with ingester.store.transaction() as conn:
        outcome = ingester.message(conn, message, Envelope("mail", origin="test"))
    assert (outcome.outcome, outcome.reason) == (NOT_REPORT, "more than 50 MIME parts")


def test_hostile_inputs_lose_nothing_else(ingester: Ingester) -> None:
    """Everything in the corpus plus the hostile bodies, in one store: each
    input has its raw row, and the good reports are all there."""
    paths = sorted(CORPUS.iterdir())
    outcomes = ingest_paths(ingester, paths)
    _bounded(ingester, _gzip_bomb(64 * 1024 * 1024), labelled_gzip=True)
    again = ingest_paths(ingester, [CORPUS / "every-field.json"])
    assert [o.outcome for o in again] == [DUPLICATE]
    expected = {name: outcome for name, outcome, _ in _expected()}
    assert [o.outcome for o in outcomes] == [expected[p.name] for p in paths]
    conn = ingester.store.conn
    stored = sum(1 for o in outcomes if o.outcome == STORED)
    assert conn.execute("SELECT count(*) FROM report").fetchone() == (stored,)
    assert conn.execute("SELECT count(*) FROM raw").fetchone() == (len(paths) + 1,)
