"""The report store's schema version and retention, and how a report is tied
to the policy version we served (from the apply state's history)."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest
from support.reportenv import CORPUS, ingest_paths, make_ingester, report_tree

from policy_host import state
from policy_host.render import fingerprint
from policy_host.reports.model import HTTPS, MAIL, Envelope, FailureDetail, PolicyResult, Report
from policy_host.reports.policies import (
    CURRENT,
    NEVER_SERVED,
    NOT_STS,
    PREVIOUS,
    STALE,
    UNTRACKED,
    ServedHistory,
)
from policy_host.reports.retention import would_prune
from policy_host.reports.schema import (
    DUPLICATE,
    FOREIGN,
    HEAD_BYTES,
    REFUSED,
    SCHEMA_VERSION,
    STORED,
    StoreError,
)
from policy_host.reports.store import Received, Store, Tie

DAY = 86_400.0


def test_a_new_store_has_the_current_schema_version(tmp_path: Path) -> None:
    with Store(tmp_path / "r.sqlite3") as store:
        assert store.conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert store.conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_a_store_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite3"
    Store(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="upgrade policy-host") as caught:
        Store(path)
    assert caught.value.exit_status == 75


def test_prune_drops_what_is_older_than_retention(tmp_path: Path) -> None:
    config = report_tree(tmp_path)
    store = Store(config.reports_db)
    ingester = make_ingester(config, store)
    now = 1_800_000_000.0
    ingester.clock = lambda: now - 40 * DAY
    ingest_paths(ingester, [CORPUS / "every-field.json", CORPUS / "refused-not-json.json"])
    ingester.clock = lambda: now
    ingest_paths(ingester, [CORPUS / "gzip.json.gz", CORPUS / "foreign.json"])
    before = store.conn.execute("SELECT count(*) FROM raw").fetchone()
    assert would_prune(config.reports_db, now, 30 * DAY, 100 * DAY) == (1, 0)
    assert would_prune(config.reports_db, now, 30 * DAY, 10 * DAY) == (1, 1)
    assert store.conn.execute("SELECT count(*) FROM raw").fetchone() == before
    assert store.prune(now, keep_reports=30 * DAY, keep_raw=100 * DAY) == (1, 0)
    conn = store.conn
    assert conn.execute("SELECT report_id FROM report").fetchall() == [("gzip-1",)]
    assert conn.execute("SELECT count(*) FROM detail").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM result").fetchone() == (1,)
    assert sorted(r[0] for r in conn.execute("SELECT outcome FROM raw")) == [
        "foreign",
        "refused",
        "stored",
    ]
    assert store.prune(now, keep_reports=30 * DAY, keep_raw=10 * DAY) == (0, 1)
    assert sorted(r[0] for r in conn.execute("SELECT outcome FROM raw")) == ["foreign", "stored"]


# -- which policy a sender used ---------------------------------------------

BODY_A = b"version: STSv1\r\nmode: testing\r\nmx: mx1.example.com\r\nmax_age: 86400\r\n"
BODY_B = b"version: STSv1\r\nmode: enforce\r\nmx: mx1.example.com\r\nmax_age: 604800\r\n"
T1 = 1_700_000_000.0
T2 = T1 + 10 * DAY


def _publish(path: Path, body: bytes, policy_id: str, kind: str, now: float) -> None:
    max_age = int(body.split(b"max_age: ")[1].split(b"\r")[0])
    with state.Store(path) as store:
        store.begin(
            {"example.com": state.Pending(kind, policy_id, fingerprint(body), body, max_age)}, now
        )
        store.commit(["example.com"], now, confirmed=True)


def _result(body: bytes, *, domain: str = "example.com", kind: str = "sts") -> PolicyResult:
    lines = tuple(body.decode().split("\r\n")[:-1])
    return PolicyResult(kind, domain, lines, (), 1, 0, ())


@pytest.fixture
def served(tmp_path: Path) -> ServedHistory:
    path = tmp_path / "state.sqlite3"
    _publish(path, BODY_A, "idA", state.NEW, T1)
    _publish(path, BODY_B, "idB", state.CHANGE, T2)
    return ServedHistory.load(path)


@pytest.mark.parametrize(
    ("result", "start", "expected"),
    [
        (_result(BODY_B), T2 + DAY, ("idB", CURRENT)),
        (_result(BODY_A), T2 + DAY / 2, ("idA", PREVIOUS)),
        (_result(BODY_A), T2 + 2 * DAY, ("idA", STALE)),
        (_result(BODY_A.replace(b"testing", b"enforce")), T2, (None, NEVER_SERVED)),
        (_result(BODY_A, domain="example.net"), T2, (None, UNTRACKED)),
        (_result(b"", kind="no-policy-found"), T2, (None, NOT_STS)),
    ],
    ids=["current", "previous", "stale", "never-served", "untracked", "not-sts"],
)
def test_a_report_is_tied_to_the_policy_it_used(
    served: ServedHistory, result: PolicyResult, start: float, expected: tuple[str | None, str]
) -> None:
    tie = served.tie(result, start)
    assert (tie.policy_id, tie.match) == expected


def test_policy_string_with_spaces_around_lines_still_matches(served: ServedHistory) -> None:
    lines = tuple(f" {line} " for line in BODY_B.decode().split("\r\n")[:-1])
    tie = served.tie(PolicyResult("sts", "example.com", lines, (), 1, 0, ()), T2)
    assert (tie.policy_id, tie.match) == ("idB", CURRENT)


def _daily_matches_results(conn: sqlite3.Connection) -> None:
    daily = conn.execute(
        "SELECT domain, verified, sum(reports), sum(success), sum(failure) FROM daily "
        "WHERE reports != 0 GROUP BY 1, 2 ORDER BY 1, 2"
    ).fetchall()
    results = conn.execute(
        "SELECT domain, verified, count(*), sum(success), sum(failure) FROM result "
        "GROUP BY 1, 2 ORDER BY 1, 2"
    ).fetchall()
    assert daily == results
    failures = conn.execute(
        "SELECT domain, result_type, sum(count) FROM daily_failure GROUP BY 1, 2 ORDER BY 1, 2"
    ).fetchall()
    details = conn.execute(
        "SELECT r.domain, d.result_type, sum(d.count) FROM detail d JOIN result r "
        "ON r.id = d.result GROUP BY 1, 2 ORDER BY 1, 2"
    ).fetchall()
    assert failures == details


def test_daily_totals_follow_every_report_stored(tmp_path: Path) -> None:
    config = report_tree(tmp_path)
    store = Store(config.reports_db)
    ingester = make_ingester(config, store)
    ingest_paths(ingester, sorted(CORPUS.iterdir()))
    ingest_paths(ingester, [CORPUS / "every-field.json"])  # a duplicate changes nothing
    _daily_matches_results(store.conn)
    assert store.conn.execute("SELECT count(*) FROM daily").fetchone()[0] > 0


def test_migrating_from_version_1_fills_the_daily_totals(tmp_path: Path) -> None:
    config = report_tree(tmp_path)
    with Store(config.reports_db) as store:
        ingest_paths(make_ingester(config, store), sorted(CORPUS.iterdir()))
        store.conn.execute("DROP TABLE daily")
        store.conn.execute("DROP TABLE daily_failure")
        store.conn.execute("ALTER TABLE report DROP COLUMN digest")
        for column in ("size", "sha256", "cut"):
            store.conn.execute(f"ALTER TABLE raw DROP COLUMN {column}")
        store.conn.execute("PRAGMA user_version=1")
    with Store(config.reports_db) as store:
        assert store.conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        _daily_matches_results(store.conn)


def _body(n: int) -> bytes:
    return (
        f"version: STSv1\r\nmode: enforce\r\nmx: mx{n}.example.com\r\nmax_age: 86400\r\n".encode()
    )


def test_a_version_older_than_the_kept_history_is_still_tied(tmp_path: Path) -> None:
    """The history keeps the last 20 events per tenant (two per change);
    the served versions keep every version until long after its max_age."""
    path = tmp_path / "state.sqlite3"
    for n in range(30):
        kind = state.NEW if n == 0 else state.CHANGE
        _publish(path, _body(n), f"id{n}", kind, T1 + n * DAY)
    assert len(state.history(path, "example.com")) == state.HISTORY_KEEP
    served = ServedHistory.load(path)
    # Version 0 was replaced at T1 + DAY and has a max_age of one day.
    early = served.tie(_result(_body(0)), T1 + DAY + DAY / 2)
    late = served.tie(_result(_body(0)), T1 + 3 * DAY)
    assert (early.policy_id, early.match) == ("id0", PREVIOUS)
    assert (late.policy_id, late.match) == ("id0", STALE)
    now = served.tie(_result(_body(29)), T1 + 30 * DAY)
    assert (now.policy_id, now.match) == ("id29", CURRENT)


def test_replaced_versions_are_pruned_after_the_longest_max_age(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    _publish(path, _body(0), "id0", state.NEW, T1)
    _publish(path, _body(1), "id1", state.CHANGE, T1 + DAY)
    later = T1 + DAY + state.rows.SERVED_KEEP
    _publish(path, _body(2), "id2", state.CHANGE, later)  # id0 replaced just within the keep
    assert [v.policy_id for v in state.served_versions(path)] == ["id0", "id1", "id2"]
    _publish(path, _body(3), "id3", state.CHANGE, later + 1)
    versions = {v.policy_id: v for v in state.served_versions(path)}
    assert sorted(versions) == ["id1", "id2", "id3"]
    assert versions["id1"].replaced_at == later
    assert versions["id3"].replaced_at is None and versions["id3"].last_committed == later + 1


def test_a_version_served_but_not_committed_is_known(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    _publish(path, BODY_A, "idA", state.NEW, T1)
    with state.Store(path) as store:
        pending = state.Pending(state.CHANGE, "idB", fingerprint(BODY_B), BODY_B, 604800)
        store.begin({"example.com": pending}, T2)
        store.mark(["example.com"], state.SERVED, T2 + 1)
    versions = {v.policy_id: v for v in state.served_versions(path)}
    assert versions["idB"].first_served == T2 + 1 and versions["idB"].last_committed is None
    assert versions["idA"].replaced_at is None  # idB is not committed yet
    tie = ServedHistory.load(path).tie(_result(BODY_B), T2 + 2)
    assert (tie.policy_id, tie.match) == ("idB", CURRENT)


def test_an_older_state_reads_and_migrates_its_history_alike(tmp_path: Path) -> None:
    """A state from before the served table: readers derive the versions
    from its history, and `apply`'s first open fills the table the same way."""
    path = tmp_path / "state.sqlite3"
    _publish(path, BODY_A, "idA", state.NEW, T1)
    _publish(path, BODY_B, "idB", state.CHANGE, T2)
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE served")
    conn.execute("PRAGMA user_version=2")
    conn.commit()
    conn.close()
    before = sorted(state.served_versions(path), key=lambda v: v.policy_id)
    assert [(v.policy_id, v.first_served, v.last_committed, v.replaced_at) for v in before] == [
        ("idA", T1, T1, T2),
        ("idB", T2, T2, None),
    ]
    with state.Store(path):
        pass
    after = sorted(state.served_versions(path), key=lambda v: v.policy_id)
    assert after == before


