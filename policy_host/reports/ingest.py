"""One input -> what became of it: the raw bytes kept, and a report stored.

Each entry point takes one kind of input (a report body from HTTPS or a
file, a whole message from mail, a file or a Maildir) and works inside a
transaction its caller opened, so the caller decides when it is durable:
the HTTPS view and the MTA pipe commit each input before answering, a batch
of files commits every few hundred.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from policy_host.read.tlsrpt import TlsrptSettings
from policy_host.reports import mail as mailreader
from policy_host.reports.decode import BadPayload, TooLarge, report_json
from policy_host.reports.dkimcheck import TxtLookup, verify
from policy_host.reports.model import MAIL, Envelope, Report
from policy_host.reports.parse import Memo, Refused, parse_rows
from policy_host.reports.policies import ServedHistory
from policy_host.reports.rows import PolicyRows, ReportRows, cut, to_report
from policy_host.reports.schema import FOREIGN, NOT_REPORT, REFUSED, STORED, UNVERIFIED
from policy_host.reports.store import Key, Received, Store

log = logging.getLogger(__name__)


class Outcome(NamedTuple):
    outcome: str  # store.OUTCOMES
    reason: str = ""
    organization: str = ""
    report_id: str = ""


class Prepared(NamedTuple):
    """An input read and judged, not stored yet: either a ``report`` to
    keep, or an ``outcome`` (refused, not a report, unverified) with its
    reason. Made by ``prepare_body``/``prepare_message``, which touch no
    store, so worker processes can make them while one process stores."""

    item: Received
    rows: ReportRows | None = None
    outcome: str = ""
    reason: str = ""

    @property
    def report(self) -> Report | None:
        return None if self.rows is None else to_report(self.rows)


def prepare_body(
    item: Received, settings: TlsrptSettings, *, labelled_gzip: bool, memo: Memo | None = None
) -> Prepared:
    """A report as POSTed or as a ``.json``/``.json.gz`` file (``memo``:
    see ``parse.Memo``)."""
    body = item.body
    try:
        data, quirks = report_json(body, settings.max_report_bytes)
        if labelled_gzip and not body.startswith(b"\x1f\x8b"):
            quirks = (*quirks, "gzip-label-plain-json")
        rows = parse_rows(data, item.envelope, quirks, memo)
    except (TooLarge, BadPayload, Refused) as exc:
        return Prepared(item, outcome=REFUSED, reason=str(exc))
    return Prepared(item, rows)


def prepare_message(
    item: Received, settings: TlsrptSettings, lookup: TxtLookup, memo: Memo | None = None
) -> Prepared:
    """A whole message: from the MTA pipe, a ``.eml`` file or a Maildir."""
    data = item.body
    if len(data) > settings.max_report_bytes * 2:
        return Prepared(item, outcome=REFUSED, reason="message too large")
    try:
        found = mailreader.read_mail(data)
    except mailreader.NotReport as exc:
        return Prepared(item, outcome=NOT_REPORT, reason=str(exc))
    verdict = verify(data, found.submitter, lookup)
    envelope = item.envelope._replace(
        channel=item.envelope.channel or MAIL,
        origin=item.envelope.origin or found.sender,
        verified=verdict.verified,
        auth=verdict.auth,
        domain=found.domain,
        submitter=found.submitter,
    )
    item = Received(envelope, data, item.received)
    try:
        payload, quirks = report_json(found.payload, settings.max_report_bytes)
        if found.labelled_gzip and not found.payload.startswith(b"\x1f\x8b"):
            quirks = (*quirks, "gzip-label-plain-json")
        rows = parse_rows(payload, envelope, (*quirks, *found.quirks), memo)
    except (TooLarge, BadPayload, Refused) as exc:
        return Prepared(item, outcome=REFUSED, reason=str(exc))
    if found.domain and found.domain.lower().rstrip(".") not in {p.domain for p in rows.policies}:
        # RFC 8460 section 5.3: the header should name the policy domain;
        # the body wins, the difference is noted (the digest leaves quirks out).
        rows = rows._replace(quirks=tuple(sorted({*rows.quirks, "header-domain-differs"})))
    if not verdict.verified and settings.unverified_mail == "require":
        # RFC 8460 section 3: unsigned reports should be ignored; kept raw
        # (with the reason) so staff can see what was turned away.
        return Prepared(item, rows, UNVERIFIED, verdict.auth)
    return Prepared(item, rows)


@dataclass
class Ingester:
    """What storing needs, passed in: the store, the hosted domains, what
    we served (for ``policies``), the DKIM key lookup and the clock."""

    store: Store
    settings: TlsrptSettings
    hosted: Callable[[str], bool]
    history: ServedHistory
    lookup: TxtLookup
    clock: Callable[[], float]

    def report_body(
        self, conn: sqlite3.Connection, body: bytes, envelope: Envelope, *, labelled_gzip: bool
    ) -> Outcome:
        """A report as POSTed or as a ``.json``/``.json.gz`` file."""
        item = Received(envelope, body, self.clock())
        return self.commit(conn, prepare_body(item, self.settings, labelled_gzip=labelled_gzip))

    def message(self, conn: sqlite3.Connection, data: bytes, envelope: Envelope) -> Outcome:
        """A whole message: from the MTA pipe, a ``.eml`` file or a Maildir."""
        item = Received(envelope, data, self.clock())
        return self.commit(conn, prepare_message(item, self.settings, self.lookup))

    def commit(
        self, conn: sqlite3.Connection, prepared: Prepared, known: set[Key] | None = None
    ) -> Outcome:
        """Store what ``prepare_*`` made of an input, in ``conn``'s
        transaction. ``known``: the keys of reports stored already, when the
        caller asked for a whole batch's at once (``Store.known``); a report
        stored here joins them."""
        store = self.store
        item, report, outcome, reason = prepared
        if outcome:
            store.add_raw(conn, item, outcome, reason, _domains(report) if report else ())
            if report is None:
                return Outcome(outcome, reason)
            return Outcome(outcome, reason, report.organization, report.report_id)
        assert report is not None
        policies = report.policies
        hosted = self.hosted
        ours: tuple[PolicyRows, ...]
        if len(policies) == 1:  # most reports: no tuple to build
            ours = policies if hosted(policies[0].domain) else ()
        else:
            ours = tuple(p for p in policies if hosted(p.domain))
        if policies and not ours:
            names = _domains(report)
            reason = "no hosted domain: " + " ".join(names)
            store.add_raw(conn, item, FOREIGN, reason, names)
            return Outcome(FOREIGN, reason, report.organization, report.report_id)
        if len(ours) != len(policies):
            report = cut(report, ours)
        tie = self.history.tie
        ties = [tie(policy, report.start) for policy in ours]
        key = (report.organization, report.report_id)
        if known is None:
            new = not store.known(conn, [key])
        else:
            new = key not in known
            known.add(key)
        if new:
            store.add_new(conn, item, report, ties)
            return Outcome(STORED, "", report.organization, report.report_id)
        outcome = store.add_rows(conn, item, report, ties, new=False)
        return Outcome(outcome, "", report.organization, report.report_id)


def _domains(report: ReportRows) -> list[str]:
    return sorted({p.domain or "?" for p in report.policies})
