"""The results store: check and certs results and events, read back as written."""

from __future__ import annotations

from pathlib import Path

from policy_host.results import (
    GUARD_ALERT,
    PROMOTED,
    CheckResult,
    Event,
    add_events,
    latest_event_per_domain,
    put_certs,
    put_checks,
    read_certs,
    read_checks,
    read_events,
)

REASON = {"code": "mx_mismatch", "severity": "fail", "message": "m", "subject": "x"}


def test_missing_store_reads_as_empty(tmp_path: Path) -> None:
    db = tmp_path / "results.sqlite3"
    assert read_checks(db) == {}
    assert read_certs(db) == {}
    assert read_events(db) == []
    assert not db.exists()


def test_latest_check_replaces_the_one_before(tmp_path: Path) -> None:
    db = tmp_path / "results.sqlite3"
    put_checks(db, [CheckResult("a.example", 1.0, "ok", "testing", (), ("mx.a.example",))])
    put_checks(
        db,
        [
            CheckResult("a.example", 2.0, "fail", "enforce", (REASON,), ("mx2.a.example",)),
            CheckResult("b.example", 2.0, "ok", "none", (), None),
        ],
    )
    found = read_checks(db)
    assert found["a.example"].checked == 2.0
    assert found["a.example"].codes == ["mx_mismatch"]
    assert found["a.example"].mx_hosts == ("mx2.a.example",)
    assert found["b.example"].mx_hosts is None
    assert list(read_checks(db, ["b.example"])) == ["b.example"]


def test_cert_expiry_and_events_kept(tmp_path: Path) -> None:
    db = tmp_path / "results.sqlite3"
    put_certs(db, {"mta-sts.a.example": 1e9, "mta-sts.b.example": None}, now=5.0)
    assert read_certs(db) == {"mta-sts.a.example": 1e9, "mta-sts.b.example": None}
    add_events(db, [Event("a.example", 1.0, GUARD_ALERT, "drift", {"mx": ["x"]})])
    add_events(db, [Event("a.example", 2.0, PROMOTED, "ready", {"sessions": 5})])
    events = read_events(db, "a.example")
    assert [e.kind for e in events] == [PROMOTED, GUARD_ALERT]
    assert events[1].evidence == {"mx": ["x"]}
    assert latest_event_per_domain(db)["a.example"].kind == PROMOTED


def test_certs_expiry_lives_in_certs_database_without_wal(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "certs.sqlite3"
    sqlite3.connect(db).execute("CREATE TABLE attempts (host TEXT)").connection.close()
    assert read_certs(db) == {}  # certs ran, no expiry stored yet
    put_certs(db, {"mta-sts.a.example": 2e9}, now=1.0)
    assert read_certs(db) == {"mta-sts.a.example": 2e9}
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    conn.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["certs.sqlite3"]
