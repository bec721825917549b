"""Host names, mx patterns and RFC 8461 section 4.1 matching, as tables."""

from __future__ import annotations

import pytest

from policy_host.model import InvalidValue, check_rua, hostname, mx_matches, mx_pattern

VALID_PATTERNS = [
    ("mail.example.com", "mail.example.com", False),
    ("MAIL.Example.COM", "mail.example.com", False),
    ("*.example.com", "*.example.com", False),
    ("*.mail.protection.outlook.com", "*.mail.protection.outlook.com", False),
    ("mx.bücher.de", "mx.xn--bcher-kva.de", True),
    ("*.bücher.de", "*.xn--bcher-kva.de", True),
    ("mx.xn--bcher-kva.de", "mx.xn--bcher-kva.de", False),
    ("a-b.example.com", "a-b.example.com", False),
    ("123.example.com", "123.example.com", False),
]


@pytest.mark.parametrize(("written", "ascii_form", "converted"), VALID_PATTERNS)
def test_valid_mx_patterns_normalise(written: str, ascii_form: str, converted: bool) -> None:
    pattern = mx_pattern(written)
    assert pattern.ascii == ascii_form
    assert (pattern.written is not None) == converted


INVALID_PATTERNS = [
    ("*.*.example.com", "'*' may only be the whole leftmost label"),
    ("*example.com", "'*' may only be the whole leftmost label"),
    ("mail.*.example.com", "'*' may only be the whole leftmost label"),
    ("*", "'*' may only be the whole leftmost label"),
    ("example..com", "has an empty label"),
    (".example.com", "has an empty label"),
    ("mail.example.com.", "must not end with a dot"),
    ("", "is empty"),
    ("localhost", "needs at least two labels"),
    ("*.com", "needs at least two labels"),
    ("mail_1.example.com", "may hold only letters, digits and inner hyphens"),
    ("-mail.example.com", "may hold only letters, digits and inner hyphens"),
    ("mail-.example.com", "may hold only letters, digits and inner hyphens"),
    ("mail example.com", "may hold only letters, digits and inner hyphens"),
    ("192.0.2.1", "looks like an address"),
    ("ab--cd.example.com", "reserved for A-labels"),
    ("xn--zz.example.com", "is not a valid A-label"),
    ("a" * 64 + ".example.com", "the limit is 63"),
    (".".join(["a" * 63] * 4) + ".com", "the limit is 253"),
    ("mail.exa\u200bmple.com", "changes under IDNA mapping"),
    ("mail.\uff45xample.com", "changes under IDNA mapping"),
    ("mail.ex\u00a0ample.com", "is not a valid IDN"),
]


@pytest.mark.parametrize(("written", "message"), INVALID_PATTERNS)
def test_invalid_mx_patterns_are_refused_with_reason(written: str, message: str) -> None:
    with pytest.raises(InvalidValue, match=message.replace("*", r"\*").replace(".", r"\.")):
        mx_pattern(written)


MATCHES = [
    # RFC 8461 section 4.1 cases.
    ("mail.example.com", "mail.example.com", True),
    ("mail.example.com", "MAIL.EXAMPLE.COM.", True),
    ("mail.example.com", "mail.example.com.evil.net", False),
    ("mail.example.com", "evilmail.example.com", False),
    ("mail.example.com", "x.mail.example.com", False),
    ("*.example.com", "a.example.com", True),
    ("*.example.com", "A.Example.Com.", True),
    ("*.example.com", "example.com", False),
    ("*.example.com", "a.b.example.com", False),
    ("*.example.com", "a.example.com.evil.net", False),
    ("*.example.com", ".example.com", False),
    ("*.example.com", "aexample.com", False),
    # Microsoft 365: the newer hosts sit two labels below mx.microsoft.
    ("*.mx.microsoft", "example-com.a-v1.mx.microsoft", False),
    ("*.a-v1.mx.microsoft", "example-com.a-v1.mx.microsoft", True),
    ("*.mail.protection.outlook.com", "example-com.mail.protection.outlook.com", True),
    ("*.mx.microsoft", "a-v1.mx.microsoft", True),
    ("*.a-v1.mx.microsoft", "a-v1.mx.microsoft", False),
    ("*.a-v1.mx.microsoft", "example-com.b-v1.mx.microsoft", False),
    # Case and a final dot do not matter on either side.
    ("MAIL.Example.COM", "mail.example.com", True),
    ("*.EXAMPLE.com", "a.example.COM.", True),
    ("mail.example.com.", "mail.example.com", True),
    ("", "example.com", False),
    ("example.com", "", False),
]


@pytest.mark.parametrize(("pattern", "host", "expected"), MATCHES)
def test_mx_matching_follows_rfc8461_section_4_1(pattern: str, host: str, expected: bool) -> None:
    assert mx_matches(pattern, host) is expected


def test_idn_domain_is_converted_and_said() -> None:
    name = hostname("Bücher.example")
    assert name.ascii == "xn--bcher-kva.example"
    assert name.written == "Bücher.example"
    assert hostname("EXAMPLE.com").written is None


@pytest.mark.parametrize(
    "uri",
    ["mailto:tls@example.com", "https://reports.example.com/tlsrpt"],
)
def test_rua_accepts_mailto_and_https(uri: str) -> None:
    assert check_rua(uri) == uri


@pytest.mark.parametrize(
    ("uri", "canonical"),
    [
        ("MAILTO:tls@example.com", "mailto:tls@example.com"),
        ("Mailto:TLS@Example.com", "mailto:TLS@Example.com"),
        ("HTTPS://Reports.example.com/TLSRPT", "https://Reports.example.com/TLSRPT"),
    ],
)
def test_rua_schemes_are_case_insensitive_and_returned_in_lower_case(
    uri: str, canonical: str
) -> None:
    assert check_rua(uri) == canonical


@pytest.mark.parametrize(
    "uri",
    [
        "http://reports.example.com/",
        "mailto:nobody",
        "https:reports.example.com/x",
        "MAILTO:",
        "ftp://x.example",
        "https://",
        "mailto:a@b",
    ],
)
def test_rua_refuses_other_uris(uri: str) -> None:
    with pytest.raises(InvalidValue, match="tlsrpt_rua"):
        check_rua(uri)
