"""JSON report -> ``ReportRows``: strict about what matters, tolerant of
named quirks.

A report is refused (``Refused``, with a reason a person can act on) only
when it cannot be attributed or counted: not JSON, no organisation or
report-id, no date range, counts that are not whole numbers in range. Known
sender quirks are tolerated and each is recorded by name in
``Report.quirks``, so staff can see which senders do what.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from policy_host.errors import PolicyHostError
from policy_host.model import InvalidValue, hostname
from policy_host.reports.model import POLICY_TYPES, RESULT_TYPES, Envelope, Report
from policy_host.reports.rows import (
    DetailRow,
    PolicyRows,
    ReportRows,
    json_list,
    to_report,
)

# A day of sessions from one sender to one domain is far below this; the cap
# keeps sums over millions of reports inside SQLite's 64-bit integers.
MAX_COUNT = 10**12
# Longest text field kept in the rows (the raw report keeps everything).
MAX_TEXT = 2000
# Failure details kept per policy (the raw report keeps all of them).
MAX_DETAILS = 1000

# The quirks tolerated, by the name recorded in Report.quirks.
QUIRKS = {
    "datetime-without-zone": "a date-range datetime has no time zone (taken as UTC)",
    "mx-host-string": "mx-host is a string, not a list",
    "contact-info-null": "contact-info is null or missing",
    "empty-ip": "an IP field is an empty string",
    "totals-disagree": "total-failure-session-count is not the sum of the failure details",
    "policy-domain-from-envelope": "policy-domain missing; taken from the mail headers or file",
    "policy-domain-missing": "policy-domain missing and nothing else names it",
    "unknown-result-type": "a result-type outside the IANA registry (kept verbatim)",
    "unknown-policy-type": "a policy-type outside RFC 8460 (kept verbatim)",
    "domain-u-label": "a domain in U-labels (converted to A-labels)",
    "domain-case": "a domain in upper case or with a final dot",
    "no-policies": "policies is missing or empty",
    "report-id-not-text": "report-id is a number",
    "text-truncated": f"a text field over {MAX_TEXT} characters (cut in the rows)",
    "details-truncated": f"over {MAX_DETAILS} failure details in a policy (rows keep the first)",
    "gzip-label-plain-json": "sent as gzip but is plain JSON",
}

T = TypeVar("T")

_DATETIME = re.compile(
    r"(\d{4}-\d\d-\d\d)[Tt ](\d\d:\d\d:\d\d)(?:\.(\d+))?\s*([Zz]|[+-]\d\d:?\d\d)?\Z"
)


class Refused(PolicyHostError):
    """The report cannot be used; ``str()`` says why."""


class Memo:
    """Date-times and domains as read, with the quirks each showed, for the
    next report with the same text (a day's reports share a few date ranges
    and name each tenant once per sender). Only what was read without
    refusal, at most ``LIMIT`` of each kind."""

    LIMIT = 100_000

    def __init__(self) -> None:
        self.datetimes: dict[str, tuple[float, tuple[str, ...]]] = {}
        self.domains: dict[str, tuple[str, tuple[str, ...]]] = {}


def parse_rows(
    data: bytes, envelope: Envelope, quirks: Iterable[str] = (), memo: Memo | None = None
) -> ReportRows:
    """Parse RFC 8460 section 4 JSON straight into the rows the store
    inserts; ``Refused`` when it cannot be used. ``quirks``: those already
    seen on the way (in the mail or the body); ``memo``: one kept across
    the reports of a batch (a fresh one when none is given)."""
    try:
        if data[:1] == b"{" and data[1:2] != b"\0":
            # What json.loads finds for such bytes (UTF-8, surrogates let
            # through), without its look at the first four bytes first.
            doc = json.loads(data.decode("utf-8", "surrogatepass"))
        else:
            doc = json.loads(data)
    except UnicodeDecodeError:
        raise Refused("not UTF-8 text") from None
    except RecursionError:
        raise Refused("JSON nested too deeply") from None
    except ValueError as exc:
        raise Refused(f"not JSON: {str(exc)[:100]}") from None
    reader = _Reader(envelope, memo)
    reader.quirks.update(quirks)
    return reader.report(doc)


def parse_report(data: bytes, envelope: Envelope, quirks: Iterable[str] = ()) -> Report:
    """``parse_rows`` as frozen objects."""
    return to_report(parse_rows(data, envelope, quirks))


class _Reader:
    """One report's reading. Each rule is a method; the loops over
    policies and failure details test the usual value (text of normal
    length, a whole number in range) inline and call the method only for
    anything else, because a day's reports run these loops millions of
    times (docs/performance.md)."""

    def __init__(self, envelope: Envelope, memo: Memo | None = None) -> None:
        self.envelope = envelope
        self.quirks: set[str] = set()
        self.memo = Memo() if memo is None else memo

    def report(self, doc: object) -> ReportRows:
        if not isinstance(doc, dict):
            raise Refused("the report is not a JSON object")
        organization = doc.get("organization-name")
        if type(organization) is not str or not (organization := organization.strip()):
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
        results = tuple([self.policy(item, i) for i, item in enumerate(policies)])
        report_id = report_id.strip()
        if len(organization) > MAX_TEXT or len(report_id) > MAX_TEXT:
            organization, report_id = self.text(organization), self.text(report_id)
        if contact is not None and len(contact) > MAX_TEXT:
            contact = self.text(contact)
        quirks = tuple(sorted(self.quirks)) if self.quirks else ()
        return ReportRows(organization, report_id, contact, start, end, quirks, results)

    def required_text(self, doc: Mapping[str, Any], key: str) -> str:
        value = doc.get(key)
        if not isinstance(value, str) or not value.strip():
            raise Refused(f"{key}: missing or not text")
        return value.strip()

    def text(self, value: str) -> str:
        if len(value) > MAX_TEXT:
            self.quirks.add("text-truncated")
            return value[:MAX_TEXT]
        return value

    def texts(self, values: list[str]) -> tuple[str, ...]:
        """``text`` of each (one length check for the usual short list)."""
        if values and max(map(len, values)) > MAX_TEXT:
            return tuple(self.text(v) for v in values)
        return tuple(values)

    def optional_text(self, doc: Mapping[str, Any], key: str, where: str) -> str | None:
        value = doc.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            if isinstance(value, int | float) and not isinstance(value, bool):
                return str(value)
            raise Refused(f"{where}{key}: expected text")
        return self.text(value)

    def ip(self, doc: Mapping[str, Any], key: str, where: str) -> str | None:
        value = self.optional_text(doc, key, where)
        if value is not None and not value.strip():
            self.quirks.add("empty-ip")
            return None
        return value.strip() if value is not None else None

    def remembered(
        self, table: dict[str, tuple[T, tuple[str, ...]]], value: str, read: Callable[[str], T]
    ) -> T:
        """``read(value)`` and the quirks it notes, from ``table`` when the
        same text was read before (``Memo``)."""
        known = table.get(value)
        if known is None:
            outer, self.quirks = self.quirks, set()
            try:
                known = (read(value), tuple(self.quirks))
            finally:
                self.quirks = outer
            if len(table) < Memo.LIMIT:
                table[value] = known
        if known[1]:
            self.quirks.update(known[1])
        return known[0]

    def datetime(self, dates: Mapping[str, Any], key: str) -> float:
        value = dates.get(key)
        if type(value) is str:
            known = self.memo.datetimes.get(value)
            if known is not None and not known[1]:  # the usual: read before, no quirk
                return known[0]
            return self.remembered(self.memo.datetimes, value, lambda v: self._datetime(v, key))
        return self._datetime(value, key)

    def _datetime(self, value: object, key: str) -> float:
        match = _DATETIME.match(value.strip()) if isinstance(value, str) else None
        if match is None:
            raise Refused(f"date-range.{key}: expected an RFC 3339 date-time (got {value!r:.60})")
        day, clock, fraction, zone = match.groups()
        if zone is None:
            # Seen from Microsoft and others; RFC 8460 section 4.4 asks for
            # UTC, so that is what it means.
            self.quirks.add("datetime-without-zone")
            zone = "+00:00"
        elif zone in "Zz":
            zone = "+00:00"
        elif ":" not in zone:
            zone = zone[:3] + ":" + zone[3:]
        # Python takes at most six fraction digits; some senders send seven.
        text = f"{day}T{clock}{'.' + (fraction + '000000')[:6] if fraction else ''}{zone}"
        try:
            return datetime.datetime.fromisoformat(text).timestamp()
        except ValueError:
            raise Refused(f"date-range.{key}: not a real date-time ({value!r:.60})") from None

    def count(self, doc: Mapping[str, Any], key: str, where: str) -> int:
        value = doc.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int):
            raise Refused(f"{where}{key}: expected a whole number (got {value!r:.40})")
        if not 0 <= value <= MAX_COUNT:
            raise Refused(f"{where}{key}: {value:.3g} is out of range 0..{MAX_COUNT}")
        return int(value)

    def domain(self, value: str) -> str:
        known = self.memo.domains.get(value)
        if known is not None and not known[1]:  # the usual: read before, no quirk
            return known[0]
        return self.remembered(self.memo.domains, value, self._domain)

    def _domain(self, value: str) -> str:
        text = value.strip()
        if text != text.lower() or text.endswith("."):
            self.quirks.add("domain-case")
        text = text.rstrip(".")
        if not text.isascii():
            self.quirks.add("domain-u-label")
        try:
            return hostname(text, what="policy-domain").ascii
        except InvalidValue:
            return text.lower()

    def policy(self, item: object, index: int) -> PolicyRows:
        # As in ``detail``: the usual value is tested inline, the rule's
        # method (and the place named in its refusal) only for the rest.
        if not isinstance(item, dict):
            raise Refused(f"policies[{index}]: expected an object")
        policy = item.get("policy")
        if not isinstance(policy, dict):
            raise Refused(f"policies[{index}].policy: missing or not an object")
        get = policy.get
        policy_type = get("policy-type")
        if type(policy_type) is not str or len(policy_type) > MAX_TEXT:
            policy_type = self.optional_text(policy, "policy-type", f"policies[{index}].") or ""
        if policy_type not in POLICY_TYPES:
            self.quirks.add("unknown-policy-type")
        strings = get("policy-string") or []
        if type(strings) is not list or not _all_text(strings):
            strings = self.policy_strings(strings, index)
        raw_domain = get("policy-domain")
        if type(raw_domain) is str and raw_domain.strip():
            domain = self.domain(raw_domain)
        elif raw_domain is not None and not isinstance(raw_domain, str):
            raise Refused(f"policies[{index}].policy.policy-domain: expected text")
        elif self.envelope.domain:
            # no-policy-found reports from some senders omit it (RFC 8460
            # section 4.3 requires it); the mail header or file name says it.
            self.quirks.add("policy-domain-from-envelope")
            domain = self.domain(self.envelope.domain)
        else:
            self.quirks.add("policy-domain-missing")
            domain = ""
        mx = get("mx-host")
        if type(mx) is not list or not _all_text(mx):
            mx = self.mx_hosts(mx, index)
        summary = item.get("summary")
        if not isinstance(summary, dict):
            raise Refused(f"policies[{index}].summary: missing or not an object")
        success = summary.get("total-successful-session-count", 0)
        if type(success) is not int or not 0 <= success <= MAX_COUNT:
            success = self.count(
                summary, "total-successful-session-count", f"policies[{index}].summary."
            )
        failure = summary.get("total-failure-session-count", 0)
        if type(failure) is not int or not 0 <= failure <= MAX_COUNT:
            failure = self.count(
                summary, "total-failure-session-count", f"policies[{index}].summary."
            )
        details_in = item.get("failure-details") or []
        if not isinstance(details_in, list):
            raise Refused(f"policies[{index}].failure-details: expected a list")
        details = []
        if details_in:
            where = f"policies[{index}]."
            details = [self.detail(d, where, i) for i, d in enumerate(details_in)]
        if details and sum(d[1] for d in details) != failure:
            # Both are kept: the summary is what rates are computed from.
            self.quirks.add("totals-disagree")
        if len(details) > MAX_DETAILS:
            self.quirks.add("details-truncated")
            details = details[:MAX_DETAILS]
        policy_string = self.texts(strings)
        mx_host = self.texts([m.strip().lower() for m in mx])
        return PolicyRows(
            policy_type,
            domain,
            policy_string,
            mx_host,
            success,
            failure,
            tuple(details),
            json_list(policy_string),
            json_list(mx_host),
        )

    def policy_strings(self, strings: object, index: int) -> list[str]:
        """``policy-string`` other than a list of text."""
        if isinstance(strings, str):
            strings = [strings]
        if not isinstance(strings, list) or not _all_text(strings):
            raise Refused(f"policies[{index}].policy.policy-string: expected a list of text")
        return strings

    def mx_hosts(self, mx: object, index: int) -> list[str]:
        """``mx-host`` other than a list of text."""
        if isinstance(mx, str):
            self.quirks.add("mx-host-string")
            mx = [mx]
        mx = mx or []
        if not isinstance(mx, list) or not _all_text(mx):
            raise Refused(f"policies[{index}].policy.mx-host: expected text or a list of text")
        return mx

    def detail(self, item: object, policy_where: str, index: int) -> DetailRow:
        if type(item) is not dict:
            where = f"{policy_where}failure-details[{index}]."
            if not isinstance(item, dict):
                raise Refused(f"{where[:-1]}: expected an object")
        get = item.get
        # JSON gives exact types: ``type(v) is str`` with a normal length,
        # or ``type(v) is int`` in range, is the usual value, which each
        # rule's method would return unchanged.
        result_type = get("result-type")
        if type(result_type) is not str or not result_type or len(result_type) > MAX_TEXT:
            where = f"{policy_where}failure-details[{index}]."
            result_type = self.optional_text(item, "result-type", where)
            if not result_type:
                raise Refused(f"{where}result-type: missing")
        if result_type not in RESULT_TYPES:
            self.quirks.add("unknown-result-type")
        mx = get("receiving-mx-hostname")
        if mx is not None and (type(mx) is not str or len(mx) > MAX_TEXT):
            mx = self.optional_text(item, "receiving-mx-hostname", self.where(policy_where, index))
        count = get("failed-session-count", 0)
        if type(count) is not int or not 0 <= count <= MAX_COUNT:
            count = self.count(item, "failed-session-count", self.where(policy_where, index))
        sending_ip = get("sending-mta-ip")
        if sending_ip is not None:
            if type(sending_ip) is str and len(sending_ip) <= MAX_TEXT and sending_ip.strip():
                sending_ip = sending_ip.strip()
            else:
                sending_ip = self.ip(item, "sending-mta-ip", self.where(policy_where, index))
        helo = get("receiving-mx-helo")
        if helo is not None and (type(helo) is not str or len(helo) > MAX_TEXT):
            helo = self.optional_text(item, "receiving-mx-helo", self.where(policy_where, index))
        receiving_ip = get("receiving-ip")
        if receiving_ip is not None:
            if type(receiving_ip) is str and len(receiving_ip) <= MAX_TEXT and receiving_ip.strip():
                receiving_ip = receiving_ip.strip()
            else:
                receiving_ip = self.ip(item, "receiving-ip", self.where(policy_where, index))
        more = get("additional-information")
        if more is not None and (type(more) is not str or len(more) > MAX_TEXT):
            more = self.optional_text(
                item, "additional-information", self.where(policy_where, index)
            )
        code = get("failure-reason-code")
        if code is not None and (type(code) is not str or len(code) > MAX_TEXT):
            code = self.optional_text(item, "failure-reason-code", self.where(policy_where, index))
        return (
            result_type,
            count,
            sending_ip,
            mx.strip().rstrip(".").lower() if mx else None,
            helo,
            receiving_ip,
            more,
            code,
        )

    @staticmethod
    def where(policy_where: str, index: int) -> str:
        return f"{policy_where}failure-details[{index}]."


# JSON gives exact types, so a set of them tells "all text" at C speed.
_TEXT_ONLY = frozenset({str})


def _all_text(values: list[Any]) -> bool:
    return set(map(type, values)) <= _TEXT_ONLY
