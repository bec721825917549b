"""The results store: check and certs results and events, read back as written."""

from __future__ import annotations

from pathlib import Path

from policy_host.certs.attempts import attempt_log, recorded_certificates
from policy_host.results import (
    GUARD_ALERT,
    PROMOTED,
    CheckResult,
    Event,
    add_events,
    latest_event_per_domain,
    put_checks,
    read_checks,
    read_events,
)

REASON = {"code": "mx_mismatch", "severity": "fail", "message": "m", "subject": "x"}


def test_missing_store_reads_as_empty(tmp_path: Path) -> None:
    db = tmp_path / "results.sqlite3"
    assert read_checks(db) == {}
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


def test_events_kept(tmp_path: Path) -> None:
    db = tmp_path / "results.sqlite3"
    add_events(db, [Event("a.example", 1.0, GUARD_ALERT, "drift", {"mx": ["x"]})])
    add_events(db, [Event("a.example", 2.0, PROMOTED, "ready", {"sessions": 5})])
    events = read_events(db, "a.example")
    assert [e.kind for e in events] == [PROMOTED, GUARD_ALERT]
    assert events[1].evidence == {"mx": ["x"]}
    assert latest_event_per_domain(db)["a.example"].kind == PROMOTED


def test_certs_expiry_is_read_from_what_certs_recorded(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "certs.sqlite3"
    sqlite3.connect(db).execute("CREATE TABLE attempts (host TEXT)").connection.close()
    assert recorded_certificates(db) == {}  # certs ran, no expiry recorded yet
    with attempt_log(db, read_only=False) as log:
        log.certificate("mta-sts.a.example", 2e9)
        log.certificate("mta-sts.b.example", 3e9)
        log.certificate("mta-sts.b.example", None)  # found without a valid one since
    assert recorded_certificates(db) == {"mta-sts.a.example": 2e9}
    assert recorded_certificates(tmp_path / "missing.sqlite3") == {}