# -- copies under one organisation and report-id ----------------------------


def _forgeable(success: int, failure: int) -> Report:
    detail = FailureDetail("sts-policy-fetch-error", failure) if failure else None
    policy = PolicyResult(
        "sts", "example.com", ("version: STSv1",), ("mx1.example.com",), success, failure,
        (detail,) if detail else (),
    )  # fmt: skip
    return Report("Google Inc.", "2026-01-01Z_example.com", None, T1, T1 + DAY, (policy,))


def _add(store: Store, report: Report, envelope: Envelope) -> str:
    tie = Tie(None, UNTRACKED)
    with store.transaction() as conn:
        return store.add_report(conn, Received(envelope, b"{}", T1 + DAY), report, [tie])


def test_a_verified_copy_replaces_a_forged_unverified_one(tmp_path: Path) -> None:
    store = Store(tmp_path / "r.sqlite3")
    forged, real = _forgeable(0, 1000), _forgeable(500, 3)
    assert _add(store, forged, Envelope(HTTPS, origin="192.0.2.66")) == STORED
    assert _add(store, real, Envelope(MAIL, verified=True, auth="dkim")) == STORED
    conn = store.conn
    assert conn.execute("SELECT verified, copies, channel FROM report").fetchall() == [(1, 2, MAIL)]
    assert conn.execute("SELECT verified, success, failure FROM result").fetchall() == [(1, 500, 3)]
    assert conn.execute("SELECT count FROM detail").fetchall() == [(3,)]
    assert conn.execute(
        "SELECT verified, reports, success, failure FROM daily WHERE reports != 0"
    ).fetchall() == [(1, 1, 500, 3)]
    _daily_matches_results(conn)
    rows = conn.execute("SELECT channel, outcome, reason, report FROM raw ORDER BY id").fetchall()
    assert rows[0][:2] == (HTTPS, REFUSED)
    assert rows[0][2].startswith("replaced by a DKIM-verified copy") and rows[0][3] is None
    assert rows[1] == (MAIL, STORED, "", 1)


