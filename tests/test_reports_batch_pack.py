"""What a worker sends the parent (``batch.prepare_packed``) unpacks to the
very ``Done`` that ``batch.prepare`` makes in one process."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import pytest
from support.reportenv import CORPUS, report_tree

from policy_host.reports import batch
from policy_host.reports.ingest import Prepared
from policy_host.reports.model import Envelope, FailureDetail, PolicyResult, Report
from policy_host.reports.store import Received


def same_clock(done: batch.Done) -> batch.Done:
    """``done`` with the time of receipt set aside (each prepare reads the clock)."""
    if done.prepared is None:
        return done
    item = dataclasses.replace(done.prepared.item, received=0.0)
    return dataclasses.replace(done, prepared=dataclasses.replace(done.prepared, item=item))


@pytest.fixture
def job(tmp_path: Path) -> batch.Job:
    config = report_tree(tmp_path)
    # A closed port on loopback: DKIM key lookups fail fast, the same way twice.
    return batch.Job(config.tlsrpt, ("127.0.0.1", 9), 0.2, config.tlsrpt.max_report_bytes * 2)


def test_every_corpus_input_survives_the_trip(job: batch.Job, tmp_path: Path) -> None:
    maildir = tmp_path / "Maildir"
    for sub in ("new", "cur", "tmp"):
        (maildir / sub).mkdir(parents=True)
    (maildir / "new" / "1.eml").write_bytes((CORPUS / "mail-json-part.eml").read_bytes())
    sources = list(batch.sources([CORPUS, maildir, tmp_path / "nowhere"]))
    sources.append(batch.Source(str(CORPUS.parent)))  # a folder: unreadable
    kinds = set()
    for source in sources:
        direct = batch.prepare(job, source)
        sent = pickle.loads(pickle.dumps(batch.prepare_packed(job, source)))
        assert same_clock(batch.unpack(sent)) == same_clock(direct)
        report = direct.prepared.report if direct.prepared else None
        details = bool(report and any(p.details for p in report.policies))
        read = "read" if direct.prepared else "unreadable"
        kinds.add((read, report is not None, details, direct.maildir_new))
    # The corpus reaches every branch of the packing.
    assert ("unreadable", False, False, None) in kinds
    assert ("read", False, False, None) in kinds
    assert ("read", True, True, None) in kinds
    assert ("read", True, True, maildir / "new" / "1.eml") in kinds


@pytest.mark.parametrize(
    ("cls", "names"),
    [
        (Envelope, "channel origin verified auth domain submitter"),
        (Received, "envelope body received size sha256"),
        (Prepared, "item rows outcome reason"),
        (Report, "organization report_id contact start end policies quirks"),
        (PolicyResult, "policy_type domain policy_string mx_host success failure details"),
        (
            FailureDetail,
            "result_type count sending_mta_ip receiving_mx_hostname receiving_mx_helo "
            "receiving_ip additional_information failure_reason_code",
        ),
        (batch.Done, "name prepared reason maildir_new"),
    ],
)
def test_the_packing_knows_every_field(cls: type, names: str) -> None:
    """A field added to one of these must be added to the packing too."""
    assert [f.name for f in dataclasses.fields(cls)] == names.split()
