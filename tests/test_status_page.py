"""The status page in a real browser: `policy-host status` on loopback,
headless Chromium loads each page, the test reads the rendered DOM for the
figures the stores imply. Plus paging, sorting and search through the app."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.applyenv import CLI
from support.browser import chromium, dump_dom
from support.procs import LOOPBACK, Daemon, free_port, port_open
from support.promoteenv import provider_with_evidence

from policy_host.read.config import ProviderConfig
from policy_host.results import STEPPED_DOWN, Event, add_events
from policy_host.status.app import create_app


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> ProviderConfig:
    config = provider_with_evidence(tmp_path_factory.mktemp("status"))
    add_events(
        config.results_db,
        [Event("done.example", time.time() - 60, STEPPED_DOWN, "stepped down: MX moved", {})],
    )
    return config


@pytest.fixture(scope="module")
def server(provider: ProviderConfig, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    chromium()
    port = free_port("tcp")
    with Daemon(
        [*CLI, "--config", str(provider.path), "status", "--bind", f"{LOOPBACK}:{port}"],
        name="status",
        workdir=tmp_path_factory.mktemp("status-run"),
        ready=lambda: port_open(LOOPBACK, port),
    ):
        yield f"http://{LOOPBACK}:{port}"


def rows(dom: str) -> dict[str, str]:
    """Each tenant row's HTML by domain."""
    return dict(re.findall(r'<tr data-domain="([^"]+)">(.*?)</tr>', dom, re.S))


def test_the_list_shows_each_tenant_with_its_figures(server: str) -> None:
    dom = dump_dom(server + "/")
    found = rows(dom)
    assert list(found) == ["done.example", "ready.example", "young.example"]
    assert 'data-success="1000" data-failure="1"' in found["ready.example"]
    assert 'data-success="60" data-failure="40"' in found["done.example"]
    assert ">ready</span>" in found["ready.example"]
    assert "held: testing_too_short, reports_too_few_organizations" in found["young.example"]
    assert "mx_mismatch" in found["done.example"] and ">fail</span>" in found["done.example"]
    assert "stepped-down" in found["done.example"]
    # A chart per row, its bars titled with their figures (not colour alone).
    assert re.search(r"<title>\d{4}-\d\d-\d\d successful: 1000</title>", found["ready.example"])
    assert '<p id="count">3 tenants, 1 to 3 shown</p>' in dom


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("filter=problems", ["done.example"]),
        ("filter=ready", ["ready.example"]),
        ("filter=withdrawal", []),
        ("q=young", ["young.example"]),
        ("sort=check", ["done.example", "ready.example", "young.example"]),
        ("sort=domain&desc=1", ["young.example", "ready.example", "done.example"]),
    ],
)
def test_filters_search_and_sort(server: str, query: str, expected: list[str]) -> None:
    assert list(rows(dump_dom(f"{server}/?{query}"))) == expected


def test_the_tenant_page_charts_and_tables(server: str) -> None:
    dom = dump_dom(server + "/tenant/done.example")
    assert '<dd id="mode">enforce</dd>' in dom
    daily = re.search(r'<table id="daily">.*?</table>', dom, re.S)
    assert daily is not None
    assert re.search(r'<td class="num">60</td><td class="num">40</td>', daily.group(0))
    assert 'data-series="certificate-expired" data-count="40"' in dom
    assert 'data-series="mx9.done.example" data-count="40"' in dom
    assert "stepped down: MX moved" in dom
    history = re.search(r'<table id="history">.*?</table>', dom, re.S)
    assert history is not None and "commit new" in history.group(0)
    ready = dump_dom(server + "/tenant/ready.example")
    assert '<dd id="promotion">ready for enforce</dd>' in ready
    versions = re.search(r'<table id="versions">.*?</table>', ready, re.S)
    assert versions is not None and "Google,Microsoft" in versions.group(0).replace(", ", ",")


def test_many_tenants_are_paged_sorted_and_searched(tmp_path: Path) -> None:
    from support.promoteenv import publish, tree

    config = tree(tmp_path / "p", {})
    now = time.time()
    from policy_host.results import CheckResult, put_checks

    put_checks(
        config.results_db,
        [CheckResult(f"t{n:05}.example", now, "ok", "enforce", (), None) for n in range(2000)],
    )
    publish(config, "t00007.example", "testing", ["mx.t00007.example"], 86_400, now)
    client = create_app(config).test_client()
    # How fast, at 100,000 tenants: bench/status_bench.py (docs/performance.md).
    page = client.get("/?page=3").get_data(as_text=True)
    assert next(iter(rows(page))) == "t00100.example"
    assert "Page 3 of 40" in page
    last = client.get("/?sort=domain&desc=1").get_data(as_text=True)
    assert next(iter(rows(last))) == "t01999.example"
    found = client.get("/?q=t0199").get_data(as_text=True)
    assert len(rows(found)) == 10
    assert client.get("/?filter=bogus").status_code == 400
    assert client.get("/tenant/nothere.example").status_code == 404
