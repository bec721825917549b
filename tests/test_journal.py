"""The change journal: workers take a compile's changes without reading the
whole snapshot, and fall back to reading it whenever the journal cannot
bring them to what is on disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.layout import GOLDEN

from policy_host.errors import PolicyHostError
from policy_host.read.config import ProviderConfig
from policy_host.serve import compiler, store, web
from policy_host.serve import journal as journals
from policy_host.serve.compiler import compile_snapshot
from policy_host.serve.journal import JOURNAL_NAME, read_journal, write_journal
from policy_host.serve.snapshot import (
    Entry,
    Snapshot,
    read_served,
    read_snapshot,
    served_rows,
    snapshot_id,
    write_snapshot,
)


@pytest.fixture(autouse=True)
def workers_catch_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """Compiles here leave the database to the workers, as on a serving
    node (the snapshot and journal arrive by push): each worker's watcher
    brings it up to them (``store.catch_up``)."""
    monkeypatch.setattr(compiler, "keep_up", lambda *args, **kwargs: None)


def table_at(config: ProviderConfig) -> web.PolicyTable:
    """A worker's table serving the snapshot now on disk."""
    table = web.PolicyTable(config.snapshot_path)
    table.refresh()
    assert table.snapshot_id == snapshot_id(config.snapshot_path)
    return table


def refuse_whole_reads(path: Path) -> object:
    raise AssertionError(f"{path} was read whole")


def no_whole_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "served_rows", refuse_whole_reads)