def test_a_verified_copy_with_the_same_content_marks_the_stored_one_verified(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "r.sqlite3")
    assert _add(store, _forgeable(500, 3), Envelope(HTTPS)) == STORED
    assert _add(store, _forgeable(500, 3), Envelope(MAIL, verified=True)) == DUPLICATE
    assert store.conn.execute("SELECT verified, copies FROM report").fetchone() == (1, 2)
    _daily_matches_results(store.conn)


def test_other_content_without_a_better_claim_changes_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "r.sqlite3")
    assert _add(store, _forgeable(500, 3), Envelope(MAIL, verified=True)) == STORED
    assert _add(store, _forgeable(0, 1000), Envelope(HTTPS)) == DUPLICATE
    conn = store.conn
    assert conn.execute("SELECT verified, success, failure FROM result").fetchall() == [(1, 500, 3)]
    assert conn.execute("SELECT outcome FROM raw ORDER BY id").fetchall() == [
        (STORED,),
        (REFUSED,),
    ]
    _daily_matches_results(conn)


# -- what is kept of inputs that made no report -----------------------------


def test_https_refusals_and_foreign_reports_keep_only_their_head(tmp_path: Path) -> None:
    config = report_tree(tmp_path)
    store = Store(config.reports_db)
    ingester = make_ingester(config, store)
    refused = b"{" + b" " * 20_000 + b"not json"
    foreign = (CORPUS / "foreign.json").read_bytes() + b" " * 20_000
    with store.transaction() as conn:
        https = Envelope(HTTPS, origin="192.0.2.1")
        assert ingester.report_body(conn, refused, https, labelled_gzip=False).outcome == REFUSED
        assert ingester.report_body(conn, foreign, https, labelled_gzip=False).outcome == FOREIGN
        mailed = Envelope(MAIL, origin="test")
        assert ingester.report_body(conn, refused, mailed, labelled_gzip=False).outcome == REFUSED
    rows = store.conn.execute("SELECT id, size, sha256, cut FROM raw ORDER BY id").fetchall()
    for (raw_id, size, sha, cut), whole, kept_whole in zip(
        rows, (refused, foreign, refused), (False, False, True), strict=True
    ):
        assert (size, sha) == (len(whole), hashlib.sha256(whole).hexdigest())
        assert store.raw_body(raw_id) == (whole if kept_whole else whole[:HEAD_BYTES])
        assert cut == (not kept_whole)


def test_opening_a_current_store_writes_nothing(tmp_path: Path) -> None:
    """Every ingest worker opens the store: a store at the current schema
    version must not be written (and synced) just for being opened."""
    config = report_tree(tmp_path)
    with Store(config.reports_db) as first:
        ingest_paths(make_ingester(config, first), [CORPUS / "every-field.json"])
        wal = config.reports_db.with_name(config.reports_db.name + "-wal")
        size = wal.stat().st_size
        with Store(config.reports_db) as second:
            assert second.conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert wal.stat().st_size == size
