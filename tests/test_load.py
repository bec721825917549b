"""Load, short (a few seconds; ``bench/load_bench.py`` runs it long): a
steady request loop through nginx over many tenants while `apply` changes
their policies, nginx reloads and gunicorn replaces its workers. Every
answer must be a 200 with a complete, valid policy equal to the tenant's
old or new version; no 5xx, no failed request (``support.loadrun``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.front import Front, require_front
from support.loadrun import run_load, tenant_policy

TENANTS = [f"load{n:02d}.example" for n in range(40)]
SECONDS = 6.0


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    require_front()
    tenants = {domain: tenant_policy(domain, 0) for domain in TENANTS}
    with Front(tmp_path_factory.mktemp("load"), tenants, verify_timeout=5) as running:
        first = running.cli("apply")
        assert first.returncode == 0, first.stdout + first.stderr
        yield running


def test_steady_load_through_nginx_while_apply_changes_policies(front: Front) -> None:
    report = run_load(
        front,
        TENANTS,
        seconds=SECONDS,
        clients=8,
        changes_per_round=8,
        reload_nginx_every=1,
        sighup_every=2,
        min_applies=3,
        max_seconds=30,
    )
    print("\n".join(report.lines()))
    assert report.requests > 500, report.lines()
    assert report.applies >= 3, report.lines()
    assert report.nginx_reloads >= 3 and report.gunicorn_reloads >= 1, report.lines()
    assert report.apply_failures == [], report.apply_failures
    assert report.non_200 == 0, (report.lines(), report.wrong[:5])
    assert report.server_errors == 0, report.lines()
    assert report.wrong == [], report.wrong[:5]
    assert report.verified == report.requests
    assert report.ok
