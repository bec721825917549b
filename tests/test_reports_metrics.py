"""``policy-host reports metrics``: Prometheus text with bounded series (totals
by result type and side, per-tenant series only for tenants with problems)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.reportenv import CORPUS, Store, ingest_paths, make_ingester, report_tree
from test_reports_cli import run

from policy_host.reports.metrics import exposition
from policy_host.reports.model import RESULT_TYPES
from policy_host.reports.summary import Limits

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _samples(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_from_the_cli(tmp_path: Path) -> None:
    config = report_tree(tmp_path)
    names = ["every-field.json", "totals-disagree.json", "domain-case.json", "foreign.json"]
    run(config, "ingest", *(str(CORPUS / n) for n in names))
    out = tmp_path / "textfile" / "policy_host_tlsrpt.prom"
    done = run(config, "metrics", "--since", "2026-11-01", "--output", str(out))
    assert done.returncode == 0, done.stderr
    samples = _samples(out.read_text())
    p = "policy_host_tlsrpt_"
    assert samples[(p + "sessions", (("outcome", "failed"),))] == 12
    assert samples[(p + "sessions", (("outcome", "successful"),))] == 205
    fetch = (("result_type", "sts-policy-fetch-error"), ("side", "ours"))
    assert samples[(p + "failed_sessions", fetch)] == 2
    starttls = (("result_type", "starttls-not-supported"), ("side", "customer"))
    assert samples[(p + "failed_sessions", starttls)] == 3
    assert samples[(p + "inputs", (("outcome", "foreign"),))] == 1
    assert samples[(p + "tenant_failure_ratio", (("domain", "example.com"),))] == pytest.approx(
        12 / 117
    )
    # Healthy tenants have no series of their own.
    assert not [k for k in samples if ("domain", "example.org") in k[1]]
    assert samples[(p + "tenants_with_problems", (("kind", "policy_host"),))] == 1


def test_series_stay_bounded_with_many_tenants(tmp_path: Path) -> None:
    """500 tenants, all failing because of us: per-tenant series stop at the cap."""
    config = report_tree(tmp_path)
    tenants = config.tenants_dir
    template = (tenants / "example.com.yaml").read_text()
    for i in range(500):
        (tenants / f"t{i}.example.yaml").write_text(template)
    store = Store(config.reports_db)
    ingester = make_ingester(config, store)
    body = (CORPUS / "every-field.json").read_text()
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(500):
        (folder / f"{i}.json").write_text(
            body.replace('"example.com"', f'"t{i}.example"').replace("every-field-1", f"r{i}")
        )
    ingest_paths(ingester, sorted(folder.iterdir()))
    text = exposition(
        store.conn, 1_796_169_600.0, 30 * 86_400.0, Limits(0.05, 100), max_tenants=50
    ).decode()
    samples = _samples(text)
    per_tenant = [k for k in samples if any(name == "domain" for name, _ in k[1])]
    assert len(per_tenant) == 2 * 50
    assert samples[("policy_host_tlsrpt_tenant_series_left_out", ())] == 450
    assert len(samples) <= 2 * 50 + 2 * (len(RESULT_TYPES) + 1) + 20


def test_empty_store_gives_zeros_not_errors(tmp_path: Path) -> None:
    store = Store(tmp_path / "r.sqlite3")
    assert isinstance(store.conn, sqlite3.Connection)
    samples = _samples(exposition(store.conn, 1e9, 86_400.0, Limits(0.05, 100)).decode())
    assert samples[("policy_host_tlsrpt_sessions", (("outcome", "failed"),))] == 0
    assert samples[("policy_host_tlsrpt_last_received_timestamp_seconds", ())] == 0
