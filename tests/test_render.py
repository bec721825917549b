"""Canonical policy bytes (RFC 8461 section 3.2), checked against golden files."""

from __future__ import annotations

import pytest
from support.layout import GOLDEN

from policy_host.model import InvalidValue, Policy
from policy_host.read.config import ProviderConfig
from policy_host.read.tenants import load_tenants
from policy_host.render import fingerprint, render


@pytest.mark.parametrize("domain", ["example.com", "example.net", "example.org"])
def test_example_tenants_render_to_golden_bytes(config: ProviderConfig, domain: str) -> None:
    tenants = load_tenants(config).tenants
    assert render(tenants[domain].policy) == (GOLDEN / f"{domain}.txt").read_bytes()


def test_rendering_is_canonical_and_strict() -> None:
    body = render(Policy("enforce", ("mx1.example.com", "*.example.net"), 604800))
    assert body.startswith(b"version: STSv1\r\n")
    assert body.endswith(b"max_age: 604800\r\n")
    lines = body.split(b"\r\n")
    assert lines[-1] == b""
    assert all(line and line == line.strip() for line in lines[:-1])
    assert b"\n" not in body.replace(b"\r\n", b"")
    assert body.isascii() and not body.startswith(b"\xef\xbb\xbf")
    assert [line.split(b": ")[0] for line in lines[:-1]] == [
        b"version",
        b"mode",
        b"mx",
        b"mx",
        b"max_age",
    ]


def test_same_policy_same_bytes_and_fingerprint() -> None:
    a = Policy("testing", ("a.example.com",), 86400)
    b = Policy("testing", ("a.example.com",), 86400)
    assert render(a) == render(b)
    assert fingerprint(render(a)) == fingerprint(render(b))
    assert fingerprint(render(a)) != fingerprint(render(Policy("enforce", a.mx, a.max_age)))


def test_mx_order_is_kept_as_written() -> None:
    body = render(Policy("enforce", ("b.example.com", "a.example.com"), 86400))
    assert body.index(b"b.example.com") < body.index(b"a.example.com")


@pytest.mark.parametrize(
    ("mode", "mx", "max_age", "message"),
    [
        ("enforced", ("a.example.com",), 86400, "mode: expected one of"),
        ("enforce", (), 86400, "mx: at least one pattern"),
        ("testing", ("a.example.com",), -1, "max_age: expected 0..31557600"),
        ("testing", ("a.example.com",), 31557601, "max_age: expected 0..31557600"),
        ("enforce", ("not a host!",), 86400, "mx: 'not a host!' is not an mx pattern"),
        ("enforce", ("Mail.Example.COM",), 86400, "is not an mx pattern in A-label form"),
        ("enforce", ("mx.bücher.de",), 86400, "is not an mx pattern in A-label form"),
        ("enforce", ("*.*.example.com",), 86400, "is not an mx pattern"),
        ("enforce", ("mail.example.com.",), 86400, "is not an mx pattern"),
        ("enforce", ("mx.example.123",), 86400, "is not an mx pattern"),
        ("enforce", (42,), 86400, "is not an mx pattern"),
        ("enforce", ["a.example.com"], 86400, "mx: expected a tuple of patterns"),
        ("enforce", ("a.example.com",), 1.5, "max_age: expected 0..31557600 .got 1.5"),
        ("enforce", ("a.example.com",), 86400.0, "max_age: expected 0..31557600"),
        ("enforce", ("a.example.com",), True, "max_age: expected 0..31557600 .got True"),
        ("enforce", ("a.example.com",), "86400", "max_age: expected 0..31557600"),
    ],
)
def test_policy_refuses_invalid_fields(
    mode: str, mx: tuple[str, ...], max_age: int, message: str
) -> None:
    with pytest.raises(InvalidValue, match=message):
        Policy(mode, mx, max_age)


@pytest.mark.parametrize(
    "mx",
    [
        ("a.example.com",),
        ("*.example.com", "mx.xn--bcher-kva.de", "*.mail.protection.outlook.com"),
        ("123.example.com", "a-b.example.com"),
    ],
)
def test_policy_takes_patterns_in_their_final_form(mx: tuple[str, ...]) -> None:
    assert Policy("enforce", mx, 86400).mx == mx


def test_policy_none_needs_no_mx() -> None:
    assert render(Policy("none", (), 0)) == b"version: STSv1\r\nmode: none\r\nmax_age: 0\r\n"
