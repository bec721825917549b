"""``policy-host reports``: ingest from files, Maildir and an MTA's pipe
(with the exit codes MTAs understand), and the per-tenant summary."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from support.applyenv import CLI
from support.reportenv import CORPUS, report_tree

from policy_host.read.config import ProviderConfig
from policy_host.reports.store import Store

RANGE = ("--since", "2026-11-01", "--until", "2027-01-01")


def run(config: ProviderConfig, *argv: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [*CLI, "--config", str(config.path), "reports", *argv],
        input=stdin,
        capture_output=True,
        timeout=120,
    )
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )


@pytest.fixture
def config(tmp_path: Path) -> ProviderConfig:
    return report_tree(tmp_path, unverified="record")


def test_ingest_files_says_what_became_of_each(config: ProviderConfig) -> None:
    good = [CORPUS / "every-field.json", CORPUS / "gzip.json.gz", CORPUS / "mail-report.eml"]
    done = run(config, "ingest", *map(str, good), str(CORPUS / "refused-not-json.json"))
    assert done.returncode == 1, done.stderr
    assert f"{CORPUS / 'refused-not-json.json'}: refused: not JSON" in done.stderr
    assert "ingested: 1 refused, 3 stored" in done.stderr
    again = run(config, "ingest", *map(str, good))
    assert again.returncode == 0, again.stderr
    assert "ingested: 3 duplicate" in again.stderr


def test_ingest_a_folder_of_files(config: ProviderConfig, tmp_path: Path) -> None:
    folder = tmp_path / "drop"
    folder.mkdir()
    for name in ("every-field.json", "gzip.json.gz", "foreign.json"):
        shutil.copy(CORPUS / name, folder / name)
    done = run(config, "ingest", str(folder))
    assert done.returncode == 0, done.stderr
    assert "ingested: 1 foreign, 2 stored" in done.stderr


def test_ingest_a_maildir_moves_what_it_stored_to_cur(
    config: ProviderConfig, tmp_path: Path
) -> None:
    maildir = tmp_path / "Maildir"
    for sub in ("new", "cur", "tmp"):
        (maildir / sub).mkdir(parents=True)
    shutil.copy(CORPUS / "mail-report.eml", maildir / "new" / "1.host")
    shutil.copy(CORPUS / "mail-not-report.eml", maildir / "new" / "2.host")
    done = run(config, "ingest", str(maildir))
    assert done.returncode == 1, done.stderr
    assert "2.host: not-report: no application/tlsrpt+gzip or +json part" in done.stderr
    assert sorted(p.name for p in (maildir / "cur").iterdir()) == ["1.host:2,S", "2.host:2,S"]
    assert list((maildir / "new").iterdir()) == []


@pytest.mark.parametrize(
    ("message", "argv", "said"),
    [
        ("mail-report.eml", ("ingest", "-"), "stored: mail-1"),
        ("mail-report.eml", ("ingest",), "stored: mail-1"),
        (
            "mail-not-report.eml",
            ("ingest", "-"),
            "not-report: no application/tlsrpt+gzip or +json part",
        ),
    ],
)
def test_pipe_accepts_every_message_it_kept(
    config: ProviderConfig, message: str, argv: tuple[str, ...], said: str
) -> None:
    done = run(config, *argv, stdin=(CORPUS / message).read_bytes())
    assert (done.returncode, done.stderr.strip()) == (0, said)


def test_pipe_keeps_unverified_mail_aside_under_require(tmp_path: Path) -> None:
    config = report_tree(tmp_path, unverified="require")
    done = run(config, "ingest", "-", stdin=(CORPUS / "mail-report.eml").read_bytes())
    assert (done.returncode, done.stderr.strip()) == (0, "unverified: no DKIM signature")


def test_pipe_asks_the_mta_to_retry_when_storage_fails(config: ProviderConfig) -> None:
    config.reports_db.mkdir(parents=True)  # a folder where the database should be
    done = run(config, "ingest", "-", stdin=(CORPUS / "mail-report.eml").read_bytes())
    assert done.returncode == 75
    assert "report not stored, try again later" in done.stderr


def test_pipe_keeps_an_oversized_message_aside(tmp_path: Path) -> None:
    config = report_tree(tmp_path)
    with config.path.open("a") as handle:
        handle.write("  max_report_bytes: 2048\n")
    done = run(config, "ingest", "-", stdin=b"Subject: x\r\n\r\n" + b"y" * 100_000)
    assert (done.returncode, done.stderr.strip()) == (0, "refused: message too large or empty")


def test_summary_puts_policy_host_failures_first_and_fails(config: ProviderConfig) -> None:
    names = ["every-field.json", "totals-disagree.json", "gzip.json.gz", "domain-case.json"]
    run(config, "ingest", *(str(CORPUS / n) for n in names))
    done = run(config, *RANGE)
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == (
        "example.com: 159 sessions, 12 failed (7.55%) in 3 reports  PROBLEM: 2 sessions failed "
        "because of the policy host (sts-policy-fetch-error); failure rate 7.5% is above 5.0%"
    )
    assert lines[1] == "  policy host: sts-policy-fetch-error 2"
    assert lines[2] == "  customer side: certificate-expired 3, starttls-not-supported 3"
    assert "example.org: 100 sessions, 0 failed (0.00%) in 1 reports" in lines


def test_summary_json_and_problems_only(config: ProviderConfig) -> None:
    run(config, "ingest", str(CORPUS / "every-field.json"), str(CORPUS / "domain-case.json"))
    done = run(config, *RANGE, "--json", "--problems")
    assert done.returncode == 1
    [tenant] = json.loads(done.stdout)
    assert tenant["domain"] == "example.com"
    assert tenant["policy_host_failures"] == 2
    assert tenant["failures_by_result_type"] == {
        "certificate-expired": 3,
        "sts-policy-fetch-error": 2,
    }
    assert tenant["failures_by_mx"] == {"mx1.example.com": 3, "mx2.example.com": 2}
    assert tenant["by_reporter"] == {"Example Sender Inc.": {"successful": 95, "failed": 5}}
    assert tenant["policies"] == [
        {
            "match": "untracked",
            "policy_id": None,
            "reports": 1,
            "organizations": ["Example Sender Inc."],
        }
    ]


def test_summary_of_a_healthy_tenant_exits_zero(config: ProviderConfig) -> None:
    run(config, "ingest", str(CORPUS / "domain-case.json"))
    done = run(config, "example.org", *RANGE, "-v")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "example.org: 100 sessions, 0 failed (0.00%) in 1 reports"
    assert "  from Example Sender Inc.: 100 successful, 0 failed" in done.stdout
    quiet = run(config, "example.net", *RANGE)
    assert (quiet.returncode, quiet.stdout) == (0, "example.net: no reports in this range\n")


def test_summary_verified_only_leaves_out_unsigned_reports(config: ProviderConfig) -> None:
    run(config, "ingest", str(CORPUS / "mail-report.eml"))
    assert "example.com: 51 sessions" in run(config, *RANGE).stdout
    done = run(config, *RANGE, "--verified")
    assert done.stdout == "no reports in this range\n"


def test_summary_refuses_a_bad_date(config: ProviderConfig) -> None:
    done = run(config, "--since", "last week")
    assert done.returncode == 2
    assert "expected Nd or YYYY-MM-DD (got 'last week')" in done.stderr


def test_ingest_many_files_through_the_worker_pool(config: ProviderConfig, tmp_path: Path) -> None:
    """Past POOL_FROM inputs, worker processes prepare them; the outcome and
    its order are those of a run in one process."""
    folder = tmp_path / "many"
    folder.mkdir()
    body = (CORPUS / "every-field.json").read_text()
    for i in range(250):
        (folder / f"{i:03d}.json").write_text(body.replace("every-field-1", f"many-{i}"))
    shutil.copy(CORPUS / "refused-not-json.json", folder / "100a.json")
    done = run(config, "ingest", str(folder))
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [
        f"{folder / '100a.json'}: refused: not JSON: Expecting property name enclosed in "
        "double quotes: line 1 column 2 (char 1)",
        "ingested: 1 refused, 250 stored",
    ]


@pytest.mark.parametrize("argv", [("ingest",), ("ingest", "-")])
def test_the_mta_pipe_asks_for_a_retry_when_the_config_is_broken(
    tmp_path: Path, argv: tuple[str, ...]
) -> None:
    """Postfix bounces on any status but 0 and 75 (EX_TEMPFAIL): a broken
    provider config must not bounce the customers' reports."""
    config = report_tree(tmp_path)
    config.path.write_text(config.path.read_text() + "tlsrpt_typo: [\n")
    message = (CORPUS / "every-field.json").read_bytes()
    done = run(config, *argv, stdin=message)
    assert done.returncode == 75, done.stderr
    assert f"the provider config {config.path} is not valid" in done.stderr
    # Reading files (an operator at a terminal) stays a usage error.
    done = run(config, "ingest", str(CORPUS / "every-field.json"))
    assert done.returncode == 2, done.stderr


