"""The status page keeps answering while its rows are rebuilt: a request
during a rebuild gets the previous rows and says they are refreshing; the
next one after the rebuild shows the change. Real stores, the real row
builder, held back by a gate so the test decides when the rebuild ends."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.promoteenv import DAY, provider_with_evidence, tree

from policy_host.certs.attempts import attempt_log
from policy_host.read.config import ProviderConfig
from policy_host.results import CheckResult, put_checks
from policy_host.status.app import create_app
from policy_host.status.index import Row, build_rows
from policy_host.status.refresh import IndexCache

FAIL = {"code": "mx_mismatch", "severity": "fail", "message": "m", "subject": "s"}


def check(domain: str, status: str) -> CheckResult:
    return CheckResult(
        domain, time.time(), status, "enforce", (FAIL,) if status != "ok" else (), None
    )


class Gate:
    """``build_rows``, waiting for ``release`` before each rebuild but the first."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.entered = threading.Event()
        self.builds = 0

    def __call__(self, config: ProviderConfig, now: float) -> list[Row]:
        self.builds += 1
        if self.builds > 1:
            self.entered.set()
            assert self.open.wait(30), "the test never released the rebuild"
        return build_rows(config, now)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[ProviderConfig, IndexCache, Gate]]:
    config = tree(tmp_path / "p", {})
    put_checks(config.results_db, [check(f"t{n}.example", "ok") for n in range(3)])
    gate = Gate()
    cache = IndexCache(config, time.time, build=gate)
    yield config, cache, gate
    gate.open.set()
    cache.stop(timeout=30)
    assert not cache.refreshing


def status_of(page: str, domain: str) -> str:
    row = re.search(
        rf'<tr data-domain="{re.escape(domain)}">.*?'
        r'<td class="check"><span class="\w+">(\w+)</span>',
        page,
        re.S,
    )
    assert row is not None, page
    return row.group(1)


def as_of(page: str) -> str:
    found = re.search(r'<span id="as-of">(.*?)</span>', page)
    assert found is not None, page
    return found.group(1)


def test_a_request_during_a_rebuild_gets_the_old_rows_and_says_so(
    setup: tuple[ProviderConfig, IndexCache, Gate],
) -> None:
    config, cache, gate = setup
    client = create_app(config, index=cache).test_client()
    first = client.get("/").get_data(as_text=True)
    assert status_of(first, "t1.example") == "ok"
    assert re.fullmatch(r"figures as of \d\d:\d\d:\d\d UTC", as_of(first)), as_of(first)

    put_checks(config.results_db, [check("t1.example", "fail")])
    started = time.perf_counter()
    during = client.get("/").get_data(as_text=True)
    assert gate.entered.wait(10), "no rebuild started after the store changed"
    # Answered from the previous rows, without waiting for the rebuild.
    assert time.perf_counter() - started < 10
    assert status_of(during, "t1.example") == "ok"
    assert as_of(during).endswith(", refreshing")
    tenant = client.get("/tenant/t1.example").get_data(as_text=True)
    assert "refreshing" in as_of(tenant)

    gate.open.set()
    deadline = time.monotonic() + 30
    while cache.refreshing and time.monotonic() < deadline:
        time.sleep(0.05)
    after = client.get("/").get_data(as_text=True)
    assert status_of(after, "t1.example") == "fail"
    assert status_of(after, "t0.example") == "ok"


def test_one_rebuild_at_a_time_and_none_after_stop(
    setup: tuple[ProviderConfig, IndexCache, Gate],
) -> None:
    config, cache, gate = setup
    cache.view()
    put_checks(config.results_db, [check("t2.example", "fail")])
    views = [cache.view() for _ in range(5)]
    assert gate.entered.wait(10)
    assert all(v.refreshing for v in views)
    assert [t.name for t in threading.enumerate()].count("policy-host-status-refresh") == 1
    gate.open.set()
    cache.stop(timeout=30)
    assert gate.builds == 2
    put_checks(config.results_db, [check("t0.example", "fail")])
    assert not cache.view().refreshing
    assert cache.row("t2.example") is not None
    assert cache.row("t2.example").check_status == "fail"  # type: ignore[union-attr]
    assert "policy-host-status-refresh" not in [t.name for t in threading.enumerate()]


def test_a_certificate_that_runs_out_soon_makes_a_problem(tmp_path: Path) -> None:
    config = provider_with_evidence(tmp_path)
    now = time.time()
    before = {row.domain: row.problem for row in build_rows(config, now)}
    assert before["young.example"] is False
    with attempt_log(config.certs_db, read_only=False) as certs:
        certs.certificate("mta-sts.young.example", now + 2 * DAY)
    after = {row.domain: row.problem for row in build_rows(config, now)}
    assert after["young.example"] is True
    assert after["ready.example"] is False  # 60 days left
