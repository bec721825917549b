"""A parsed report as the values the store inserts, made once.

``ReportRows`` holds everything the store writes of a report: the ``report``
row's values, each policy's ``result`` values (``policy-string`` and
``mx-host`` already as JSON text), each failure detail's ``detail`` values,
and the canonical JSON the content digest is taken of, in pieces, so the
digest of a report cut to the hosted domains' policies is a join and one
SHA-256 away. It is made of plain tuples and strings, so a worker process
can build it and send it to the one process that stores, which then only
inserts (docs/performance.md).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any, NamedTuple

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
    content: str  # this policy's canonical JSON, a piece of the digest's text


class ReportRows(NamedTuple):
    """A report as the store writes it. Made by ``report_rows`` and, with
    fewer policies, by ``cut``: ``digest`` always covers ``policies``."""

    organization: str
    report_id: str
    contact: str | None
    start: float
    end: float
    quirks: tuple[str, ...]
    policies: tuple[PolicyRows, ...]
    head: str  # the digest's text before the policies' pieces
    tail: str  # and after them
    digest: str  # content_digest of these pieces


def _canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _detail_fields(d: DetailRow) -> dict[str, Any]:
    return {
        "result_type": d[0],
        "count": d[1],
        "sending_mta_ip": d[2],
        "receiving_mx_hostname": d[3],
        "receiving_mx_helo": d[4],
        "receiving_ip": d[5],
        "additional_information": d[6],
        "failure_reason_code": d[7],
    }


def policy_rows(p: PolicyResult) -> PolicyRows:
    details: tuple[DetailRow, ...] = tuple(
        (
            d.result_type, d.count, d.sending_mta_ip, d.receiving_mx_hostname,
            d.receiving_mx_helo, d.receiving_ip, d.additional_information, d.failure_reason_code,
        )
        for d in p.details
    )  # fmt: skip
    content = _canonical(
        {
            "policy_type": p.policy_type,
            "domain": p.domain,
            "policy_string": p.policy_string,
            "mx_host": p.mx_host,
            "success": p.success,
            "failure": p.failure,
            "details": [_detail_fields(d) for d in details],
        }
    )
    return PolicyRows(
        p.policy_type,
        p.domain,
        p.policy_string,
        p.mx_host,
        p.success,
        p.failure,
        details,
        json.dumps(p.policy_string),
        json.dumps(p.mx_host),
        content,
    )


# Where the policies' pieces go in the report's canonical JSON.
_POLICIES = '"policies":[]'


def report_rows(report: Report) -> ReportRows:
    # The digest covers the content, not the quirks: they say how a copy
    # was sent (mail header, gzip label), not what it reports.
    text = _canonical(
        {
            "organization": report.organization,
            "report_id": report.report_id,
            "contact": report.contact,
            "start": report.start,
            "end": report.end,
            "policies": [],
            "quirks": [],
        }
    )
    # Quotes inside strings are escaped, so the key occurs once.
    head, tail = text.split(_POLICIES)
    head, tail = head + _POLICIES[:-1], "]" + tail
    policies = tuple(policy_rows(p) for p in report.policies)
    return ReportRows(
        report.organization,
        report.report_id,
        report.contact,
        report.start,
        report.end,
        report.quirks,
        policies,
        head,
        tail,
        content_digest(head, policies, tail),
    )


def cut(rows: ReportRows, policies: tuple[PolicyRows, ...]) -> ReportRows:
    """The report with only ``policies`` (some of its own), digest and all."""
    return rows._replace(policies=policies, digest=content_digest(rows.head, policies, rows.tail))


def content_digest(head: str, policies: Sequence[PolicyRows], tail: str) -> str:
    """SHA-256 of the report's content as canonical JSON (sorted keys, no
    spaces, ASCII): the same text for the same parsed content, whoever
    built the rows."""
    text = head + ",".join(p.content for p in policies) + tail
    return hashlib.sha256(text.encode()).hexdigest()


def domains(policies: Sequence[PolicyRows]) -> list[str]:
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
