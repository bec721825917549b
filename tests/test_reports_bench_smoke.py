"""A smoke run of bench/reports_bench.py on a handful of reports: it runs and
prints every figure it promises. Nothing here checks a target (the real
run, by hand, does; see docs/performance.md)."""

from __future__ import annotations

import re
import subprocess
import sys

from support.layout import ROOT

NUMBER = r"[0-9.]+"


def test_reports_bench_prints_every_figure() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "reports_bench.py"),
         "--tenants", "20", "--reports", "100", "--days", "3"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    # 0: every target met, 1: some not (a few reports on a busy machine).
    assert done.returncode in (0, 1), done.stdout + done.stderr
    for pattern in (
        rf"ingest: 100 reports in {NUMBER} s",
        rf"reference gunzip\+json.loads\+INSERT: {NUMBER} s; ingest rate {NUMBER}x of it",
        rf"stored: 100 reports, {NUMBER} bytes each",
        r"3 days: 300 reports",
        rf"reports customer000007.example --since 30d: {NUMBER} s command "
        rf"\(median of 7: {NUMBER}-{NUMBER}\), {NUMBER} s query",
        rf"reports --problems --since 30d: {NUMBER} s command, {NUMBER} s query",
    ):
        assert re.search(pattern, done.stdout), (pattern, done.stdout)
