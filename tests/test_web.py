"""The view, through Flask's test client: Host normalisation and refusals."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient
from support.layout import GOLDEN

from policy_host.serve.web import create_app, normalise_host

PATH = "/.well-known/mta-sts.txt"
ALL_DOMAINS = ("example.com", "example.net", "example.org")


@pytest.mark.parametrize("domain", ALL_DOMAINS)
def test_each_tenant_gets_exact_bytes(client: FlaskClient, domain: str) -> None:
    response = client.get(PATH, headers={"Host": f"mta-sts.{domain}"})
    body = (GOLDEN / f"{domain}.txt").read_bytes()
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    assert response.headers["Content-Length"] == str(len(body))
    assert response.data == body


def test_head_has_headers_and_no_body(client: FlaskClient) -> None:
    response = client.head(PATH, headers={"Host": "mta-sts.example.com"})
    assert response.status_code == 200
    assert response.headers["Content-Length"] == str(len((GOLDEN / "example.com.txt").read_bytes()))
    assert response.data == b""


@pytest.mark.parametrize(
    "host",
    [
        "MTA-STS.EXAMPLE.COM",
        "mta-sts.example.com:443",
        "mta-sts.example.com.",
        "Mta-Sts.Example.Com.:8080",
    ],
)
def test_host_is_case_insensitive_and_port_and_dot_are_ignored(
    client: FlaskClient, host: str
) -> None:
    response = client.get(PATH, headers={"Host": host})
    assert response.status_code == 200
    assert response.data == (GOLDEN / "example.com.txt").read_bytes()


HOSTILE_HOSTS = [
    "example.com",
    "mta-sts.",
    "mta-sts",
    "mta-sts.unknown.example",
    "www.example.com",
    "mta-sts.example.com..",
    "mta-sts.example.com:",
    "mta-sts.example.com:http",
    "mta-sts.example.com:99999999",
    "mta-sts.example.com/..",
    "mta-sts.example.com\x00",
    "../mta-sts.example.com",
    "mta-sts.example.com.evil.net",
    "evil.mta-sts.example.com",
    "mta-sts.bücher.example",
    "[::1]:80",
    "user@mta-sts.example.com",
    "a" * 300,
    "mta-sts." + "a." * 140 + "com",
    "",
]


@pytest.mark.parametrize("host", HOSTILE_HOSTS)
def test_hostile_or_unknown_hosts_get_a_plain_404(client: FlaskClient, host: str) -> None:
    response = client.get(PATH, headers={"Host": host})
    assert response.status_code in (400, 404)
    assert b"STSv1" not in response.data
    assert b"example" not in response.data
    assert "Location" not in response.headers


@pytest.mark.parametrize(
    "path",
    ["/", "/.well-known/", "/.well-known/mta-sts.txt/", "/.well-known/MTA-STS.TXT", "/mta-sts.txt"],
)
def test_other_paths_get_404(client: FlaskClient, path: str) -> None:
    response = client.get(path, headers={"Host": "mta-sts.example.com"})
    assert response.status_code == 404
    assert b"STSv1" not in response.data


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_other_methods_get_405(client: FlaskClient, method: str) -> None:
    response = client.open(PATH, method=method, headers={"Host": "mta-sts.example.com"})
    assert response.status_code == 405
    assert response.headers["Allow"] == "GET, HEAD"


def test_query_string_does_not_change_the_answer(client: FlaskClient) -> None:
    response = client.get(PATH + "?x=1", headers={"Host": "mta-sts.example.com"})
    assert response.data == (GOLDEN / "example.com.txt").read_bytes()


def test_lookup_is_from_memory_not_files() -> None:
    app = create_app({"mta-sts.a.example": b"version: STSv1\r\nmode: none\r\nmax_age: 0\r\n"})
    response = app.test_client().get(PATH, headers={"Host": "mta-sts.a.example"})
    assert response.data.startswith(b"version: STSv1")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("MTA-STS.Example.COM.", "mta-sts.example.com"),
        ("mta-sts.example.com:8443", "mta-sts.example.com"),
        ("mta-sts.example.com", "mta-sts.example.com"),
        ("example.com", None),
        ("mta-sts.example.com:x", None),
        ("[::1]", None),
        ("x" * 271, None),
        ("mta-sts.bücher.example", None),
    ],
)
def test_normalise_host(raw: str, expected: str | None) -> None:
    assert normalise_host(raw) == expected
