"""A report as rows (``reports.rows``): the content digest is the one the
store has always kept (so copies of reports stored before still match), for
a whole report, for one cut to some of its policies, and as worked out from
the stored rows when a copy arrives; and the rows give back the very report
they were made of."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.reportenv import CORPUS, report_tree

from policy_host.reports import batch
from policy_host.reports.copies import stored_rows_digest
from policy_host.reports.model import FILE, Envelope, FailureDetail, PolicyResult, Report
from policy_host.reports.rows import cut, digest_of, json_list, report_rows, to_report
from policy_host.reports.store import Received, Store, Tie, digest


def asdict_digest(report: Report) -> str:
    """The digest as the store first defined it: SHA-256 of the canonical
    JSON of ``dataclasses.asdict`` of the report without its quirks."""
    content = dataclasses.asdict(dataclasses.replace(report, quirks=()))
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def corpus_reports(tmp_path: Path) -> list[Report]:
    config = report_tree(tmp_path)
    job = batch.Job(config.tlsrpt, ("127.0.0.1", 9), 0.2, config.tlsrpt.max_report_bytes * 2)
    found = []
    for source in batch.sources([CORPUS]):
        done = batch.prepare(job, source)
        if done.prepared is not None and done.prepared.report is not None:
            found.append(done.prepared.report)
    return found


def test_corpus_digests_match_the_stored_definition(tmp_path: Path) -> None:
    reports = corpus_reports(tmp_path)
    assert len(reports) >= 15
    assert any(p.details for r in reports for p in r.policies)
    for report in reports:
        rows = report_rows(report)
        assert digest_of(rows) == asdict_digest(report) == digest(report)
        assert to_report(rows) == report


text = st.text(alphabet=st.characters(codec="utf-8"), max_size=12) | st.sampled_from(
    ['"policies":[]', '\\"', "a,b", "é", "\u2028", ""]
)
maybe = st.none() | text
details = st.builds(
    FailureDetail, text, st.integers(0, 10**12), maybe, maybe, maybe, maybe, maybe, maybe
)
policies = st.builds(
    PolicyResult,
    text,
    text,
    st.lists(text, max_size=3).map(tuple),
    st.lists(text, max_size=3).map(tuple),
    st.integers(0, 10**12),
    st.integers(0, 10**12),
    st.lists(details, max_size=3).map(tuple),
)
reports = st.builds(
    Report,
    text,
    text,
    maybe,
    st.floats(0, 4e9),
    st.floats(0, 4e9),
    st.lists(policies, max_size=4).map(tuple),
    st.lists(text, max_size=2).map(tuple),
)


@settings(max_examples=300, deadline=None)
@given(reports, st.data())
def test_digest_of_any_report_and_any_cut_matches(report: Report, data: st.DataObject) -> None:
    rows = report_rows(report)
    assert digest_of(rows) == asdict_digest(report)
    assert to_report(rows) == report
    keep = data.draw(
        st.lists(st.booleans(), min_size=len(report.policies), max_size=len(report.policies))
    )
    cut_rows = cut(rows, tuple(p for p, k in zip(rows.policies, keep, strict=True) if k))
    cut_report = dataclasses.replace(
        report, policies=tuple(p for p, k in zip(report.policies, keep, strict=True) if k)
    )
    assert digest_of(cut_rows) == asdict_digest(cut_report)


@settings(max_examples=200, deadline=None)
@given(reports)
def test_the_digest_worked_out_from_stored_rows_is_the_reports(report: Report) -> None:
    """A stored report's digest is worked out from its rows when a copy
    arrives: it must be the digest of the report as parsed."""
    with Store(Path(":memory:")) as store:
        with store.transaction() as conn:
            rows = report_rows(report)
            ties = [Tie(None, "untracked")] * len(rows.policies)
            item = Received(Envelope(FILE, origin="x"), b"{}", 0.0)
            store.add_rows(conn, item, rows, ties, new=True)
        (row,) = store.conn.execute("SELECT id FROM report").fetchone()
        assert stored_rows_digest(store.conn, row) == digest_of(rows)


@pytest.mark.parametrize("field", ["strings_json", "mx_json"])
def test_result_json_columns_read_back_as_the_lists(field: str, tmp_path: Path) -> None:
    for report in corpus_reports(tmp_path):
        for policy, rows in zip(report.policies, report_rows(report).policies, strict=True):
            value = policy.policy_string if field == "strings_json" else policy.mx_host
            assert tuple(json.loads(getattr(rows, field))) == value
            assert getattr(rows, field) == json.dumps(value)


@settings(max_examples=300, deadline=None)
@given(st.lists(text, max_size=6))
def test_json_list_is_json_dumps(items: list[str]) -> None:
    assert json_list(items) == json.dumps(items)
