"""The status page at many tenants: what each kind of request costs, beside
a reference measured in the same run.

    .venv/bin/python bench/status_bench.py --tenants 100000

Builds the stores `apply`, `check`, `certs` and the report ingester would
leave for N tenants (a tenth in testing, one in a hundred failing its
check, a few events, a month of daily reports for one in fifty), then
times, through Flask's test client (in-process, no HTTP, so only the app
is measured):

- the first request of a fresh app (it builds its rows from the stores);
- after a store change (one tenant's check turns to "fail"), the request
  right after it (answered from the previous rows while they are rebuilt
  in the background) and the time until a request shows the change (the
  reference reads the stores on each request: one request, both times);
- the list's first page, a search, the "Problems only" filter and a
  tenant's page, each warm, median of ``--rounds``;

and the reference for each: the minimal Flask app (one route, a bare
SQLite query of the same rows from the same files, a plain table) on the
same test client. Prints a table (milliseconds, ratio product/reference).
Nothing here checks a target; docs/performance.md has the figures.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import domain, say
from flask import Flask, request

from policy_host.certs.attempts import attempt_log
from policy_host.model import Policy
from policy_host.read.config import ProviderConfig, load_config
from policy_host.render import render
from policy_host.reports.store import Store as ReportStore
from policy_host.results import (
    GUARD_ALERT,
    CheckResult,
    Event,
    add_events,
    put_checks,
)
from policy_host.state import NEW, PUBLISHED, Pending, Store
from policy_host.status.app import create_app

DAY = 86_400.0
REPORT_DAYS = 30
FAIL = {"code": "mx_mismatch", "severity": "fail", "message": "m", "subject": "s"}


def build(root: Path, count: int, now: float) -> ProviderConfig:
    """The stores for ``count`` tenants, written as the commands would."""
    (root / "tenants").mkdir(parents=True)
    (root / "config.yaml").write_text(
        "tenants_dir: tenants\nstate_dir: var\npolicy_host: mta-sts.provider.example\n"
        "id_zone: _mta-sts.provider.example\n"
    )
    config = load_config(root / "config.yaml")
    config.state_dir.mkdir(parents=True, exist_ok=True)
    pending = {}
    for n in range(count):
        d = domain(n)
        mode = "testing" if n % 10 == 0 else "enforce"
        body = render(Policy(mode, (f"mx.{d}",), 604_800))
        fingerprint = hashlib.sha256(body).hexdigest()
        pending[d] = Pending(NEW, f"20261101000000{fingerprint[:8]}", fingerprint, body, 604_800)
    with Store(config.state_db) as store:
        store.begin(pending, now - 40 * DAY)
        store.mark(list(pending), PUBLISHED, now - 40 * DAY)
        store.commit(list(pending), now - 40 * DAY, confirmed=True)
    put_checks(
        config.results_db,
        [
            CheckResult(
                domain(n),
                now - 600,
                "fail" if n % 100 == 7 else "ok",
                "testing" if n % 10 == 0 else "enforce",
                (FAIL,) if n % 100 == 7 else (),
                (f"mx.{domain(n)}",),
            )
            for n in range(count)
        ],
    )
    with attempt_log(config.certs_db, read_only=False) as certs:
        # One commit per certificate, as `certs` does: without waiting for
        # the disk each time, or building the stores takes minutes.
        certs.db.execute("PRAGMA synchronous = OFF")
        for n in range(count):
            certs.certificate(f"mta-sts.{domain(n)}", now + 60 * DAY)
    add_events(
        config.results_db,
        [Event(domain(n), now - 3600, GUARD_ALERT, "drift", {}) for n in range(7, count, 1000)],
    )
    _reports(config, count, now)
    return config


def _reports(config: ProviderConfig, count: int, now: float) -> None:
    """A month of daily totals for one tenant in fifty, straight into the
    report store's tables (ingesting 60,000 reports would take longer than
    everything measured here)."""
    with ReportStore(config.reports_db) as store:
        conn = store.conn
        today = int(now // DAY)
        rows = [
            (domain(n), day, 100 + n % 7, n % 3)
            for n in range(0, count, 50)
            for day in range(today - REPORT_DAYS, today)
        ]
        conn.executemany(
            "INSERT INTO daily (domain, day, verified, reports, success, failure) "
            "VALUES (?, ?, 0, 1, ?, ?)",
            rows,
        )
        conn.commit()


def reference_app(config: ProviderConfig) -> Flask:
    """The minimal Flask app: one bare SQLite query per page, a plain table."""
    app = Flask("reference")

    def table(rows: list[tuple[object, ...]]) -> str:
        cells = "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows
        )
        return f"<!doctype html><table>{cells}</table>"

    def query(sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        with sqlite3.connect(f"file:{config.state_db}?mode=ro", uri=True) as conn:
            conn.execute("ATTACH ? AS results", (f"file:{config.results_db}?mode=ro",))
            return conn.execute(sql, args).fetchall()

    select = (
        "SELECT t.domain, t.policy_id, c.status, c.checked FROM tenant t "
        "LEFT JOIN results.check_result c ON c.domain = t.domain "
    )

    @app.get("/")
    def tenants() -> str:
        q, kind = request.args.get("q", ""), request.args.get("filter", "all")
        if kind == "problems":
            return table(query(select + "WHERE c.status != 'ok' ORDER BY t.domain LIMIT 50"))
        if q:
            return table(
                query(select + "WHERE t.domain LIKE ? ORDER BY t.domain LIMIT 50", (f"%{q}%",))
            )
        return table(query(select + "ORDER BY t.domain LIMIT 50"))

    @app.get("/tenant/<name>")
    def tenant(name: str) -> str:
        return table(query(select + "WHERE t.domain = ?", (name,)))

    return app


def timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000


def measure(app: Flask, path: str, rounds: int) -> float:
    client = app.test_client()

    def get() -> None:
        response = client.get(path)
        assert response.status_code == 200, (path, response.status_code)

    return statistics.median(timed(get) for _ in range(rounds))


def change_check(config: ProviderConfig, name: str, now: float) -> None:
    """What `check` writes when a tenant's check starts failing."""
    put_checks(config.results_db, [CheckResult(name, now, "fail", "enforce", (FAIL,), None)])


