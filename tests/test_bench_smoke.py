"""Smoke runs of bench/serve_bench.py and bench/scale_bench.py on a handful
of tenants: they run, and print every figure they promise. Nothing here
checks a target (the real runs, by hand, do; see docs/performance.md)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from support.fixtures_dns import in_ci
from support.layout import ROOT
from support.procs import MissingBinaryError, require_binary

NUMBER = r"-?[0-9.]+"


def require(*names: str) -> None:
    for name in names:
        try:
            require_binary(name)
        except MissingBinaryError as exc:
            if in_ci():
                pytest.fail(f"{exc}; CI=true, so this is a failure", pytrace=False)
            pytest.skip(str(exc))


def run(script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # 0: every target met, 1: some not (a few tenants on a busy machine).
    assert done.returncode in (0, 1), done.stdout + done.stderr
    return done.stdout


def test_serve_bench_runs_and_reports_its_ratios() -> None:
    require("nginx", "wrk", "openssl")
    out = run(
        "serve_bench.py",
        "--tenants",
        "20",
        "--rounds",
        "1",
        "--duration",
        "1",
        "--tls-tenants",
        "0",
        "--skip",
        "app,flood",
    )
    assert re.search(r"reference: nginx, one static file \(HTTP\) +[0-9,]+ req/s", out), out
    assert re.search(
        rf"product: nginx \+ gunicorn \(HTTP listener\) +[0-9,]+ req/s +{NUMBER}x", out
    )
    for label in ("x static", "p99 x static", "errors"):
        line = f"1. serve (HTTP, Host over 20 tenants): {label}"
        assert re.search(rf"{re.escape(line)} +{NUMBER} +target", out), out


def test_scale_bench_runs_and_prints_its_table() -> None:
    require("nginx", "openssl")
    out = run("scale_bench.py", "--tenants", "20", "--repeat", "1", "--skip", "apply")
    rows = {}
    for line in out.splitlines():
        if line.startswith("| "):
            cells = line.strip("| ").split(" | ")
            rows[cells[0]] = cells[-1]
    for label in (
        "C-loader parse s",
        "validate (no cache) s",
        "start -> answer s",
        "reload -> live, nginx s",
        "reload -> live, gunicorn s",
        "worker RSS peak MiB",
    ):
        assert re.fullmatch(NUMBER, rows.get(label, "")), (label, out)
    assert "targets at 20 tenants" in out
