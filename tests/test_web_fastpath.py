"""The fast paths answer exactly as the code they short-cut.

- ``web.PolicyFastPath`` (a bare WSGI callable in front of Flask) gives the
  same status, headers and body as the Flask view for every request;
- ``model.hostname``'s quick acceptance of plain names agrees with the full
  rules for any text.
"""

from __future__ import annotations

import pytest
from flask import Flask
from hypothesis import given
from hypothesis import strategies as st

from policy_host import model
from policy_host.model import InvalidValue, hostname
from policy_host.serve.web import PolicyFastPath, create_app

POLICIES = {
    "mta-sts.example.com": (
        b"version: STSv1\r\nmode: enforce\r\nmx: mx.example.com\r\nmax_age: 604800\r\n"
    ),
    "mta-sts.xn--bcher-kva.example": b"version: STSv1\r\nmode: none\r\nmax_age: 86400\r\n",
}

HOSTS = [
    "mta-sts.example.com",
    "MTA-STS.Example.COM",
    "mta-sts.example.com.",
    "mta-sts.example.com:443",
    "mta-sts.example.com:",
    "mta-sts.example.com:x",
    "mta-sts.xn--bcher-kva.example",
    "mta-sts.unknown.example",
    "example.com",
    "",
    "[::1]",
    "mta-sts.example.com\u00e9",
]
PATHS = [
    "/.well-known/mta-sts.txt",
    "/.well-known/mta-sts.txt/",
    "//.well-known/mta-sts.txt",
    "/.well-known/mta-sts.txt?x=1",
    "/.well-known/MTA-STS.txt",
    "/",
]
METHODS = ["GET", "HEAD", "POST", "OPTIONS", "PUT"]


@pytest.fixture(scope="module")
def apps() -> tuple[Flask, Flask]:
    fast = create_app(POLICIES)
    plain = create_app(POLICIES, fast_path=False)
    assert isinstance(fast.wsgi_app, PolicyFastPath)
    assert not isinstance(plain.wsgi_app, PolicyFastPath)
    return fast, plain


def answer(app: Flask, method: str, path: str, host: str, raw_uri: str | None) -> object:
    # PATH_INFO as a server hands it over ("//x" in a URL would name a host).
    path_info, _, query = path.partition("?")
    environ = {"HTTP_HOST": host, "PATH_INFO": path_info, "QUERY_STRING": query}
    if raw_uri is not None:
        environ["RAW_URI"] = raw_uri
    response = app.test_client().open("/", method=method, environ_overrides=environ)
    return response.status, response.headers.to_wsgi_list(), response.get_data()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("host", HOSTS)
def test_the_fast_path_answers_as_the_view(
    apps: tuple[Flask, Flask], method: str, path: str, host: str
) -> None:
    fast, plain = apps
    assert answer(fast, method, path, host, None) == answer(plain, method, path, host, None)


@pytest.mark.parametrize(
    "raw_uri",
    [
        "http://mta-sts.example.com/.well-known/mta-sts.txt",
        "https://MTA-STS.EXAMPLE.COM:443/.well-known/mta-sts.txt",
        "http://mta-sts.unknown.example/.well-known/mta-sts.txt",
        "/.well-known/mta-sts.txt",
    ],
)
def test_absolute_form_targets_name_the_host_on_both_paths(
    apps: tuple[Flask, Flask], raw_uri: str
) -> None:
    fast, plain = apps
    for method in ("GET", "HEAD"):
        got = answer(fast, method, "/.well-known/mta-sts.txt", "mta-sts.unknown.example", raw_uri)
        want = answer(plain, method, "/.well-known/mta-sts.txt", "mta-sts.unknown.example", raw_uri)
        assert got == want


def full_rules(text: str) -> model.Hostname | str:
    try:
        return model._hostname(text, "name")
    except InvalidValue as exc:
        return str(exc)


def quick_or_full(text: str) -> model.Hostname | str:
    try:
        return hostname(text)
    except InvalidValue as exc:
        return str(exc)


@given(st.text(alphabet="ab0-.xnZ\u00fc", max_size=40))
def test_hostname_quick_path_agrees_with_every_rule(text: str) -> None:
    assert quick_or_full(text) == full_rules(text)


@pytest.mark.parametrize(
    "text",
    [
        "mx.example.com",
        "a.b",
        "1.example",
        "a-b.c-d.example",
        "example.123",
        "x" * 63 + ".com",
        "x" * 64 + ".com",
        ".".join(["abcdefghi"] * 26),
        "ab--c.example",
        "a.b-",
    ],
)
def test_hostname_quick_path_edges(text: str) -> None:
    assert quick_or_full(text) == full_rules(text)
