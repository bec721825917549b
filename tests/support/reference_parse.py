"""The report parser as it was before it built rows directly: JSON ->
``Report`` dataclasses, one method per field. Kept only as the oracle that
tests/test_reports_parse_rows.py compares ``parse.parse_rows`` with, on the
corpus and on made-up reports; the rules live in policy_host/reports/parse.py."""

from __future__ import annotations

import json
from collections.abc import Iterable

from policy_host.reports import parse
from policy_host.reports.model import (
    POLICY_TYPES,
    RESULT_TYPES,
    Envelope,
    FailureDetail,
    PolicyResult,
    Report,
)
from policy_host.reports.parse import MAX_COUNT, MAX_DETAILS, MAX_TEXT, Refused, _all_text

__all__ = ["MAX_COUNT", "MAX_DETAILS", "MAX_TEXT", "Refused", "parse_report"]


def parse_report(data: bytes, envelope: Envelope, quirks: Iterable[str] = ()) -> Report:
    """Parse RFC 8460 section 4 JSON; ``Refused`` when it cannot be used.
    ``quirks``: those already seen on the way (in the mail or the body)."""
    try:
        doc = json.loads(data)
    except UnicodeDecodeError:
        raise Refused("not UTF-8 text") from None
    except RecursionError:
        raise Refused("JSON nested too deeply") from None
    except ValueError as exc:
        raise Refused(f"not JSON: {str(exc)[:100]}") from None
    reader = _Reader(envelope)
    reader.quirks.update(quirks)
    return reader.whole(doc)


class _Reader(parse._Reader):
    """The rules for single values (``required_text`` .. ``domain``) are
    the product's own; what is kept here is the old shape: dataclasses
    built field by field, one method call per item."""

    def whole(self, doc: object) -> Report:
        if not isinstance(doc, dict):
            raise Refused("the report is not a JSON object")
        organization = self.required_text(doc, "organization-name")
        report_id = doc.get("report-id")
        if isinstance(report_id, int) and not isinstance(report_id, bool):
            self.quirks.add("report-id-not-text")
            report_id = str(report_id)
        if not isinstance(report_id, str) or not report_id.strip():
            raise Refused("report-id: missing or not text")
        contact = doc.get("contact-info")
        if contact is None:
            self.quirks.add("contact-info-null")
        elif not isinstance(contact, str):
            raise Refused("contact-info: expected text")
        dates = doc.get("date-range")
        if not isinstance(dates, dict):
            raise Refused("date-range: missing or not an object")
        start = self.datetime(dates, "start-datetime")
        end = self.datetime(dates, "end-datetime")
        if end < start:
            raise Refused("date-range: end-datetime is before start-datetime")
        policies = doc.get("policies")
        if policies is None or policies == []:
            self.quirks.add("no-policies")
            policies = []
        if not isinstance(policies, list):
            raise Refused("policies: expected a list")
        results = tuple(self.one_policy(item, i) for i, item in enumerate(policies))
        return Report(
            organization=self.text(organization),
            report_id=self.text(report_id.strip()),
            contact=self.text(contact) if isinstance(contact, str) else None,
            start=start,
            end=end,
            policies=results,
            quirks=tuple(sorted(self.quirks)),
        )

    def one_policy(self, item: object, index: int) -> PolicyResult:
        where = f"policies[{index}]."
        if not isinstance(item, dict):
            raise Refused(f"policies[{index}]: expected an object")
        policy = item.get("policy")
        if not isinstance(policy, dict):
            raise Refused(f"{where}policy: missing or not an object")
        policy_type = self.optional_text(policy, "policy-type", where) or ""
        if policy_type not in POLICY_TYPES:
            self.quirks.add("unknown-policy-type")
        strings = policy.get("policy-string") or []
        if isinstance(strings, str):
            strings = [strings]
        if not isinstance(strings, list) or not _all_text(strings):
            raise Refused(f"{where}policy.policy-string: expected a list of text")
        raw_domain = policy.get("policy-domain")
        if isinstance(raw_domain, str) and raw_domain.strip():
            domain = self.domain(raw_domain)
        elif raw_domain is not None and not isinstance(raw_domain, str):
            raise Refused(f"{where}policy.policy-domain: expected text")
        elif self.envelope.domain:
            # no-policy-found reports from some senders omit it (RFC 8460
            # section 4.3 requires it); the mail header or file name says it.
            self.quirks.add("policy-domain-from-envelope")
            domain = self.domain(self.envelope.domain)
        else:
            self.quirks.add("policy-domain-missing")
            domain = ""
        mx = policy.get("mx-host")
        if isinstance(mx, str):
            self.quirks.add("mx-host-string")
            mx = [mx]
        mx = mx or []
        if not isinstance(mx, list) or not _all_text(mx):
            raise Refused(f"{where}policy.mx-host: expected text or a list of text")
        summary = item.get("summary")
        if not isinstance(summary, dict):
            raise Refused(f"{where}summary: missing or not an object")
        success = self.count(summary, "total-successful-session-count", where + "summary.")
        failure = self.count(summary, "total-failure-session-count", where + "summary.")
        details_in = item.get("failure-details") or []
        if not isinstance(details_in, list):
            raise Refused(f"{where}failure-details: expected a list")
        details = [
            self.one_detail(d, f"{where}failure-details[{i}].") for i, d in enumerate(details_in)
        ]
        if sum(d.count for d in details) != failure and details:
            # Both are kept: the summary is what rates are computed from.
            self.quirks.add("totals-disagree")
        if len(details) > MAX_DETAILS:
            self.quirks.add("details-truncated")
            details = details[:MAX_DETAILS]
        return PolicyResult(
            policy_type=policy_type,
            domain=domain,
            policy_string=self.texts(strings),
            mx_host=self.texts([m.strip().lower() for m in mx]),
            success=success,
            failure=failure,
            details=tuple(details),
        )

    def one_detail(self, item: object, where: str) -> FailureDetail:
        if not isinstance(item, dict):
            raise Refused(f"{where[:-1]}: expected an object")
        result_type = self.optional_text(item, "result-type", where)
        if not result_type:
            raise Refused(f"{where}result-type: missing")
        if result_type not in RESULT_TYPES:
            self.quirks.add("unknown-result-type")
        mx = self.optional_text(item, "receiving-mx-hostname", where)
        return FailureDetail(
            result_type=result_type,
            count=self.count(item, "failed-session-count", where),
            sending_mta_ip=self.ip(item, "sending-mta-ip", where),
            receiving_mx_hostname=mx.strip().rstrip(".").lower() if mx else None,
            receiving_mx_helo=self.optional_text(item, "receiving-mx-helo", where),
            receiving_ip=self.ip(item, "receiving-ip", where),
            additional_information=self.optional_text(item, "additional-information", where),
            failure_reason_code=self.optional_text(item, "failure-reason-code", where),
        )
