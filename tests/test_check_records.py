"""The pure parts of `check`, as tables: record syntax (RFC 8461 section 3.1,
RFC 8460 section 3; ``records``), CAA evaluation (RFC 8659) as `check` words
it, the Microsoft 365 hint."""

from __future__ import annotations

import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import pytest

from policy_host.check.hosts import caa_problem
from policy_host.check.https import body_difference
from policy_host.check.mx import microsoft_pattern
from policy_host.check.reasons import REASONS, WARN, Reason
from policy_host.records import (
    AcmeIdentity,
    CaaProperty,
    caa_names,
    caa_properties,
    has_version,
    joined_txt,
    parse_sts_record,
    parse_tlsrpt_record,
)

STS_RECORDS = [
    ("v=STSv1; id=20160831085700Z;", "20160831085700Z", None),
    ("v=STSv1; id=abc", "abc", None),
    ("v=STSv1;id=abc;", "abc", None),
    ("v=STSv1 ;\tid=abc ; ", "abc", None),
    ("v=STSv1; id=abc; ext_1.x-y=value!", "abc", None),
    ("v=STSv1; id=" + "a" * 32 + ";", "a" * 32, None),
    ("v=STSv1; id=" + "a" * 33 + ";", "a" * 33, "bad id"),
    ("v=STSv1; id=abc-def;", "abc-def", "bad id"),
    ("v=STSv1; id=;", "", "bad id"),
    ("v=STSv1;", None, "nothing follows 'v=STSv1;'"),
    ("v=STSv1", None, "'v=STSv1' must be followed by ';'"),
    ("v=STSv1 id=abc", None, "'v=STSv1' must be followed by ';'"),
    ("v=STSv1; ext=1;", None, "it has no id field"),
    ("v=STSv1; id=a; id=b;", None, "it has more than one id field"),
    ("v=STSv1; id=a; note", None, "field 'note' is not name=value"),
    ("v=STSv1; id=a; x=has space", None, "is not a valid extension"),
    ("v=STSv1; id=a;; x=1", None, "field '' is not name=value"),
]


@pytest.mark.parametrize(("text", "policy_id", "problem"), STS_RECORDS)
def test_sts_record_syntax(text: str, policy_id: str | None, problem: str | None) -> None:
    found_id, found_problem = parse_sts_record(text)
    assert found_id == policy_id
    if problem is None:
        assert found_problem is None
    else:
        assert found_problem is not None and problem in found_problem


@pytest.mark.parametrize(
    ("text", "version", "candidate"),
    [
        ("v=STSv1; id=abc;", "v=STSv1", True),
        ("v=STSv1 ;id=abc", "v=STSv1", True),
        ("v=STSv1;", "v=STSv1", True),
        ("v=STSv10; id=abc;", "v=STSv1", False),
        ("v=STSv1", "v=STSv1", False),
        ("v=STSv1 id=abc", "v=STSv1", False),
        ("V=STSV1; id=abc;", "v=STSv1", False),
        (" v=STSv1; id=abc;", "v=STSv1", False),
        ("v=TLSRPTv1; rua=mailto:a@b.example", "v=TLSRPTv1", True),
        ("v=TLSRPTv10; rua=mailto:a@b.example", "v=TLSRPTv1", False),
    ],
)
def test_only_records_beginning_with_version_and_separator_are_candidates(
    text: str, version: str, candidate: bool
) -> None:
    # RFC 8461 section 3.1: other records are discarded before counting.
    assert has_version(text, version) is candidate


TLSRPT_RECORDS = [
    ("v=TLSRPTv1; rua=mailto:tls@example.com", ["mailto:tls@example.com"], None),
    (
        "v=TLSRPTv1;rua=mailto:a@example.com , https://r.example.com/x;",
        ["mailto:a@example.com", "https://r.example.com/x"],
        None,
    ),
    ("v=TLSRPTv1; rua=http://r.example.com/", ["http://r.example.com/"], "is not a mailto:"),
    ("v=TLSRPTv1; rua=", [""], "is not a mailto:"),
    ("v=TLSRPTv1;", [], "nothing follows"),
    ("v=TLSRPTv1; ext=1", [], "it has no rua field"),
    ("v=TLSRPTv1; rua=mailto:a@b.example; rua=mailto:c@d.example", [], "more than one rua"),
]


