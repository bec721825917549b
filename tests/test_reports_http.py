"""TLS reports by HTTPS POST (RFC 8460 section 3) to the app: 2xx only once
stored, 413 past the caps (compressed or not), 4xx for garbage, 503 when the
store is unavailable; the policy GET path is untouched."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from support.reportenv import CORPUS, report_tree

from policy_host.read.config import ProviderConfig
from policy_host.reports.store import Store
from policy_host.serve.compiler import compile_snapshot
from policy_host.serve.web import create_app

PATH = "/v1/report"
HOST = "tlsrpt.provider.example"
GZIP = "application/tlsrpt+gzip"
JSON = "application/tlsrpt+json"


@pytest.fixture
def config(tmp_path: Path) -> ProviderConfig:
    return report_tree(tmp_path)


@pytest.fixture
def client(config: ProviderConfig) -> FlaskClient:
    compile_snapshot(config)
    app = create_app(snapshot_path=config.snapshot_path, reports_config=config)
    return app.test_client()


def _post(
    client: FlaskClient, body: bytes, media_type: str = GZIP, host: str = HOST
) -> tuple[int, str]:
    answer = client.post(
        PATH, data=body, content_type=media_type, headers={"X-Real-IP": "192.0.2.9", "Host": host}
    )
    return answer.status_code, answer.get_data(as_text=True).strip()


def test_a_report_is_stored_once(client: FlaskClient, config: ProviderConfig) -> None:
    body = (CORPUS / "gzip.json.gz").read_bytes()
    assert _post(client, body) == (200, "accepted")
    assert _post(client, body) == (200, "accepted")
    with Store(config.reports_db) as store:
        row = store.conn.execute("SELECT channel, origin, verified FROM raw").fetchone()
        assert store.conn.execute("SELECT copies FROM report").fetchall() == [(2,)]
        assert store.outcomes() == {"stored": 1}
    assert row == ("https", "192.0.2.9", 0)


def test_a_report_for_no_hosted_domain_gets_the_same_answer(
    client: FlaskClient, config: ProviderConfig
) -> None:
    """Stored, a copy, or for a domain we do not host: one answer, so the
    endpoint does not tell who our customers are."""
    foreign = (CORPUS / "foreign.json").read_bytes()
    answers = {_post(client, foreign, JSON) for _ in range(2)}
    ours = (CORPUS / "every-field.json").read_bytes()
    answers |= {_post(client, ours, JSON) for _ in range(2)}
    assert answers == {(200, "accepted")}
    with Store(config.reports_db) as store:
        assert store.outcomes() == {"foreign": 2, "stored": 1}


@pytest.mark.parametrize(
    ("name", "media_type", "expected"),
    [
        ("every-field.json", JSON, (200, "accepted")),
        ("plain-json-labelled.json.gz", GZIP, (200, "accepted")),
        ("foreign.json", JSON, (200, "accepted")),
        ("refused-not-json.json", JSON, (400, "refused: not JSON")),
        ("refused-corrupt.json.gz", GZIP, (400, "refused: gzip data is truncated")),
        ("every-field.json", "text/plain", (415, "expected application/tlsrpt+gzip")),
    ],
)
def test_answers(
    client: FlaskClient, name: str, media_type: str, expected: tuple[int, str]
) -> None:
    status, text = _post(client, (CORPUS / name).read_bytes(), media_type)
    assert (status, text[: len(expected[1])]) == expected


def test_too_large_is_413_before_reading(client: FlaskClient) -> None:
    assert _post(client, b"{" + b" " * (11 * 1024 * 1024) + b"}", JSON) == (
        413,
        "report larger than 10485760 bytes",
    )


def test_gzip_bomb_is_413(client: FlaskClient) -> None:
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    bomb = packer.compress(b"{" + b" " * (64 * 1024 * 1024)) + packer.flush()
    assert _post(client, bomb) == (
        413,
        "refused: decompressed report is larger than 10485760 bytes",
    )


def test_store_unavailable_is_503(client: FlaskClient, config: ProviderConfig) -> None:
    config.reports_db.mkdir(parents=True)
    body = gzip.compress((CORPUS / "every-field.json").read_bytes())
    assert _post(client, body) == (503, "cannot store the report now; try again later")


def test_only_post_reaches_the_report_path(client: FlaskClient) -> None:
    assert client.get(PATH, headers={"Host": HOST}).status_code == 405
    policy = client.get("/.well-known/mta-sts.txt", headers={"Host": "mta-sts.example.com"})
    assert policy.status_code == 200
    assert policy.data.startswith(b"version: STSv1\r\n")
    assert client.post("/.well-known/mta-sts.txt").status_code == 405


def test_without_an_https_rua_there_is_no_report_route(tmp_path: Path) -> None:
    config = report_tree(tmp_path)
    config.path.write_text(
        config.path.read_text().replace(", https://tlsrpt.provider.example/v1/report", "")
    )
    from policy_host.read.config import load_config

    plain = load_config(config.path)
    compile_snapshot(plain)
    app = create_app(snapshot_path=plain.snapshot_path, reports_config=plain)
    assert app.test_client().post(PATH, data=b"{}", content_type=JSON).status_code == 404


@pytest.mark.parametrize("host", [HOST, "TLSRPT.Provider.Example.", f"{HOST}:443"])
def test_the_report_host_takes_reports_in_any_spelling(
    client: FlaskClient, config: ProviderConfig, host: str
) -> None:
    body = (CORPUS / "gzip.json.gz").read_bytes()
    assert _post(client, body, host=host) == (200, "accepted")
    with Store(config.reports_db) as store:
        assert store.outcomes() == {"stored": 1}


@pytest.mark.parametrize(
    "host", ["mta-sts.example.com", "localhost", "tlsrpt.provider.example.evil"]
)
def test_reports_to_any_other_host_are_404_and_not_stored(
    client: FlaskClient, config: ProviderConfig, host: str
) -> None:
    body = (CORPUS / "gzip.json.gz").read_bytes()
    assert _post(client, body, host=host) == (404, "not found")
    assert not config.reports_db.exists()


def test_an_unreadable_state_is_503_and_read_again_once_fixed(
    client: FlaskClient, config: ProviderConfig
) -> None:
    config.state_db.parent.mkdir(parents=True, exist_ok=True)
    config.state_db.write_bytes(b"not an SQLite database, " * 100)
    body = (CORPUS / "gzip.json.gz").read_bytes()
    assert _post(client, body) == (503, "cannot store the report now; try again later")
    config.state_db.unlink()
    assert _post(client, body) == (200, "accepted")
