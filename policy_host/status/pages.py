"""The status page's HTML templates (Jinja, autoescaped)."""

from __future__ import annotations

BASE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{% block title %}policy-host status{% endblock %}</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:1rem 2rem;color:#111;background:#fff}
a{color:#1a4f8b}:focus-visible{outline:3px solid #d69e2e;outline-offset:1px}
table{border-collapse:collapse;margin:.5rem 0}th,td{border-bottom:1px solid #ccc;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f2f2f2}td.num{text-align:right;font-variant-numeric:tabular-nums}
.bad{font-weight:bold}.bad::before{content:"\\2716  "}.warn::before{content:"\\26A0  "}.good::before{content:"\\2714  "}
.skip{position:absolute;left:-999px}.skip:focus{left:1rem;top:1rem;background:#fff;padding:.5rem}
nav.filters a[aria-current=page]{font-weight:bold;text-decoration:none;border-bottom:3px solid #111}
</style></head><body>
<a class="skip" href="#main">Skip to content</a>
<header><p><a href="{{ url_for('tenants') }}">policy-host status</a> &middot;
generated {{ now|when }} from the stores (no DNS queried){% if view %}
&middot; <span id="as-of">figures as of {{ view.index.as_of|clock }}{% if view.refreshing %}, refreshing{% endif %}</span>{% endif %}</p></header>
<main id="main">{% block main %}{% endblock %}</main></body></html>
"""

LIST = """{% extends "base.html" %}
{% block main %}
<h1>Tenants</h1>
<nav class="filters" aria-label="Filters">
{% for key, label in filters %}<a href="{{ link(filter=key, page=1) }}"
{% if key == kind %}aria-current="page"{% endif %}>{{ label }}</a>{% if not loop.last %} &middot; {% endif %}
{% endfor %}</nav>
<form method="get" role="search"><label for="q">Search domain</label>
<input id="q" name="q" value="{{ q }}"><input type="hidden" name="filter" value="{{ kind }}">
<button type="submit">Search</button></form>
<p id="count">{{ total }} tenants{% if total %}, {{ first }} to {{ last }} shown{% endif %}</p>
<table id="tenants"><caption>Tenants, sorted by {{ sort }}{% if desc %} (descending){% endif %}</caption>
<thead><tr>{% for key, label in columns %}<th scope="col">{% if key %}<a href="{{ link(sort=key, desc=(1 if key == sort and not desc else 0)) }}">{{ label }}</a>{% else %}{{ label }}{% endif %}</th>{% endfor %}</tr></thead>
<tbody>{% for r in rows %}<tr data-domain="{{ r.domain }}">
<th scope="row"><a href="{{ url_for('tenant', domain=r.domain) }}">{{ r.domain }}</a></th>
<td>{{ r.mode or "-" }}{% if r.withdrawing %} (withdrawing){% endif %}</td>
<td><code>{{ r.policy_id or "-" }}</code></td>
<td class="check">{% if r.check_status %}<span class="{{ {'fail': 'bad', 'warn': 'warn', 'ok': 'good'}[r.check_status] }}">{{ r.check_status }}</span>
{{ r.check_codes|join(", ") }}{% else %}not checked{% endif %}</td>
<td>{% if r.cert_not_after %}{{ r.cert_not_after|day }} ({{ r.cert_not_after|days_left }} days){% else %}none known{% endif %}</td>
<td class="num reports" data-success="{{ totals[r.domain][0] }}" data-failure="{{ totals[r.domain][1] }}">
{{ totals[r.domain][0] }} ok / {{ totals[r.domain][1] }} failed {{ sparks[r.domain] }}</td>
<td class="promotion">{% if r.ready is none %}-{% elif r.ready %}<span class="good">ready</span>{% else %}held: {{ r.holds|join(", ") }}{% endif %}</td>
<td>{% if r.event %}{{ r.event.kind }} {{ r.event.at|when }}{% else %}-{% endif %}</td>
</tr>{% endfor %}</tbody></table>
<nav aria-label="Pages">{% if page > 1 %}<a rel="prev" href="{{ link(page=page - 1) }}">Previous page</a>{% endif %}
Page {{ page }} of {{ pages }}
{% if page < pages %}<a rel="next" href="{{ link(page=page + 1) }}">Next page</a>{% endif %}</nav>
{% endblock %}
"""

TENANT = """{% extends "base.html" %}
{% block title %}{{ row.domain }} - policy-host status{% endblock %}
{% block main %}
<h1>{{ row.domain }}</h1>
<dl id="summary">
<dt>Mode</dt><dd id="mode">{{ row.mode or "-" }}{% if row.withdrawing %} (withdrawing){% endif %}</dd>
<dt>Policy id</dt><dd><code id="policy-id">{{ row.policy_id or "-" }}</code></dd>
<dt>Last check</dt><dd id="check">{% if row.check_status %}{{ row.check_status }} at {{ row.check_at|when }}: {{ row.check_codes|join(", ") or "no reasons" }}{% else %}not checked{% endif %}</dd>
<dt>Certificate</dt><dd>{% if row.cert_not_after %}until {{ row.cert_not_after|when }}{% else %}none known{% endif %}</dd>
<dt>Promotion</dt><dd id="promotion">{% if row.ready is none %}not in testing{% elif row.ready %}ready for enforce{% else %}held: {{ row.holds|join(", ") }}{% endif %}</dd>
</dl>
<h2>Sessions per day, last {{ days|length }} days</h2>
{{ charts.totals }}
<h2>Failures per day by result type</h2>
{{ charts.types }}
<h2>Failures per day by MX</h2>
{{ charts.mx }}
<table id="daily"><caption>Per day</caption><thead><tr><th scope="col">Day</th><th scope="col">Successful</th><th scope="col">Failed</th></tr></thead>
<tbody>{% for day in days if day in series.totals %}<tr><th scope="row">{{ day|dayno }}</th>
<td class="num">{{ series.totals[day][0] }}</td><td class="num">{{ series.totals[day][1] }}</td></tr>{% endfor %}</tbody></table>
<h2>Policy versions senders used</h2>
<table id="versions"><thead><tr><th scope="col">Policy id</th><th scope="col">Match</th><th scope="col">Reports</th><th scope="col">First day</th><th scope="col">Last day</th><th scope="col">Organisations</th></tr></thead>
<tbody>{% for pid, match, n, lo, hi, orgs in series.policies %}<tr><td><code>{{ pid }}</code></td><td>{{ match }}</td><td class="num">{{ n }}</td><td>{{ lo|dayno }}</td><td>{{ hi|dayno }}</td><td>{{ orgs }}</td></tr>{% endfor %}</tbody></table>
<h2>History</h2>
<table id="history"><thead><tr><th scope="col">When</th><th scope="col">What</th><th scope="col">Detail</th></tr></thead>
<tbody>{% for at, what, detail in history %}<tr><td>{{ at|when }}</td><td>{{ what }}</td><td>{{ detail }}</td></tr>{% endfor %}</tbody></table>
{% endblock %}
"""
