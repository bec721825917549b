"""A smoke run of bench/status_bench.py on a few hundred tenants: it runs
and prints each figure it promises beside its reference. No target is
checked here (docs/performance.md has the 100,000-tenant run)."""

from __future__ import annotations

import re
import subprocess
import sys

from support.layout import ROOT

ROW = r" +[0-9.]+ +[0-9.]+ +[0-9.]+x$"


def test_status_bench_prints_each_request_beside_its_reference() -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "status_bench.py"),
            "--tenants",
            "300",
            "--rounds",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "status page, 300 tenants, median of 2" in out
    for name in (
        r"first page of a fresh app \(builds its rows\)",
        r"list, first page",
        r"search q=customer0001",
        r"filter problems",
        r"tenant page customer000150\.example",
        r"request right after a store change",
        r"until the change shows",
    ):
        assert re.search(rf"(?m)^{name}{ROW}", out), (name, out)
