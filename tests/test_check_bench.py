"""A smoke run of bench/check_bench.py (50 tenants): it runs and agrees with
itself. The real benchmark (10,000 tenants) is run by hand; see README."""

from __future__ import annotations

import subprocess
import sys

from support.fixtures_dns import require_dns_binaries
from support.layout import ROOT


def test_benchmark_smoke_run() -> None:
    require_dns_binaries()
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "check_bench.py"), "--tenants", "50"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = dict(line.split(":", 1) for line in done.stdout.splitlines())
    assert lines["tenants"].split() == ["50", "(50", "ok;", "other:", "[])"]
    # Both sides sent the same queries: 7 per tenant (A, TXT, MX, TXT, 3 CAA).
    assert "350 queries" in lines["check (concurrent)"]
    assert "350 queries (0 failed)" in lines["sequential loop"]
    assert "MiB" in lines["check peak memory"]
