"""Small server-rendered SVG charts: stacked bars per day.

Readable without colour alone: every series has a fill pattern of its own
as well as a colour, the legend names each, and every bar has a ``<title>``
with its figures (screen readers and tooltips); the pages show the same
figures in a table next to each chart.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from html import escape

from markupsafe import Markup

COLOURS = ("#2b6cb0", "#c53030", "#b7791f", "#2f855a", "#6b46c1", "#4a5568", "#d53f8c")
# One pattern per series (the first solid): hatching tells them apart in grey.
PATTERNS = ("solid", "hatch", "dots", "cross", "back", "grid", "dense")


def day_label(day: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(day * 86_400))


def _defs(uid: str, count: int) -> str:
    parts = []
    for n in range(count):
        colour, kind = COLOURS[n % len(COLOURS)], PATTERNS[n % len(PATTERNS)]
        marks = {
            "solid": "",
            "hatch": '<path d="M0,6 L6,0" stroke="#fff" stroke-width="1.5"/>',
            "dots": '<circle cx="3" cy="3" r="1.3" fill="#fff"/>',
            "cross": '<path d="M0,0 L6,6 M6,0 L0,6" stroke="#fff" stroke-width="1"/>',
            "back": '<path d="M0,0 L6,6" stroke="#fff" stroke-width="1.5"/>',
            "grid": '<path d="M3,0 V6 M0,3 H6" stroke="#fff" stroke-width="1"/>',
            "dense": '<path d="M0,2 H6 M0,5 H6" stroke="#fff" stroke-width="1"/>',
        }[kind]
        parts.append(
            f'<pattern id="{uid}-p{n}" width="6" height="6" patternUnits="userSpaceOnUse">'
            f'<rect width="6" height="6" fill="{colour}"/>{marks}</pattern>'
        )
    return "<defs>" + "".join(parts) + "</defs>"


def stacked_bars(
    uid: str,
    title: str,
    days: Sequence[int],
    series: Sequence[tuple[str, Mapping[int, int]]],
    *,
    width: int = 640,
    height: int = 160,
    legend: bool = True,
) -> Markup:
    """Bars per day, each stacked from ``series`` (name, day -> count)."""
    totals = [sum(s.get(d, 0) for _, s in series) for d in days]
    top = max(totals, default=0) or 1
    pad = 4
    legend_h = 18 * ((len(series) + 2) // 3) if legend else 0
    chart_h = height - legend_h
    step = (width - 2 * pad) / max(len(days), 1)
    bar_w = max(step - 1, 1)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" aria-label="{escape(title)}" class="chart" '
        f'data-chart="{escape(uid)}"><title>{escape(title)}</title>',
        _defs(uid, len(series)),
    ]
    for i, day in enumerate(days):
        y = float(chart_h - pad)
        x = pad + i * step
        for n, (name, values) in enumerate(series):
            count = values.get(day, 0)
            if not count:
                continue
            h = max((chart_h - 2 * pad) * count / top, 1.0)
            y -= h
            out.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
                f'fill="url(#{uid}-p{n})" data-day="{day_label(day)}" '
                f'data-series="{escape(name)}" data-count="{count}">'
                f"<title>{day_label(day)} {escape(name)}: {count}</title></rect>"
            )
    out.append(
        f'<line x1="{pad}" y1="{chart_h - pad}" x2="{width - pad}" y2="{chart_h - pad}" '
        'stroke="#333"/>'
    )
    if legend:
        for n, (name, values) in enumerate(series):
            lx, ly = pad + (n % 3) * (width // 3), chart_h + 4 + 18 * (n // 3)
            out.append(
                f'<rect x="{lx}" y="{ly}" width="14" height="14" fill="url(#{uid}-p{n})" '
                f'stroke="#333"/><text x="{lx + 18}" y="{ly + 12}" font-size="12">'
                f"{escape(name)} ({sum(values.values())})</text>"
            )
    out.append("</svg>")
    return Markup("".join(out))