def whole_reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The snapshots read whole (into a new database) from now on."""
    reads: list[Path] = []

    def counted(path: Path) -> object:
        reads.append(path)
        return served_rows(path)

    monkeypatch.setattr(store, "served_rows", counted)
    return reads


def edit(config: ProviderConfig, domain: str, old: str, new: str) -> None:
    path = config.tenants_dir / f"{domain}.yaml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_a_change_reaches_the_worker_through_the_journal(
    config: ProviderConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    compile_snapshot(config)
    table = table_at(config)
    edit(config, "example.com", "604800", "1209600")
    (config.tenants_dir / "example.org.yaml").unlink()
    after = compile_snapshot(config).snapshot

    journal = read_journal(config.snapshot_path.with_name(JOURNAL_NAME))
    assert journal is not None and journal.head == after.id
    [step] = journal.steps
    assert (step.parent, sorted(step.put), step.drop) == (
        table.snapshot_id,
        ["mta-sts.example.com"],
        ("mta-sts.example.org",),
    )
    no_whole_reads(monkeypatch)
    assert table.refresh() is True
    assert dict(table.policies) == after.policies_by_host()
    assert table.snapshot_id == after.id
    assert table.refresh() is False  # nothing new since


def test_a_worker_several_compiles_behind_takes_every_step(
    config: ProviderConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    compile_snapshot(config)
    table = table_at(config)
    for age in ("1209600", "2419200", "4838400"):
        edit(config, "example.com", "max_age: ", f"max_age: {age}\n# was: ")
        last = compile_snapshot(config).snapshot
    no_whole_reads(monkeypatch)
    assert table.refresh() is True
    assert table.get("mta-sts.example.com") == last.entries["example.com"].body
    assert b"max_age: 4838400\r\n" in last.entries["example.com"].body


def test_a_compile_that_died_before_its_snapshot_is_served_then_superseded(
    config: ProviderConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = compile_snapshot(config).snapshot
    table = table_at(config)
    edit(config, "example.com", "604800", "1209600")

    def full_disk(
        path: Path, snapshot: Snapshot, by_host: object = None, memo: object = None
    ) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(compiler, "write_snapshot", full_disk)
        with pytest.raises(PolicyHostError, match="cannot write the served-policy snapshot"):
            compile_snapshot(config)
    # The policy files and the journal have the change; the snapshot not.
    assert snapshot_id(config.snapshot_path) == first.id
    changed = (config.www_dir / "mta-sts.example.com").read_bytes()
    assert b"max_age: 1209600\r\n" in changed
    assert table.refresh() is True
    assert table.get("mta-sts.example.com") == changed  # what nginx serves too
    # A worker started now serves it too, without reading the snapshot
    # whole (the database the others read already took the step) ...
    with monkeypatch.context() as patch:
        patch.setattr(store, "served_rows", refuse_whole_reads)
        started = web.PolicyTable(config.snapshot_path)
        started.refresh()
        assert started.get("mta-sts.example.com") == changed
    # ... and one with no database (a new node) builds it from the
    # snapshot on disk and the journal's step, on its first look.
    served = dict(table.policies)
    database = store.database_path(config.snapshot_path)
    database.unlink()
    late = web.PolicyTable(config.snapshot_path)
    assert late.get("mta-sts.example.com") is None
    reads = whole_reads(monkeypatch)
    assert late.refresh() is True
    assert reads == [config.snapshot_path]
    assert late.get("mta-sts.example.com") == changed
    assert dict(late.policies) == served
    monkeypatch.undo()
    monkeypatch.setattr(compiler, "keep_up", lambda *args, **kwargs: None)

    # The next compile starts from the snapshot on disk: the orphan step is
    # dropped and the worker, whose id is now in no journal, reads it whole.
    edit(config, "example.net", "86400", "172800")
    after = compile_snapshot(config).snapshot
    journal = read_journal(config.snapshot_path.with_name(JOURNAL_NAME))
    assert journal is not None
    assert [(s.parent, s.id) for s in journal.steps] == [(first.id, after.id)]
    assert table.refresh() is True
    assert dict(table.policies) == after.policies_by_host()


def test_a_change_too_large_for_the_journal_is_read_whole(
    config: ProviderConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    compile_snapshot(config)
    table = table_at(config)
    monkeypatch.setattr(journals, "JOURNAL_MAX_CHANGES", 1)
    edit(config, "example.com", "604800", "1209600")
    edit(config, "example.net", "86400", "172800")
    after = compile_snapshot(config).snapshot
    journal = read_journal(config.snapshot_path.with_name(JOURNAL_NAME))
    assert journal is not None and (journal.head, journal.steps) == (after.id, ())
    reads = whole_reads(monkeypatch)
    assert table.refresh() is True
    assert reads == [config.snapshot_path]
    assert dict(table.policies) == after.policies_by_host()


def test_a_worker_that_read_a_snapshot_while_a_compile_replaced_it_catches_up(
    config: ProviderConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    compile_snapshot(config)
    table = web.PolicyTable(config.snapshot_path)  # a starting worker...
    table_at(config)  # (the database another worker made)
    held = table.snapshot_id
    edit(config, "example.com", "604800", "1209600")
    after = compile_snapshot(config).snapshot  # ...while a compile writes
    no_whole_reads(monkeypatch)
    assert held == table.snapshot_id != after.id
    assert table.refresh() is True  # its first look sees the journal's step
    assert dict(table.policies) == after.policies_by_host()
    assert table.refresh() is False


def test_a_broken_journal_means_the_snapshot_is_read_whole(
    config: ProviderConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    compile_snapshot(config)
    table = table_at(config)
    journal = config.snapshot_path.with_name(JOURNAL_NAME)
    (config.tenants_dir / "example.org.yaml").unlink()
    after = compile_snapshot(config).snapshot
    good = journal.read_text()
    journal.write_text(good.replace('"head":"', '"head":"x'))
    reads = whole_reads(monkeypatch)
    # The journal is only a shortcut: a broken one never holds a worker back.
    assert table.refresh() is True
    assert reads == [config.snapshot_path]
    assert dict(table.policies) == after.policies_by_host()
    journal.write_text(good)
    assert table.refresh() is False
    assert reads == [config.snapshot_path]


def test_the_snapshot_is_json_with_one_tenant_per_line(config: ProviderConfig) -> None:
    written = compile_snapshot(config).snapshot
    text = config.snapshot_path.read_text()
    lines = text.splitlines()
    assert len(lines) == 2 + len(written.entries)
    raw = json.loads(text)
    assert (raw["format"], raw["id"], sorted(raw["tenants"])) == (
        1,
        written.id,
        ["example.com", "example.net", "example.org"],
    )
    assert (
        raw["tenants"]["example.net"]["body"].encode() == (GOLDEN / "example.net.txt").read_bytes()
    )
    assert read_served(config.snapshot_path) == (written.policies_by_host(), written.id)


def test_a_snapshot_on_one_line_without_an_id_is_a_clear_error(tmp_path: Path) -> None:
    """Nothing writes that form (every snapshot has an id and a line per
    tenant): a file like it is damaged or someone else's, never half-read."""
    path = tmp_path / "served.json"
    body = (GOLDEN / "example.com.txt").read_text()
    item = {"body": body, "fingerprint": "f", "source": "s", "stale": False}
    path.write_text(json.dumps({"format": 1, "tenants": {"example.com": item}}) + "\n")
    for read in (read_served, snapshot_id, read_snapshot):
        with pytest.raises(PolicyHostError, match=f"{path}: not a policy-host snapshot"):
            read(path)


