"""``parse.parse_rows`` (JSON straight into the rows the store inserts)
gives the very rows, quirks and refusal reasons that the dataclass parser
it replaced (tests/support/reference_parse.py) gives followed by
``rows.report_rows``: on every corpus input, on a report made to show each
quirk and each refusal reason, and on made-up reports."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import reference_parse
from support.reportenv import CORPUS

from policy_host.reports import mail
from policy_host.reports.decode import BadPayload, TooLarge, report_json
from policy_host.reports.model import FILE, MAIL, Envelope
from policy_host.reports.parse import MAX_DETAILS, MAX_TEXT, QUIRKS, Refused, parse_rows
from policy_host.reports.rows import ReportRows, report_rows
from policy_host.reports.sources import file_input

CAP = 10 * 1024 * 1024


def both(data: bytes, envelope: Envelope, quirks: tuple[str, ...] = ()) -> ReportRows | str:
    """The rows both parsers make of ``data`` (asserted equal), or the
    reason both give for refusing it (asserted equal)."""
    try:
        fast: ReportRows | str = parse_rows(data, envelope, quirks)
    except Refused as exc:
        fast = f"refused: {exc}"
    try:
        slow: ReportRows | str = report_rows(reference_parse.parse_report(data, envelope, quirks))
    except reference_parse.Refused as exc:
        slow = f"refused: {exc}"
    assert fast == slow
    return fast


def corpus_inputs() -> list[tuple[str, bytes, Envelope, tuple[str, ...]]]:
    """What the ingest hands the parser for each corpus file that gets
    that far: the JSON bytes, the envelope and the quirks seen on the way."""
    found = []
    for path in sorted(CORPUS.iterdir()):
        loaded = file_input(path, CAP)
        envelope, body, labelled = loaded.envelope, loaded.data, path.name.endswith(".gz")
        quirks: tuple[str, ...] = ()
        if loaded.is_message:
            try:
                message = mail.read_mail(loaded.data)
            except mail.NotReport:
                continue
            envelope = Envelope(MAIL, domain=message.domain, submitter=message.submitter)
            body, labelled, quirks = message.payload, message.labelled_gzip, message.quirks
        try:
            data, more = report_json(body, CAP)
        except (TooLarge, BadPayload):
            continue
        if labelled and not body.startswith(b"\x1f\x8b"):
            more = (*more, "gzip-label-plain-json")
        found.append((path.name, data, envelope, (*more, *quirks)))
    return found


def test_every_corpus_report_gives_the_same_rows() -> None:
    inputs = corpus_inputs()
    results = [both(data, envelope, quirks) for _, data, envelope, quirks in inputs]
    stored = [r for r in results if isinstance(r, ReportRows)]
    # The corpus reaches both outcomes and rows with failure details.
    assert len(stored) >= 15
    assert sum(isinstance(r, str) for r in results) >= 5
    assert any(p.details for r in stored for p in r.policies)


BASE: dict[str, Any] = {
    "organization-name": "sender.example",
    "date-range": {
        "start-datetime": "2026-12-01T00:00:00Z",
        "end-datetime": "2026-12-01T23:59:59Z",
    },
    "contact-info": "tlsrpt@sender.example",
    "report-id": "r-1",
    "policies": [
        {
            "policy": {
                "policy-type": "sts",
                "policy-string": ["version: STSv1", "mode: testing"],
                "policy-domain": "example.com",
                "mx-host": ["mx.example.com"],
            },
            "summary": {"total-successful-session-count": 9, "total-failure-session-count": 3},
            "failure-details": [
                {
                    "result-type": "certificate-expired",
                    "sending-mta-ip": "198.51.100.1",
                    "receiving-mx-hostname": "mx.example.com.",
                    "receiving-mx-helo": "mx",
                    "receiving-ip": "192.0.2.1",
                    "failed-session-count": 3,
                    "additional-information": "https://sender.example/why",
                    "failure-reason-code": "X509_V_ERR_CERT_HAS_EXPIRED",
                }
            ],
        }
    ],
}

Change = Callable[[dict[str, Any]], object]


def _policy(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["policies"][0]  # type: ignore[no-any-return]


def _detail(doc: dict[str, Any]) -> dict[str, Any]:
    return _policy(doc)["failure-details"][0]  # type: ignore[no-any-return]


# One change of BASE per quirk that the parser itself records.
QUIRK_CASES: dict[str, Change] = {
    "datetime-without-zone": lambda d: d["date-range"].update(
        {"start-datetime": "2026-12-01T00:00:00.1234567"}
    ),
    "mx-host-string": lambda d: _policy(d)["policy"].update({"mx-host": "MX.example.com"}),
    "contact-info-null": lambda d: d.update({"contact-info": None}),
    "empty-ip": lambda d: _detail(d).update({"receiving-ip": "  "}),
    "totals-disagree": lambda d: _detail(d).update({"failed-session-count": 2}),
    "policy-domain-from-envelope": lambda d: _policy(d)["policy"].pop("policy-domain"),
    "unknown-result-type": lambda d: _detail(d).update({"result-type": "new-type"}),
    "unknown-policy-type": lambda d: _policy(d)["policy"].update({"policy-type": "dane"}),
    "domain-u-label": lambda d: _policy(d)["policy"].update({"policy-domain": "bücher.example"}),
    "domain-case": lambda d: _policy(d)["policy"].update({"policy-domain": "Example.COM."}),
    "no-policies": lambda d: d.update({"policies": []}),
    "report-id-not-text": lambda d: d.update({"report-id": 12345}),
    "text-truncated": lambda d: _detail(d).update({"additional-information": "x" * 3000}),
    "details-truncated": lambda d: _policy(d).update(
        {"failure-details": [_detail(d)] * (MAX_DETAILS + 2)}
    ),
}
# Passed in from the decoding, and the one that needs an envelope without
# a domain: both in test_the_quirk_cases_cover_every_quirk.
OTHER_QUIRKS = {"gzip-label-plain-json", "policy-domain-missing"}


def changed(change: Change) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    change(doc)
    return doc


@pytest.mark.parametrize("quirk", sorted(QUIRK_CASES))
def test_each_quirk_gives_the_same_rows(quirk: str) -> None:
    data = json.dumps(changed(QUIRK_CASES[quirk])).encode()
    rows = both(data, Envelope(FILE, domain="example.com"))
    assert isinstance(rows, ReportRows)
    assert quirk in rows.quirks


def test_the_quirk_cases_cover_every_quirk() -> None:
    assert set(QUIRK_CASES) | OTHER_QUIRKS == set(QUIRKS)
    # No domain anywhere, and a quirk passed in, go through to the rows.
    data = json.dumps(changed(QUIRK_CASES["policy-domain-from-envelope"])).encode()
    rows = both(data, Envelope(FILE), ("gzip-label-plain-json",))
    assert isinstance(rows, ReportRows)
    assert {"policy-domain-missing", "gzip-label-plain-json"} <= set(rows.quirks)
    assert rows.policies[0].domain == ""


DETAIL_TEXTS = (
    "result-type",
    "receiving-mx-hostname",
    "sending-mta-ip",
    "receiving-mx-helo",
    "receiving-ip",
    "additional-information",
    "failure-reason-code",
)

# One change of BASE per refusal reason, with the start of the reason.
REFUSAL_CASES: list[tuple[str, Change | bytes]] = [
    ("not UTF-8 text", b'{"organization-name": "\xe9"}'),
    ("JSON nested too deeply", b"[" * 100_000 + b"]" * 100_000),
    ("not JSON", b'{"organization-name": '),
    ("the report is not a JSON object", b"[]"),
    ("organization-name: missing", lambda d: d.update({"organization-name": " "})),
    ("report-id: missing", lambda d: d.update({"report-id": True})),
    ("contact-info: expected text", lambda d: d.update({"contact-info": 5})),
    ("date-range: missing", lambda d: d.update({"date-range": "today"})),
    ("date-range.start-datetime: expected", lambda d: d["date-range"].pop("start-datetime")),
    (
        "date-range.end-datetime: not a real",
        lambda d: d["date-range"].update({"end-datetime": "2026-02-30T00:00:00Z"}),
    ),
    (
        "date-range: end-datetime is before",
        lambda d: d["date-range"].update({"end-datetime": "2026-11-30T00:00:00+0100"}),
    ),
    ("policies: expected a list", lambda d: d.update({"policies": {"a": 1}})),
    ("policies[0]: expected an object", lambda d: d.update({"policies": [3]})),
    ("policies[0].policy: missing", lambda d: _policy(d).pop("policy")),
    (
        "policies[0].policy-type: expected text",
        lambda d: _policy(d)["policy"].update({"policy-type": []}),
    ),
    (
        "policies[0].policy.policy-string: expected",
        lambda d: _policy(d)["policy"].update({"policy-string": [1]}),
    ),
    (
        "policies[0].policy.policy-domain: expected",
        lambda d: _policy(d)["policy"].update({"policy-domain": 7}),
    ),
    ("policies[0].policy.mx-host: expected", lambda d: _policy(d)["policy"].update({"mx-host": 1})),
    ("policies[0].summary: missing", lambda d: _policy(d).update({"summary": []})),
    (
        "policies[0].summary.total-successful-session-count: expected a whole",
        lambda d: _policy(d)["summary"].update({"total-successful-session-count": 1.5}),
    ),
    (
        "policies[0].summary.total-failure-session-count: 1e+13 is out",
        lambda d: _policy(d)["summary"].update({"total-failure-session-count": 10**13}),
    ),
    (
        "policies[0].failure-details: expected a list",
        lambda d: _policy(d).update({"failure-details": "none"}),
    ),
    (
        "policies[0].failure-details[1]: expected an object",
        lambda d: _policy(d)["failure-details"].append("x"),
    ),
    (
        "policies[0].failure-details[0].result-type: missing",
        lambda d: _detail(d).update({"result-type": ""}),
    ),
    (
        "policies[0].failure-details[0].failed-session-count: -1 is out",
        lambda d: _detail(d).update({"failed-session-count": -1}),
    ),
    (
        "policies[0].failure-details[0].failed-session-count: expected",
        lambda d: _detail(d).update({"failed-session-count": "3"}),
    ),
    *(
        (
            f"policies[0].failure-details[0].{key}: expected text",
            (lambda key: lambda d: _detail(d).update({key: {"a": 1}}))(key),
        )
        for key in DETAIL_TEXTS
    ),
]


@pytest.mark.parametrize(("reason", "change"), REFUSAL_CASES, ids=[r for r, _ in REFUSAL_CASES])
def test_each_refusal_gives_the_same_reason(reason: str, change: Change | bytes) -> None:
    data = change if isinstance(change, bytes) else json.dumps(changed(change)).encode()
    result = both(data, Envelope(FILE, domain="example.com"))
    assert isinstance(result, str)
    assert result.startswith(f"refused: {reason}")


ODD_VALUES = ("", "  ", "\t", 7, 2.5, -3, "x" * (MAX_TEXT + 1), " Mx.Example.COM. ", None, "a")


@pytest.mark.parametrize("key", DETAIL_TEXTS)
def test_odd_values_of_each_detail_field_give_the_same_rows_or_reason(key: str) -> None:
    """The loop over failure details tests the usual value inline; every
    other value of every field goes through the same rule as before."""
    stored = 0
    for value in ODD_VALUES:
        doc = copy.deepcopy(BASE)
        _detail(doc)[key] = value
        result = both(json.dumps(doc).encode(), Envelope(FILE))
        stored += isinstance(result, ReportRows)
        if isinstance(result, ReportRows) and key.endswith("ip") and value in ("", "  ", "\t"):
            assert "empty-ip" in result.quirks
    assert stored >= len(ODD_VALUES) - 2


# Made-up reports: each field drawn mostly from usual and quirky values,
# now and then from wrong ones, so the inline checks of the usual case meet
# everything else and some reports get through whole.
text = st.sampled_from(["a", " Mx.Example.COM. ", "é", "x" * (MAX_TEXT + 1), "\u2028", "", " "])
scalar = text | st.none() | st.booleans() | st.integers(-2, 10**13) | st.floats(-1, 1e3)
anything = scalar | st.lists(text, max_size=2) | st.just({"a": 1})


def mostly(usual: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``usual`` nineteen times in twenty, else any JSON value."""
    return st.integers(0, 19).flatmap(lambda n: usual if n else anything)


