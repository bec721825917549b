"""The status page by keyboard alone, in a real browser: headless Chromium
driven over the DevTools protocol (``support.cdp``) gets real Tab and Enter
key presses. Focus reaches the filters, the search box and a tenant link in
document order, shows an outline (``:focus-visible`` in the computed
style), and Enter on a link opens it. Status reads without colour: a text
and a symbol beside it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from support.applyenv import CLI
from support.browser import chromium
from support.cdp import Page
from support.procs import LOOPBACK, Daemon, free_port, port_open
from support.promoteenv import provider_with_evidence

from policy_host.results import STEPPED_DOWN, Event, add_events

# :focus-visible{outline:3px solid #d69e2e} in status/pages.py
OUTLINE = ("solid", "3px", "rgb(214, 158, 46)")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    chromium()
    config = provider_with_evidence(tmp_path_factory.mktemp("keyboard"))
    add_events(
        config.results_db,
        [Event("done.example", time.time() - 60, STEPPED_DOWN, "stepped down: MX moved", {})],
    )
    port = free_port("tcp")
    with Daemon(
        [*CLI, "--config", str(config.path), "status", "--bind", f"{LOOPBACK}:{port}"],
        name="status",
        workdir=tmp_path_factory.mktemp("keyboard-run"),
        ready=lambda: port_open(LOOPBACK, port),
    ):
        yield f"http://{LOOPBACK}:{port}"


@pytest.fixture
def page() -> Iterator[Page]:
    with Page() as opened:
        yield opened


def outline(focused: dict[str, Any]) -> tuple[str, str, str]:
    return focused["outlineStyle"], focused["outlineWidth"], focused["outlineColor"]


def test_tab_reaches_filters_search_and_a_tenant_and_enter_opens_it(
    server: str, page: Page
) -> None:
    page.open(server + "/")
    visited = []

    def note(stop: Any) -> Any:
        def matches(focused: dict[str, Any]) -> bool:
            visited.append(focused)
            return bool(stop(focused))

        return matches

    first_filter = page.tab_until(note(lambda f: f["inside"] == "Filters"))
    assert first_filter["text"] == "All"
    assert first_filter["focusVisible"] is True
    assert outline(first_filter) == OUTLINE
    problems = page.tab_until(note(lambda f: f["text"] == "Problems only"), limit=1)
    assert problems["inside"] == "Filters" and outline(problems) == OUTLINE
    search = page.tab_until(note(lambda f: f["id"] == "q"), limit=5)
    assert search["tag"] == "input" and search["focusVisible"] is True
    assert outline(search) == OUTLINE
    link = page.tab_until(note(lambda f: (f["href"] or "").startswith("/tenant/")), limit=20)
    assert link["href"] == "/tenant/done.example" and link["text"] == "done.example"
    assert outline(link) == OUTLINE
    # Every stop on the way showed where focus was (the skip link too).
    assert all(f["focusVisible"] and f["outlineStyle"] != "none" for f in visited)
    assert visited[0]["text"] == "Skip to content"

    page.press("Enter")
    page.wait_for("location.pathname === '/tenant/done.example'", "the tenant page")
    page.wait_for("document.readyState === 'complete'", "the tenant page to load")
    assert page.evaluate("document.querySelector('h1').textContent") == "done.example"
    assert page.evaluate("document.getElementById('mode').textContent") == "enforce"


def test_enter_on_a_filter_applies_it(server: str, page: Page) -> None:
    page.open(server + "/")
    page.tab_until(lambda f: f["text"] == "Problems only")
    page.press("Enter")
    page.wait_for("location.search.includes('filter=problems')", "the filtered list")
    page.wait_for("document.readyState === 'complete'", "the filtered list to load")
    domains = page.evaluate(
        "[...document.querySelectorAll('tr[data-domain]')].map(r => r.dataset.domain)"
    )
    assert domains == ["done.example"]
    current = page.evaluate("document.querySelector('nav.filters [aria-current=page]').textContent")
    assert current == "Problems only"


def test_status_is_said_in_text_and_a_symbol_not_colour_alone(server: str, page: Page) -> None:
    page.open(server + "/")
    marks = page.evaluate(
        """[...document.querySelectorAll('td.check span, td.promotion span')].map(e => [
             e.closest('tr').dataset.domain, e.textContent.trim(),
             getComputedStyle(e, '::before').content])"""
    )
    assert ["done.example", "fail", '"✖ "'] in marks
    assert ["ready.example", "ok", '"✔ "'] in marks
    assert ["ready.example", "ready", '"✔ "'] in marks
    # The held tenant says why in words.
    held = page.evaluate(
        "document.querySelector('tr[data-domain=\"young.example\"] td.promotion').textContent"
    )
    assert held.strip().startswith("held: testing_too_short")