@pytest.mark.parametrize(("text", "rua", "problem"), TLSRPT_RECORDS)
def test_tlsrpt_record_syntax(text: str, rua: list[str], problem: str | None) -> None:
    found_rua, found_problem = parse_tlsrpt_record(text)
    assert found_rua == rua
    if problem is None:
        assert found_problem is None
    else:
        assert found_problem is not None and problem in found_problem


def test_txt_strings_are_joined_with_nothing_between() -> None:
    rdata = dns.rdtypes.ANY.TXT.TXT(
        dns.rdataclass.IN, dns.rdatatype.TXT, [b"v=STSv1; ", b"id=ab", b"c;"]
    )
    assert joined_txt(rdata) == "v=STSv1; id=abc;"


def caa(*texts: str) -> list[CaaProperty]:
    return caa_properties(dns.rdata.from_text("IN", "CAA", text) for text in texts)


def issuers(*names: str) -> AcmeIdentity:
    return AcmeIdentity(names)


CAA_SETS = [
    ([], None),
    (['0 iodef "mailto:security@example.com"'], None),
    (['0 issuewild ";"'], None),  # only wildcard certificates are restricted
    (['0 issue "letsencrypt.org"'], None),
    (['0 issue "LetsEncrypt.org; validationmethods=http-01"'], None),
    (['0 issue "other.example"', '0 issue "letsencrypt.org"'], None),
    (['0 issue "other.example"'], "allows other.example, not letsencrypt.org"),
    (['0 issue ";"'], "allows no CA at all, not letsencrypt.org"),
    (['0 issue "other.example"', '0 issuewild "letsencrypt.org"'], "allows other.example"),
    (['128 future "x"'], "critical property 'future'"),
    (['0 future "x"', '0 issue "letsencrypt.org"'], None),
]


@pytest.mark.parametrize(("records", "problem"), CAA_SETS)
def test_caa_evaluation(records: list[str], problem: str | None) -> None:
    found = caa_problem(caa(*records), issuers("letsencrypt.org"))
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


def test_caa_allows_any_of_several_configured_issuers() -> None:
    records = caa('0 issue "sectigo.com"')
    assert caa_problem(records, issuers("letsencrypt.org", "sectigo.com")) is None


def test_caa_climbs_to_the_top_level_domain_not_the_root() -> None:
    assert caa_names("mta-sts.shop.example.co.uk") == [
        "mta-sts.shop.example.co.uk",
        "shop.example.co.uk",
        "example.co.uk",
        "co.uk",
        "uk",
    ]


MICROSOFT = [
    ("example-com.a-v1.mx.microsoft", "*.a-v1.mx.microsoft"),
    ("EXAMPLE-COM.B-V2.MX.MICROSOFT.", "*.b-v2.mx.microsoft"),
    ("a-v1.mx.microsoft", None),  # one label below: *.mx.microsoft covers it
    ("example-com.mail.protection.outlook.com", None),
    ("mx.microsoft.example.com", None),
]


@pytest.mark.parametrize(("host", "pattern"), MICROSOFT)
def test_microsoft_365_hint(host: str, pattern: str | None) -> None:
    assert microsoft_pattern(host) == pattern


def test_body_difference_names_the_line() -> None:
    expected = b"version: STSv1\r\nmode: enforce\r\nmx: a.example\r\nmax_age: 86400\r\n"
    assert body_difference(expected.replace(b"86400", b"60"), expected) == (
        "line 4 is 'max_age: 60\\r\\n', expected 'max_age: 86400\\r\\n'"
    )
    assert body_difference(expected.replace(b"\r\n", b"\n"), expected) == (
        "line 1 is 'version: STSv1\\n', expected 'version: STSv1\\r\\n'"
    )
    assert body_difference(expected + b"mx: b.example\r\n", expected) == (
        "line 5 is 'mx: b.example\\r\\n', expected the end of the body"
    )
    assert body_difference(b"version: STSv1\r\n", expected) == (
        "line 2 is missing, expected 'mode: enforce\\r\\n'"
    )


def test_reason_codes_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown reason code"):
        Reason("txt_wrong", WARN, "x")
    assert all(code.islower() and " " not in code for code in REASONS)
