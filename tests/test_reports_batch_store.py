"""A batch of inputs (``batch.run``: workers, one query per batch for the
reports stored already, rows inserted together, one sync at the end) leaves
the store exactly as ingesting the same files one at a time does, copies of
reports within a batch and across batches included; and ``parse.Memo``
changes nothing that is read."""

from __future__ import annotations

import shutil
import sqlite3
from collections import Counter
from pathlib import Path

import pytest
from support.reportenv import CORPUS, ingest_paths, make_ingester, report_tree

from policy_host.reports import batch
from policy_host.reports.ingest import Outcome
from policy_host.reports.model import FILE, Envelope
from policy_host.reports.parse import Memo, Refused, parse_rows
from policy_host.reports.schema import DUPLICATE, REFUSED, STORED
from policy_host.reports.store import Store

# Every column but the time of receipt, which each run reads from its clock.
TABLES = {
    "report": "id, organization, report_id, contact, start, end, channel, verified, copies, "
    "quirks, digest",
    "raw": "id, channel, origin, verified, auth, outcome, reason, domains, body, packed, report, "
    "size, sha256, cut",
    "result": "*",
    "detail": "*",
    "daily": "*",
    "daily_failure": "*",
}


def _folder(tmp_path: Path) -> list[Path]:
    """The corpus, then more than two batches of reports, with copies of
    reports from an earlier batch, from the same batch and from the corpus,
    and a copy with other content under a stored report's name."""
    folder = tmp_path / "inputs"
    shutil.copytree(CORPUS, folder)
    body = (CORPUS / "every-field.json").read_text()
    for i in range(1200):
        # Every 7th repeats an earlier report (some in an earlier batch of
        # 500); every 50th repeats the corpus's own every-field report.
        n = i - 3 if i % 7 == 6 else i
        text = body if i % 50 == 49 else body.replace("every-field-1", f"many-{n}")
        if i % 97 == 96:  # other content under a stored report's name
            text = text.replace('"total-successful-session-count": 95', '"total-su'
                                'ccessful-session-count": 96')  # fmt: skip
        (folder / f"n{i:04d}.json").write_text(text)
    return sorted(folder.iterdir())


def _tables(path: Path) -> dict[str, list[tuple[object, ...]]]:
    conn = sqlite3.connect(path)
    try:
        return {
            table: conn.execute(f"SELECT {columns} FROM {table} ORDER BY 1, 2, 3").fetchall()
            for table, columns in TABLES.items()
        }
    finally:
        conn.close()


def test_a_batch_stores_what_one_input_at_a_time_stores(tmp_path: Path) -> None:
    paths = _folder(tmp_path)
    assert len(paths) > 2 * batch.BATCH and len(paths) > batch.POOL_FROM
    one = report_tree(tmp_path / "one")
    with Store(one.reports_db) as store:
        singly = ingest_paths(make_ingester(one, store), paths)
    many = report_tree(tmp_path / "many")
    heard: list[tuple[str, Outcome]] = []
    job = batch.Job(many.tlsrpt, ("127.0.0.1", 9), 0.2, many.tlsrpt.max_report_bytes * 2)
    with Store(many.reports_db) as store:
        counts = batch.run(
            make_ingester(many, store), [paths[0].parent], job, 2, lambda *h: heard.append(h)
        )
    # What is heard of: every input not stored as a new report, in order.
    not_new = [(str(p), o) for p, o in zip(paths, singly, strict=True) if o.outcome != STORED]
    assert [name for name, _ in heard] == [name for name, _ in not_new]
    assert [o.outcome for _, o in heard] == [o.outcome for _, o in not_new]
    assert [o.reason for _, o in heard] == [o.reason for _, o in not_new]
    assert counts == Counter(o.outcome for o in singly)
    # The inputs reach every path a copy can take.
    assert {STORED, DUPLICATE, REFUSED} <= set(counts)
    tables = _tables(many.reports_db)
    assert tables == _tables(one.reports_db)
    raw_reasons = [str(row[6]) for row in tables["raw"]]
    assert any(r.startswith("differs from the stored report") for r in raw_reasons)
    copies = [row[8] for row in tables["report"]]
    assert any(isinstance(n, int) and n > 2 for n in copies)


def test_the_memo_reads_as_a_fresh_parse_does() -> None:
    """Read twice with one memo (the second time from it), each report has
    the rows and quirks a parse of its own gives."""
    memo = Memo()
    envelope = Envelope(FILE, origin="x", domain="example.net")
    names = sorted(p for p in CORPUS.iterdir() if p.suffix == ".json")
    assert "domain-case.json" in {p.name for p in names}
    for _ in range(2):
        for path in names:
            data = path.read_bytes()
            try:
                fresh: object = parse_rows(data, envelope)
            except Refused as exc:
                fresh = str(exc)
            try:
                kept: object = parse_rows(data, envelope, memo=memo)
            except Refused as exc:
                kept = str(exc)
            assert kept == fresh, path.name
    assert memo.datetimes and memo.domains


def test_a_last_chunk_with_nothing_to_write_still_syncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run's last transaction is the one that puts every earlier one on
    disk; when all its inputs were unreadable it writes nothing, and SQLite
    syncs nothing, so the store is synced by hand."""
    config = report_tree(tmp_path)
    synced: list[Path] = []
    monkeypatch.setattr(Store, "sync", lambda self: synced.append(self.path))
    job = batch.Job(config.tlsrpt, ("127.0.0.1", 9), 0.2, config.tlsrpt.max_report_bytes * 2)
    with Store(config.reports_db) as store:
        ingester = make_ingester(config, store)
        report = batch.prepare_chunk(job, [batch.Source(str(CORPUS / "every-field.json"))])
        unreadable = [batch.Done(str(tmp_path / "gone"), None, "cannot read: gone")]
        assert batch.store_chunk(ingester, report, False) == (1, [])
        assert batch.store_chunk(ingester, unreadable, False)[0] == 0
        assert synced == []  # not the last: nothing to sync yet
        # A copy: it raises copies, a write SQLite syncs itself.
        assert batch.store_chunk(ingester, report, True)[0] == 0
        assert synced == []
        assert batch.store_chunk(ingester, unreadable, True)[0] == 0
        assert synced == [config.reports_db]