def test_a_maildir_message_too_large_or_unreadable_is_kept_aside_and_seen(
    config: ProviderConfig, tmp_path: Path
) -> None:
    with config.path.open("a") as handle:
        handle.write("  max_report_bytes: 1024\n")
    maildir = tmp_path / "Maildir"
    for sub in ("new", "cur", "tmp"):
        (maildir / sub).mkdir(parents=True)
    large = b"Subject: large\r\n\r\n" + b"x" * 50_000
    (maildir / "new" / "1.host").write_bytes(large)
    (maildir / "new" / "2.host").symlink_to(tmp_path / "gone")
    done = run(config, "ingest", str(maildir))
    assert done.returncode == 1, done.stderr
    assert "1.host: refused: message too large" in done.stderr
    assert "2.host: refused: cannot read: No such file or directory" in done.stderr
    assert sorted(p.name for p in (maildir / "cur").iterdir()) == ["1.host:2,S", "2.host:2,S"]
    assert list((maildir / "new").iterdir()) == []
    with Store(config.reports_db) as store:
        rows = store.conn.execute(
            "SELECT outcome, size, sha256, cut, length(body) > 0 FROM raw ORDER BY id"
        ).fetchall()
    assert rows == [
        ("refused", len(large), hashlib.sha256(large).hexdigest(), 1, 1),
        ("refused", 0, hashlib.sha256(b"").hexdigest(), 0, 1),
    ]


def test_prune_dry_run_changes_nothing(config: ProviderConfig) -> None:
    done = run(config, "prune", "--dry-run")
    assert (done.returncode, done.stderr) == (0, "would prune 0 reports and 0 other inputs\n")
    assert not config.reports_db.exists()
    assert run(config, "ingest", str(CORPUS / "every-field.json")).returncode == 0
    before = config.reports_db.stat().st_mtime_ns
    assert run(config, "prune", "--dry-run").stderr == "would prune 0 reports and 0 other inputs\n"
    assert config.reports_db.stat().st_mtime_ns == before


@pytest.mark.parametrize("argv", [["ingest", "-"], [], ["metrics"]])
def test_dry_run_is_for_prune_only(config: ProviderConfig, argv: list[str]) -> None:
    done = run(config, *argv, "--dry-run")
    assert done.returncode == 2
    assert "--dry-run is for 'reports prune' only" in done.stderr
    assert not config.reports_db.exists()
