"""A report whose organisation and report-id are stored already.

Senders deliver to every ``rua`` and retry (RFC 8460 section 3), so most
such inputs are true copies: they only raise ``copies``. Organisation and
``report-id`` are the sender's to choose, and the HTTPS endpoint is open to
anyone, so a forged copy may arrive first: a copy is compared with the
stored report by the digest of their parsed content (``rows.content_digest``);
a verified copy with the same digest marks the stored one verified, and a
verified copy with another digest replaces an unverified one (the replaced
input stays in ``raw``, refused, with the reason).

The stored report's digest is worked out from its stored rows when a copy
first arrives, and kept in ``report.digest`` from then on: most reports
never get a copy, and the digest is a sizeable share of what storing a
new report costs (docs/performance.md).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING

from policy_host.reports.rows import PolicyRows, ReportRows, content_digest, digest_of, domains
from policy_host.reports.schema import DUPLICATE, REFUSED, STORED

if TYPE_CHECKING:
    from policy_host.reports.store import Received, Store, Tie


def another_copy(
    store: Store,
    conn: sqlite3.Connection,
    item: Received,
    report: ReportRows,
    ties: Sequence[Tie],
) -> str:
    """Store what a copy adds to the stored report; STORED when it replaced
    the stored content, else DUPLICATE."""
    # What follows reads and changes stored rows: those held go in first.
    store.pending.flush(conn)
    verified = item.envelope.verified
    content = digest_of(report)
    report_row, was_verified, stored_digest = conn.execute(
        "SELECT id, verified, digest FROM report WHERE organization = ? AND report_id = ?",
        (report.organization, report.report_id),
    ).fetchone()
    if stored_digest is None:
        stored_digest = stored_rows_digest(conn, report_row)
        conn.execute("UPDATE report SET digest = ? WHERE id = ?", (stored_digest, report_row))
    conn.execute("UPDATE report SET copies = copies + 1 WHERE id = ?", (report_row,))
    if stored_digest == content:
        if verified and not was_verified:
            conn.execute("UPDATE report SET verified = 1 WHERE id = ?", (report_row,))
            roll(conn, report_row, -1, verified=False)
            conn.execute("UPDATE result SET verified = 1 WHERE report = ?", (report_row,))
            roll(conn, report_row, 1, verified=True)
        return DUPLICATE
    if not verified or was_verified:
        # Other content under a stored report's name, and no better
        # claim to it: kept aside, the stored report stays as it is.
        reason = f"differs from the stored report {report.organization} {report.report_id}"
        store.add_raw(conn, item, REFUSED, reason, domains(report.policies))
        return DUPLICATE
    # A verified copy whose content differs from the unverified one we
    # hold: the unverified one may be forged (anyone can POST), so the
    # verified content replaces it, and the replaced input is kept raw.
    raw_row = store.add_raw(
        conn, item, STORED, domains=domains(report.policies), report_row=report_row
    )
    store.pending.flush(conn)
    conn.execute(
        "UPDATE raw SET outcome = ?, reason = ?, report = NULL WHERE report = ? AND id != ?",
        (
            REFUSED,
            f"replaced by a DKIM-verified copy with other content (raw {raw_row})",
            report_row,
            raw_row,
        ),
    )
    roll(conn, report_row, -1, verified=False)
    conn.execute(
        "DELETE FROM detail WHERE result IN (SELECT id FROM result WHERE report = ?)",
        (report_row,),
    )
    conn.execute("DELETE FROM result WHERE report = ?", (report_row,))
    conn.execute(
        "UPDATE report SET contact = ?, start = ?, end = ?, received = ?, channel = ?, "
        "verified = 1, quirks = ?, digest = ? WHERE id = ?",
        (
            report.contact,
            report.start,
            report.end,
            item.received,
            item.envelope.channel,
            " ".join(report.quirks),
            content,
            report_row,
        ),
    )
    store.add_results(conn, report_row, report, ties, verified=True)
    return STORED


def stored_rows_digest(conn: sqlite3.Connection, report_row: int) -> str:
    """``content_digest`` of a stored report, from its ``report``, ``result``
    and ``detail`` rows (the rows hold all the digest covers)."""
    organization, report_id, contact, start, end = conn.execute(
        "SELECT organization, report_id, contact, start, end FROM report WHERE id = ?",
        (report_row,),
    ).fetchone()
    results = conn.execute(
        "SELECT id, policy_type, domain, policy_string, mx_host, success, failure FROM result "
        "WHERE report = ? ORDER BY id",
        (report_row,),
    ).fetchall()
    details: dict[int, list[tuple[object, ...]]] = {row[0]: [] for row in results}
    # Each detail's rowid follows the order it was stored in.
    for result, *detail in conn.execute(
        "SELECT d.result, d.result_type, d.count, d.sending_mta_ip, d.receiving_mx_hostname, "
        "d.receiving_mx_helo, d.receiving_ip, d.additional_information, d.failure_reason_code "
        "FROM result r JOIN detail d ON d.result = r.id WHERE r.report = ? ORDER BY d.rowid",
        (report_row,),
    ):
        details[result].append(tuple(detail))
    policies = [
        PolicyRows(
            policy_type,
            domain,
            tuple(json.loads(strings)),
            tuple(json.loads(mx)),
            success,
            failure,
            tuple(details[result]),  # type: ignore[arg-type]
            strings,
            mx,
        )
        for result, policy_type, domain, strings, mx, success, failure in results
    ]
    return content_digest(organization, report_id, contact, start, end, policies)


def roll(conn: sqlite3.Connection, report_row: object, sign: int, *, verified: bool) -> None:
    """Add (sign 1) or take away (-1) a stored report's rows in the daily totals."""
    conn.execute(
        "INSERT INTO daily SELECT domain, CAST(start / 86400 AS INTEGER), ?, ?, ? * success, "
        "? * failure FROM result WHERE report = ? AND true ON CONFLICT DO UPDATE SET "
        "reports = reports + excluded.reports, success = success + excluded.success, "
        "failure = failure + excluded.failure",
        (int(verified), sign, sign, sign, report_row),
    )
    conn.execute(
        "INSERT INTO daily_failure SELECT r.domain, CAST(r.start / 86400 AS INTEGER), ?, "
        "d.result_type, ? * d.count FROM result r JOIN detail d ON d.result = r.id "
        "WHERE r.report = ? AND true ON CONFLICT DO UPDATE SET count = count + excluded.count",
        (int(verified), sign, report_row),
    )