count = mostly(st.integers(0, 40) | st.sampled_from([10**12, 10**12 + 1, -1, 1.0, "2"]))
detail = mostly(
    st.fixed_dictionaries(
        {"failed-session-count": count},
        optional={
            key: mostly(
                st.sampled_from(
                    ["certificate-expired", "new-type", "192.0.2.1", " 192.0.2.1 ", "", 5, 1.5]
                )
                | text
            )
            for key in DETAIL_TEXTS
        },
    )
)
policy = mostly(
    st.fixed_dictionaries(
        {
            "policy": mostly(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "policy-type": mostly(st.sampled_from(["sts", "tlsa", "no-policy-found"])),
                        "policy-string": mostly(st.lists(text, max_size=2) | text),
                        "policy-domain": mostly(
                            st.sampled_from(["example.com", "Bücher.example.", "a..b", ""])
                        ),
                        "mx-host": mostly(st.lists(text, max_size=2) | text),
                    },
                )
            ),
            "summary": mostly(
                st.fixed_dictionaries(
                    {"total-successful-session-count": count, "total-failure-session-count": count}
                )
            ),
        },
        optional={"failure-details": mostly(st.lists(detail, max_size=4))},
    )
)
start_text = st.sampled_from(
    ["2026-12-01T00:00:00Z", "2026-12-01 00:00:00.12345678", "2026-12-01T02:00:00+0200"]
)
end_text = st.sampled_from(
    ["2026-12-01T23:59:59Z", " 2026-12-02T00:00:00-01:00 ", "2026-12-01t23:59:59", "2026-13-01"]
)
report = st.fixed_dictionaries(
    {
        "organization-name": mostly(text),
        "report-id": mostly(text | st.integers(0, 99)),
        "date-range": mostly(
            st.fixed_dictionaries({"start-datetime": start_text, "end-datetime": mostly(end_text)})
        ),
        "policies": mostly(st.lists(policy, max_size=3)),
    },
    optional={"contact-info": mostly(text | st.none())},
)


@settings(max_examples=500, deadline=None)
@given(report, st.sampled_from(["", "example.com", "Other.Example."]), st.lists(text, max_size=1))
def test_made_up_reports_give_the_same_rows_or_reason(
    doc: dict[str, Any], domain: str, quirks: list[str]
) -> None:
    both(json.dumps(doc).encode(), Envelope(FILE, domain=domain), tuple(quirks))


def test_made_up_reports_reach_rows_and_refusals() -> None:
    """The strategy above is not all refusals (nor all rows)."""
    seen: set[bool] = set()

    @settings(max_examples=200, deadline=None, database=None)
    @given(report)
    def run(doc: dict[str, Any]) -> None:
        seen.add(isinstance(both(json.dumps(doc).encode(), Envelope(FILE)), ReportRows))

    run()
    assert seen == {True, False}
