"""The apply state: transactions, read-only readers, what is served from it."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from policy_host.read.config import ProviderConfig, ServeSettings
from policy_host.state import (
    ACTIVE,
    CHANGE,
    DELETE,
    GONE,
    HISTORY_KEEP,
    NEW,
    UNPUBLISHED,
    WITHDRAW,
    WITHDRAWING,
    Pending,
    StateError,
    Store,
    fallback_policies,
    history,
    published_ids,
    read_records,
)

DAY = 86400


@pytest.fixture
def cfg(tmp_path: Path) -> ProviderConfig:
    return ProviderConfig(
        path=tmp_path / "config.yaml",
        tenants_dir=tmp_path / "tenants",
        state_dir=tmp_path / "var",
        policy_host="mta-sts.provider.example",
        id_zone="_mta-sts.provider.example",
        serve=ServeSettings(),
    )


def pending(kind: str, policy_id: str | None, body: bytes, max_age: int = DAY) -> Pending:
    return Pending(kind, policy_id, f"fp-{body.decode()}", body, max_age)


def publish(store: Store, domain: str, p: Pending, now: float, confirmed: bool = True) -> None:
    store.begin({domain: p}, now)
    store.commit([domain], now + 1, confirmed=confirmed)


def test_readers_never_create_the_database(cfg: ProviderConfig) -> None:
    assert published_ids(cfg) == {}
    assert read_records(cfg.state_db) == {}
    assert fallback_policies(cfg.state_db) == {}
    assert history(cfg.state_db) == []
    assert not cfg.state_dir.exists()


def test_published_ids_are_the_confirmed_ones_only(cfg: ProviderConfig) -> None:
    with Store(cfg.state_db) as store:
        publish(store, "a.example", pending(NEW, "id1", b"A"), 100)
        publish(store, "b.example", pending(NEW, "id2", b"B"), 100, confirmed=False)
        store.begin({"c.example": pending(NEW, "id3", b"C")}, 100)  # not committed
        store.begin({"a.example": pending(CHANGE, "id4", b"A2")}, 200)  # pending over id1
    assert published_ids(cfg) == {"a.example": "id1"}


def test_commit_moves_pending_into_committed_with_its_times(cfg: ProviderConfig) -> None:
    with Store(cfg.state_db) as store:
        store.begin({"a.example": pending(NEW, "id1", b"A", 7 * DAY)}, 100)
        store.mark(["a.example"], "served", 101)
        store.mark(["a.example"], "published", 102)
        store.commit(["a.example"], 103, confirmed=True)
    record = read_records(cfg.state_db)["a.example"]
    assert (record.status, record.policy_id, record.body, record.pending) == (
        ACTIVE,
        "id1",
        b"A",
        None,
    )
    assert (record.served_at, record.published_at, record.confirmed_at) == (101, 102, 103)
    assert record.longest_max_age == 7 * DAY
    assert [e.event for e in history(cfg.state_db, "a.example")] == ["begin new", "commit new"]


def test_a_failing_transaction_leaves_nothing_behind(cfg: ProviderConfig) -> None:
    class Exploding(Mapping[str, Pending]):
        def __getitem__(self, key: str) -> Pending:
            return pending(NEW, "id" + key[0], key.encode())

        def __iter__(self) -> Iterator[str]:
            yield "a.example"
            raise RuntimeError("crash half-way")

        def __len__(self) -> int:
            return 2

    with Store(cfg.state_db) as store:
        with pytest.raises(RuntimeError):
            store.begin(Exploding(), 100)
        assert store.records() == {}


def test_withdrawal_clock_starts_at_the_first_confirmation_and_keeps_running(
    cfg: ProviderConfig,
) -> None:
    with Store(cfg.state_db) as store:
        publish(store, "a.example", pending(NEW, "id1", b"A", 30 * DAY), 0)
        publish(store, "a.example", pending(CHANGE, "id2", b"B", DAY), 10)
        publish(store, "a.example", pending(WITHDRAW, "id3", b"none1", 60), 20)
        publish(store, "a.example", pending(WITHDRAW, "id4", b"none2", 60), 30)
    record = read_records(cfg.state_db)["a.example"]
    assert (record.status, record.withdrawal_started) == (WITHDRAWING, 21)
    # The longest max_age ever published, not the last one nor `none`'s.
    assert record.withdrawal_ends() == 21 + 30 * DAY


def test_a_superseded_pending_policy_counts_towards_the_withdrawal(cfg: ProviderConfig) -> None:
    with Store(cfg.state_db) as store:
        store.begin({"a.example": pending(NEW, "id1", b"A", 90 * DAY)}, 0)
        publish(store, "a.example", pending(WITHDRAW, "id2", b"none", 60), 10)
    assert read_records(cfg.state_db)["a.example"].withdrawal_ends() == 11 + 90 * DAY


def test_served_from_state_prefers_pending_bytes_and_skips_gone(cfg: ProviderConfig) -> None:
    with Store(cfg.state_db) as store:
        publish(store, "a.example", pending(NEW, "id1", b"A"), 0)
        publish(store, "b.example", pending(NEW, "id2", b"B"), 0)
        store.begin({"b.example": pending(WITHDRAW, "id3", b"none")}, 5)
        publish(store, "c.example", pending(NEW, "id4", b"C"), 0)
        publish(store, "c.example", pending(WITHDRAW, "id5", b"none"), 1)
        publish(store, "c.example", Pending(DELETE, None, "fp", b"none", 60), 2)
    assert fallback_policies(cfg.state_db) == {"a.example": b"A", "b.example": b"none"}
    records = read_records(cfg.state_db)
    assert (records["c.example"].status, records["c.example"].policy_id) == (GONE, None)


def test_history_keeps_the_newest_entries(cfg: ProviderConfig) -> None:
    with Store(cfg.state_db) as store:
        for n in range(HISTORY_KEEP):
            publish(store, "a.example", pending(CHANGE, f"id{n}", f"B{n}".encode()), n)
    events = history(cfg.state_db, "a.example")
    assert len(events) == HISTORY_KEEP
    assert events[-1].policy_id == f"id{HISTORY_KEEP - 1}"


def test_pending_checks_its_id() -> None:
    with pytest.raises(ValueError, match="bad policy id"):
        Pending(NEW, "not-alnum", "fp", b"", 0)
    with pytest.raises(ValueError, match="does not fit"):
        Pending(DELETE, "id1", "fp", b"", 0)
    assert Pending(NEW, "a" * 32, "fp", b"", 0).policy_id


def test_a_newer_schema_is_refused_clearly(cfg: ProviderConfig) -> None:
    Store(cfg.state_db).close()
    conn = sqlite3.connect(cfg.state_db)
    conn.execute("PRAGMA user_version=99")
    conn.close()
    with pytest.raises(StateError, match="schema version 99"):
        published_ids(cfg)


def test_an_empty_database_file_is_no_state(cfg: ProviderConfig) -> None:
    cfg.state_dir.mkdir()
    cfg.state_db.write_bytes(b"")
    assert published_ids(cfg) == {}
    with Store(cfg.state_db) as store:
        store.begin({"a.example": pending(NEW, "id1", b"A")}, 0)
    assert read_records(cfg.state_db)["a.example"].status == UNPUBLISHED


def test_readers_recover_from_a_commit_killed_half_way(cfg: ProviderConfig, tmp_path: Path) -> None:
    with Store(cfg.state_db) as store:
        for n in range(50):
            publish(store, f"t{n}.example", pending(NEW, f"id{n}", b"x" * 4000), 0)
    # Freeze the files in the middle of a big write transaction, as a
    # kill -9 would leave them: the database file already partly written,
    # the rollback journal ("hot") next to it.
    writer = sqlite3.connect(cfg.state_db, isolation_level=None)
    writer.execute("PRAGMA cache_size=1")
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("UPDATE tenant SET policy_id = 'torn', body = zeroblob(4000)")
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    for suffix in ("", "-journal"):
        source = Path(f"{cfg.state_db}{suffix}")
        Path(f"{crashed / cfg.state_db.name}{suffix}").write_bytes(source.read_bytes())
    writer.execute("ROLLBACK")
    writer.close()
    cfg = dataclasses.replace(cfg, state_dir=crashed)
    assert Path(f"{cfg.state_db}-journal").exists()

    ids = published_ids(cfg)

    assert ids == {f"t{n}.example": f"id{n}" for n in range(50)}
    assert not Path(f"{cfg.state_db}-journal").exists()


def test_a_version_1_state_is_migrated_on_open(tmp_path: Path) -> None:
    """A state written before hosted TLS-RPT records keeps its rows; readers
    of the new column get nothing until `apply` has migrated it."""
    from policy_host.state import hosted_tlsrpt
    from policy_host.state.rows import SCHEMA, SCHEMA_VERSION

    path = tmp_path / "state.sqlite3"
    conn = sqlite3.connect(path)
    for statement in SCHEMA:
        conn.execute(statement)
    conn.execute(
        "INSERT INTO tenant (domain, status, policy_id) VALUES ('a.example', 'active', 'id1')"
    )
    conn.execute("PRAGMA user_version=1")
    conn.commit()
    conn.close()
    assert hosted_tlsrpt(path) == {}

    with Store(path) as store:
        assert store.records()["a.example"].policy_id == "id1"
        store.set_tlsrpt({"a.example": b"v=TLSRPTv1; rua=mailto:r@provider.example"})
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()
    assert hosted_tlsrpt(path) == {"a.example": b"v=TLSRPTv1; rua=mailto:r@provider.example"}