def settle(app: Flask) -> None:
    """Wait for a background rebuild of the rows, if one runs."""
    while app.extensions["status_index"].refreshing:
        time.sleep(0.02)


def shows_failing(app: Flask, name: str) -> bool:
    page = app.test_client().get("/").get_data(as_text=True)
    row = page.split(f'data-domain="{name}">', 1)[-1].split("</tr>", 1)[0]
    return ">fail<" in row


def after_change(
    product: Flask, reference: Flask, config: ProviderConfig, now: float
) -> list[tuple[str, float, float]]:
    """The request right after a store change, and the time until the
    change shows, for the product and the reference."""
    name = domain(0)  # the list's first row
    change_check(config, name, now)
    started = time.perf_counter()
    product.test_client().get("/")
    right_after = (time.perf_counter() - started) * 1000
    while not shows_failing(product, name):
        assert time.perf_counter() - started < 600, "the change never showed"
        settle(product)
    shown = (time.perf_counter() - started) * 1000
    change_check(config, domain(1), now)
    reference_after = timed(lambda: reference.test_client().get("/"))
    assert ">fail<" in reference.test_client().get("/").get_data(as_text=True)
    return [
        ("request right after a store change", right_after, reference_after),
        ("until the change shows", shown, reference_after),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args(argv)
    now = time.time()
    with tempfile.TemporaryDirectory(prefix="status-bench-") as folder:
        say(f"building the stores for {args.tenants} tenants")
        started = time.perf_counter()
        config = build(Path(folder), args.tenants, now)
        say(f"built in {time.perf_counter() - started:.1f} s")
        target = domain(args.tenants // 2 - (args.tenants // 2) % 50)
        search = target[: len("customer") + 4]  # a prefix a hundred tenants share
        product = create_app(config)
        reference = reference_app(config)
        first = (
            timed(lambda: product.test_client().get("/")),
            timed(lambda: reference.test_client().get("/")),
        )
        settle(product)  # the warm figures below without a rebuild beside them
        cases = [
            ("first page of a fresh app (builds its rows)", *first),
            *(
                (
                    name,
                    measure(product, path, args.rounds),
                    measure(reference, path, args.rounds),
                )
                for name, path in (
                    ("list, first page", "/"),
                    (f"search q={search}", f"/?q={search}"),
                    ("filter problems", "/?filter=problems"),
                    (f"tenant page {target}", f"/tenant/{target}"),
                )
            ),
            *after_change(product, reference, config, now),
        ]
        product.extensions["status_index"].stop()
    print(f"status page, {args.tenants} tenants, median of {args.rounds} (first: one run)")
    print(f"{'request':48} {'product ms':>11} {'reference ms':>13} {'ratio':>7}")
    for name, mine, theirs in cases:
        print(f"{name:48} {mine:11.2f} {theirs:13.2f} {mine / theirs:6.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
