"""A parsed report as the values the store inserts, made once.

``ReportRows`` holds everything the store writes of a report: the ``report``
row's values, each policy's ``result`` values (``policy-string`` and
``mx-host`` already as JSON text) and each failure detail's ``detail``
values. It is made of plain tuples and strings, cheap to build and to
insert; ``digest_of`` gives the digest a copy is compared by
(docs/performance.md).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import NamedTuple

from policy_host.reports.model import FailureDetail, PolicyResult, Report

# A ``detail`` row's values after its ``result`` column, in the order of
# both the table's columns and ``FailureDetail``'s fields: result_type,
# count, sending_mta_ip, receiving_mx_hostname, receiving_mx_helo,
# receiving_ip, additional_information, failure_reason_code.
DetailRow = tuple[str, int, str | None, str | None, str | None, str | None, str | None, str | None]


class PolicyRows(NamedTuple):
    """One ``policies`` entry as the store writes it."""

    policy_type: str
    domain: str
    policy_string: tuple[str, ...]
    mx_host: tuple[str, ...]
    success: int
    failure: int
    details: tuple[DetailRow, ...]
    strings_json: str  # result.policy_string
    mx_json: str  # result.mx_host


class ReportRows(NamedTuple):
    """A report as the store writes it. Made by ``report_rows`` and, with
    fewer policies, by ``cut``."""

    organization: str
    report_id: str
    contact: str | None
    start: float
    end: float
    quirks: tuple[str, ...]
    policies: tuple[PolicyRows, ...]


# JSON text of a string, ASCII only (json's own C function).
_text = json.encoder.encode_basestring_ascii


def _maybe(value: str | None) -> str:
    return "null" if value is None else _text(value)


def json_list(items: Sequence[str]) -> str:
    """``json.dumps(items)`` for a list of strings, without its per-call set-up."""
    return "[" + ", ".join(map(_text, items)) + "]"


def content_digest(
    organization: str,
    report_id: str,
    contact: str | None,
    start: float,
    end: float,
    policies: Sequence[PolicyRows],
) -> str:
    """SHA-256 of a report's content as canonical JSON: the same text for
    the same parsed content, whoever built the rows. The quirks are left
    out: they say how a copy was sent (mail header, gzip label), not what
    it reports.

    The text is ``json.dumps(dataclasses.asdict(report without quirks),
    sort_keys=True, separators=(",", ":"), ensure_ascii=True)``, so digests
    stored before the rows existed still match, written out here because
    building the dictionaries costs more than the rest of a report's rows
    (tests/test_reports_rows.py compares the two on any report). Numbers
    are ints and finite floats, whose ``repr`` is what json writes."""
    parts = [
        f'{{"contact":{_maybe(contact)},"end":{end!r},"organization":{_text(organization)},'
        '"policies":['
    ]
    for i, p in enumerate(policies):
        details = ",".join(
            f'{{"additional_information":{_maybe(d[6])},"count":{d[1]!r},'
            f'"failure_reason_code":{_maybe(d[7])},"receiving_ip":{_maybe(d[5])},'
            f'"receiving_mx_helo":{_maybe(d[4])},"receiving_mx_hostname":{_maybe(d[3])},'
            f'"result_type":{_text(d[0])},"sending_mta_ip":{_maybe(d[2])}}}'
            for d in p.details
        )
        parts.append(
            f'{"," if i else ""}{{"details":[{details}],"domain":{_text(p.domain)},'
            f'"failure":{p.failure!r},"mx_host":[{",".join(map(_text, p.mx_host))}],'
            f'"policy_string":[{",".join(map(_text, p.policy_string))}],'
            f'"policy_type":{_text(p.policy_type)},"success":{p.success!r}}}'
        )
    parts.append(f'],"quirks":[],"report_id":{_text(report_id)},"start":{start!r}}}')
    return hashlib.sha256("".join(parts).encode()).hexdigest()


def policy_rows(p: PolicyResult) -> PolicyRows:
    details: tuple[DetailRow, ...] = tuple(
        (
            d.result_type, d.count, d.sending_mta_ip, d.receiving_mx_hostname,
            d.receiving_mx_helo, d.receiving_ip, d.additional_information, d.failure_reason_code,
        )
        for d in p.details
    )  # fmt: skip
    return PolicyRows(
        p.policy_type,
        p.domain,
        p.policy_string,
        p.mx_host,
        p.success,
        p.failure,
        details,
        json_list(p.policy_string),
        json_list(p.mx_host),
    )


def report_rows(report: Report) -> ReportRows:
    r = report
    policies = tuple(policy_rows(p) for p in r.policies)
    return ReportRows(r.organization, r.report_id, r.contact, r.start, r.end, r.quirks, policies)


def cut(rows: ReportRows, policies: tuple[PolicyRows, ...]) -> ReportRows:
    """The report with only ``policies`` (some of its own)."""
    return rows._replace(policies=policies)


def digest_of(rows: ReportRows) -> str:
    """``content_digest`` of the report the rows hold."""
    r = rows
    return content_digest(r.organization, r.report_id, r.contact, r.start, r.end, r.policies)


def domains(policies: Sequence[PolicyRows]) -> list[str]:
    if len(policies) == 1:  # most reports: no set to build
        return [policies[0].domain]
    return sorted({p.domain for p in policies})


def to_report(rows: ReportRows) -> Report:
    """The ``Report`` the rows were made of."""
    return Report(
        rows.organization,
        rows.report_id,
        rows.contact,
        rows.start,
        rows.end,
        tuple(
            PolicyResult(
                p.policy_type,
                p.domain,
                p.policy_string,
                p.mx_host,
                p.success,
                p.failure,
                tuple(FailureDetail(*d) for d in p.details),
            )
            for p in rows.policies
        ),
        rows.quirks,
    )