@pytest.mark.parametrize("cut", [1, 40, -4, -1])
def test_a_cut_snapshot_is_a_clear_error(config: ProviderConfig, cut: int) -> None:
    compile_snapshot(config)
    text = config.snapshot_path.read_text()
    config.snapshot_path.write_text(text[:cut])
    with pytest.raises(PolicyHostError, match=str(config.snapshot_path)):
        read_served(config.snapshot_path)


# -- any order of compiles and worker ticks ----------------------------------

HOSTS = [f"mta-sts.t{n}.example" for n in range(6)]
bodies = st.dictionaries(st.sampled_from(HOSTS), st.sampled_from([b"a\r\n", b"b\r\n", b"c\r\n"]))


@settings(max_examples=60, deadline=None)
@given(
    history=st.lists(st.tuples(bodies, st.booleans(), st.booleans()), min_size=1, max_size=12),
    limit=st.sampled_from([1, 3, 100]),
)
def test_a_worker_always_catches_up_with_the_snapshot(
    tmp_path_factory: pytest.TempPathFactory,
    history: list[tuple[dict[str, bytes], bool, bool]],
    limit: int,
) -> None:
    """Compiles as ``_compile`` makes them (the journal, then the snapshot,
    which may fail), a worker ticking between some of them: after every
    tick it serves either the snapshot on disk or the journal's newer head,
    and after a tick with both settled it serves exactly the snapshot."""
    folder = tmp_path_factory.mktemp("journal")
    path, journal_path = folder / "served.json", folder / JOURNAL_NAME
    snap_limit = journals.JOURNAL_MAX_CHANGES
    journals.JOURNAL_MAX_CHANGES = limit
    try:
        on_disk = Snapshot({}, "")
        write_snapshot(path, on_disk)
        table = web.PolicyTable(path)
        journal_head: dict[str, bytes] = {}
        for policies, snapshot_fails, tick in history:
            new = Snapshot({host[len("mta-sts.") :]: Entry(b, "s") for host, b in policies.items()})
            before = on_disk.policies_by_host()
            write_journal(journal_path, on_disk.id, new.id, *journals.changes(before, policies))
            journal_head = policies
            if not snapshot_fails:
                write_snapshot(path, new)
                on_disk = new
            if tick:
                table.refresh()
                assert dict(table.policies) in (on_disk.policies_by_host(), journal_head)
        # A compile that succeeds, with nothing changed, settles both.
        settled = Snapshot(on_disk.entries)
        write_journal(journal_path, on_disk.id, settled.id, {}, ())
        write_snapshot(path, settled)
        on_disk = settled
        table.refresh()
        assert dict(table.policies) == on_disk.policies_by_host()
        assert table.snapshot_id == on_disk.id
    finally:
        journals.JOURNAL_MAX_CHANGES = snap_limit


@pytest.mark.parametrize(
    ("old", "new"),
    [('":{"body":"', '":{"bodx":"'), (',"fingerprint":', ',"fingerprinx":'), ('"', "'")],
    ids=["no-body", "body-not-closed", "not-json"],
)
def test_a_damaged_tenant_line_is_a_clear_error(config: ProviderConfig, old: str, new: str) -> None:
    compile_snapshot(config)
    lines = config.snapshot_path.read_text().splitlines(keepends=True)
    assert old in lines[2]
    lines[2] = lines[2].replace(old, new, 1)
    config.snapshot_path.write_text("".join(lines))
    with pytest.raises(PolicyHostError, match=rf"{config.snapshot_path}: .*tenant line"):
        read_served(config.snapshot_path)
