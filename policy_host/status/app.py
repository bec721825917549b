"""The status page: a read-only Flask app for provider staff.

Served on a private listener of its own (``policy-host status --bind``),
never on the public policy names; put it behind nginx with authentication
(README, "Status page"). It reads the stores only: apply state, the
results store (check, certs, events) and the report store. Never DNS.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from flask import Flask, abort, render_template, request, url_for
from jinja2 import DictLoader

from policy_host.model import InvalidValue, hostname
from policy_host.read.config import ProviderConfig
from policy_host.results import read_events
from policy_host.state import history
from policy_host.status.index import FILTERS, SORTS, select
from policy_host.status.pages import BASE, LIST, TENANT
from policy_host.status.refresh import IndexCache
from policy_host.status.series import daily_totals, tenant_series
from policy_host.status.svg import day_label, stacked_bars

PER_PAGE = 50
DAYS = 30
FILTER_LABELS = {
    "all": "All",
    "problems": "Problems only",
    "ready": "Ready to promote",
    "withdrawal": "In withdrawal",
}
COLUMNS = (
    ("domain", "Domain"),
    ("mode", "Mode"),
    ("", "Id"),
    ("check", "Last check"),
    ("certificate", "Certificate"),
    ("", f"TLS reports, {DAYS} days"),
    ("", "Promotion"),
    ("event", "Last event"),
)


def create_app(
    config: ProviderConfig,
    clock: Callable[[], float] = time.time,
    index: IndexCache | None = None,
) -> Flask:
    """The app; ``index`` keeps its rows (one is made when not given).
    ``app.extensions["status_index"]`` holds it: stop it to end the app."""
    app = Flask(__name__)
    app.jinja_loader = DictLoader({"base.html": BASE, "list.html": LIST, "tenant.html": TENANT})
    cache = index if index is not None else IndexCache(config, clock)
    app.extensions["status_index"] = cache
    app.jinja_env.filters.update(
        when=lambda t: time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t)),
        clock=lambda t: time.strftime("%H:%M:%S UTC", time.gmtime(t)),
        day=lambda t: time.strftime("%Y-%m-%d", time.gmtime(t)),
        dayno=day_label,
        days_left=lambda t: int((t - clock()) // 86_400),
    )

    @app.context_processor
    def _now() -> dict[str, Any]:
        return {"now": clock()}

    @app.get("/")
    def tenants() -> str:
        args = request.args
        q = args.get("q", "")[:253]
        kind = args.get("filter", "all")
        sort = args.get("sort", "domain")
        desc = args.get("desc", "0") == "1"
        if kind not in FILTERS or sort not in SORTS:
            abort(400)
        view = cache.view()
        rows = select(view.index.rows, q, kind, sort, desc)
        pages = max(math.ceil(len(rows) / PER_PAGE), 1)
        page = min(max(_int(args.get("page", "1")), 1), pages)
        shown = rows[(page - 1) * PER_PAGE : page * PER_PAGE]
        today = int(clock() // 86_400)
        days = list(range(today - DAYS, today))
        daily = daily_totals(config.reports_db, [r.domain for r in shown], days[0], days[-1])
        totals = {
            d: (sum(s for s, _ in v.values()), sum(f for _, f in v.values()))
            for d, v in daily.items()
        }
        sparks = {
            d: stacked_bars(
                f"s-{n}",
                f"{d}: sessions per day, last {DAYS} days",
                days,
                [
                    ("successful", {k: s for k, (s, _) in v.items()}),
                    ("failed", {k: f for k, (_, f) in v.items()}),
                ],
                width=120,
                height=24,
                legend=False,
            )
            for n, (d, v) in enumerate(daily.items())
        }

        def link(**changes: object) -> str:
            params: dict[str, Any] = {
                "q": q,
                "filter": kind,
                "sort": sort,
                "desc": int(desc),
                "page": page,
            }
            params.update(changes)
            return url_for("tenants", **{k: v for k, v in params.items() if v not in ("", None)})

        return render_template(
            "list.html",
            rows=shown,
            total=len(rows),
            first=(page - 1) * PER_PAGE + 1,
            last=(page - 1) * PER_PAGE + len(shown),
            page=page,
            pages=pages,
            q=q,
            kind=kind,
            sort=sort,
            desc=desc,
            filters=list(FILTER_LABELS.items()),
            columns=COLUMNS,
            totals=totals,
            sparks=sparks,
            link=link,
            view=view,
        )

    @app.get("/tenant/<domain>")
    def tenant(domain: str) -> str:
        try:
            name = hostname(domain, what="domain").ascii
        except InvalidValue:
            abort(404)
        view = cache.view()
        row = view.index.by_domain.get(name)
        if row is None:
            abort(404)
        today = int(clock() // 86_400)
        first, last = today - DAYS, today - 1
        series = tenant_series(config.reports_db, name, first, last)
        days = series.days
        charts = {
            "totals": stacked_bars(
                "totals",
                "Successful and failed sessions per day",
                days,
                [
                    ("successful", {d: s for d, (s, _) in series.totals.items()}),
                    ("failed", {d: f for d, (_, f) in series.totals.items()}),
                ],
            ),
            "types": stacked_bars(
                "types",
                "Failed sessions per day by result type",
                days,
                sorted(series.by_type.items()),
            ),
            "mx": stacked_bars(
                "mx", "Failed sessions per day by MX", days, sorted(series.by_mx.items())
            ),
        }
        events = [
            (h.at, h.event, f"id {h.policy_id or '-'}, max_age {h.max_age}")
            for h in history(config.state_db, name)
        ]
        events += [(e.at, e.kind, e.message) for e in read_events(config.results_db, name)]
        events.sort(key=lambda e: -e[0])
        return render_template(
            "tenant.html",
            row=row,
            series=series,
            days=days,
            charts=charts,
            history=events,
            view=view,
        )

    @app.get("/healthz")
    def healthz() -> tuple[str, int, dict[str, str]]:
        return "ok\n", 200, {"Content-Type": "text/plain"}

    return app


def _int(text: str) -> int:
    return int(text) if text.isdigit() and len(text) < 9 else 1
