"""The `apply` plan (pure) and the executor's ordering, with fakes only."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import dns.update
import pytest

from policy_host.model import Policy, Tenant
from policy_host.publish import send as send_mod
from policy_host.publish.apply import run
from policy_host.publish.environment import ChangedDomains, Environment
from policy_host.publish.plan import Change, Plan, make_plan
from policy_host.publish.update import TsigKey
from policy_host.read.config import ApplySettings, DnsSettings, ProviderConfig, ServeSettings
from policy_host.read.tenants import LoadResult
from policy_host.render import fingerprint, render
from policy_host.state import (
    ACTIVE,
    CHANGE,
    DELETE,
    GONE,
    NEW,
    UNPUBLISHED,
    WITHDRAW,
    WITHDRAWING,
    Pending,
    Record,
    new_policy_id,
)

NOW = 1_800_000_000.0
DAY = 86400
WEEK = 7 * DAY
WITHDRAWAL = render(Policy("none", (), 3600))


def tenant(domain: str, *mx: str, max_age: int = WEEK, mode: str = "enforce") -> Tenant:
    return Tenant(domain, Policy(mode, mx, max_age), f"tenants/{domain}.yaml")


def loaded(*tenants: Tenant) -> LoadResult:
    return LoadResult(tenants={t.domain: t for t in tenants}, files=len(tenants))


def active(t: Tenant, policy_id: str = "old1", longest: int | None = None) -> Record:
    body = render(t.policy)
    return Record(
        t.domain,
        ACTIVE,
        policy_id,
        fingerprint(body),
        body,
        t.policy.max_age,
        longest if longest is not None else t.policy.max_age,
        confirmed_at=NOW - DAY,
    )


def counter_ids() -> tuple[list[Sequence[str]], Callable[..., str]]:
    taken_seen: list[Sequence[str]] = []
    count = iter(range(1, 1000))

    def make(now: float, domain: str, fp: str, taken: Sequence[str]) -> str:
        taken_seen.append(list(taken))
        return f"new{next(count)}"

    return taken_seen, make


def plan(result: LoadResult, *records: Record, now: float = NOW) -> Plan:
    _, make = counter_ids()
    return make_plan(
        result, {r.domain: r for r in records}, now, withdrawal_max_age=3600, make_id=make
    )


def kinds(p: Plan) -> list[tuple[str, str, str | None, str | None, bool]]:
    return [(c.domain, c.kind, c.old_id, c.new_id, c.resumed) for c in p.changes]


A = tenant("a.example", "mx.a.example")


def test_new_tenant_gets_a_new_id() -> None:
    p = plan(loaded(A))
    assert kinds(p) == [("a.example", NEW, None, "new1", False)]
    assert p.changes[0].new_body == render(A.policy)


def test_unchanged_tenant_is_left_alone() -> None:
    p = plan(loaded(A), active(A))
    assert (p.changes, p.unchanged) == ((), ("a.example",))


def test_changed_policy_gets_a_new_id_avoiding_the_old_ones() -> None:
    changed = tenant("a.example", "mx.a.example", max_age=2 * WEEK)
    taken, make = counter_ids()
    p = make_plan(
        loaded(changed), {"a.example": active(A)}, NOW, withdrawal_max_age=3600, make_id=make
    )
    assert kinds(p) == [("a.example", CHANGE, "old1", "new1", False)]
    assert taken == [["old1"]]
    assert p.notes == ()  # no mx dropped


def test_dropped_mx_is_noted_unless_the_old_mode_was_none() -> None:
    two = tenant("a.example", "mx1.a.example", "mx2.a.example", max_age=DAY)
    one = tenant("a.example", "mx2.a.example", max_age=DAY)
    [note] = plan(loaded(one), active(two)).notes
    assert note.startswith("a.example: mx no longer lists mx1.a.example; ")
    assert "up to its max_age of 86400 s (until 2027-01-16T08:00:00Z)" in note
    was_none = tenant("a.example", max_age=DAY, mode="none")
    assert plan(loaded(one), active(was_none)).notes == ()


def test_interrupted_change_with_the_same_bytes_keeps_its_id() -> None:
    changed = tenant("a.example", "mx.a.example", max_age=2 * WEEK)
    body = render(changed.policy)
    record = Record(
        **{**vars(active(A)), "pending": Pending(CHANGE, "mid1", fingerprint(body), body, 2 * WEEK)}
    )
    assert kinds(plan(loaded(changed), record)) == [("a.example", CHANGE, "old1", "mid1", True)]


def test_interrupted_change_with_other_bytes_needs_a_fresh_id() -> None:
    # The interrupted id may be in DNS with its bytes; going back to the
    # committed bytes must not leave that id standing.
    other = render(tenant("a.example", "mx9.a.example").policy)
    record = Record(
        **{**vars(active(A)), "pending": Pending(CHANGE, "mid1", fingerprint(other), other, WEEK)}
    )
    taken, make = counter_ids()
    p = make_plan(loaded(A), {"a.example": record}, NOW, withdrawal_max_age=3600, make_id=make)
    assert kinds(p) == [("a.example", CHANGE, "old1", "new1", False)]
    assert taken == [["old1", "mid1"]]


def test_removed_tenant_is_withdrawn_with_mode_none() -> None:
    p = plan(loaded(), active(A, longest=4 * WEEK))
    assert kinds(p) == [("a.example", WITHDRAW, "old1", "new1", False)]
    assert p.changes[0].new_body == WITHDRAWAL
    assert [(w.domain, w.ends) for w in p.withdrawing] == [("a.example", NOW + 4 * WEEK)]


def test_removed_before_its_first_publish_is_still_withdrawn() -> None:
    # The interrupted first publish may have reached DNS, with its max_age.
    body = render(A.policy)
    record = Record("a.example", UNPUBLISHED, pending=Pending(NEW, "mid1", "fp", body, 2 * WEEK))
    p = plan(loaded(), record)
    assert kinds(p) == [("a.example", WITHDRAW, None, "new1", False)]
    assert p.withdrawing[0].ends == NOW + 2 * WEEK


def withdrawing(started: float, longest: int = WEEK, body: bytes = WITHDRAWAL) -> Record:
    return Record(
        "a.example",
        WITHDRAWING,
        "wd1",
        fingerprint(body),
        body,
        3600,
        longest,
        confirmed_at=started,
        withdrawal_started=started,
    )


def test_withdrawal_runs_until_the_longest_max_age_then_deletes() -> None:
    during = plan(loaded(), withdrawing(NOW - WEEK + 1))
    assert (during.changes, during.unchanged) == ((), ("a.example",))
    assert [(w.domain, w.policy_id, w.ends) for w in during.withdrawing] == [
        ("a.example", "wd1", NOW + 1)
    ]
    over = plan(loaded(), withdrawing(NOW - WEEK))
    assert kinds(over) == [("a.example", DELETE, "wd1", None, False)]
    assert over.changes[0].pending(NOW).body == WITHDRAWAL  # served until committed


def test_new_withdrawal_policy_is_republished_but_the_clock_keeps_running() -> None:
    old_body = render(Policy("none", (), 60))
    p = plan(loaded(), withdrawing(NOW - DAY, body=old_body))
    assert kinds(p) == [("a.example", WITHDRAW, "wd1", "new1", False)]
    assert p.withdrawing[0].ends == NOW - DAY + WEEK


def test_tenant_file_back_ends_the_withdrawal() -> None:
    assert kinds(plan(loaded(A), withdrawing(NOW - DAY))) == [
        ("a.example", CHANGE, "wd1", "new1", False)
    ]


def test_interrupted_delete_is_taken_up_or_undone_by_a_returning_file() -> None:
    record = Record(
        **{
            **vars(withdrawing(NOW - 2 * WEEK)),
            "pending": Pending(DELETE, None, fingerprint(WITHDRAWAL), WITHDRAWAL, 3600),
        }
    )
    assert kinds(plan(loaded(), record)) == [("a.example", DELETE, "wd1", None, True)]
    assert kinds(plan(loaded(A), record)) == [("a.example", CHANGE, "wd1", "new1", False)]


def test_gone_tenant_is_nothing_until_its_file_returns() -> None:
    gone = Record("a.example", GONE, longest_max_age=WEEK)
    assert plan(loaded(), gone).changes == ()
    assert kinds(plan(loaded(A), gone)) == [("a.example", NEW, None, "new1", False)]


def test_default_ids_are_utc_time_and_hash_and_never_repeat() -> None:
    ids = {new_policy_id(NOW, "a.example", "fp") for _ in range(2000)}
    assert len(ids) == 2000
    for policy_id in ids:
        assert re.fullmatch(r"20270115T080000[0-9a-f]{8}", policy_id)
    first = new_policy_id(NOW, "a.example", "fp")
    assert new_policy_id(NOW, "a.example", "fp", taken=[first]) != first


def test_diff_shows_the_policy_lines() -> None:
    change = Change(
        "a.example",
        CHANGE,
        "old1",
        "new1",
        render(A.policy),
        render(tenant("a.example", "mx.a.example", max_age=DAY).policy),
        DAY,
    )
    assert change.diff() == [
        "--- a.example id old1 (served now)",
        "+++ a.example id new1 (after apply)",
        "@@ -1,4 +1,4 @@",
        " version: STSv1",
        " mode: enforce",
        " mx: mx.a.example",
        "-max_age: 604800",
        "+max_age: 86400",
    ]


# -- the executor, with fakes -------------------------------------------------


class FakeDns:
    """A primary that records what it is sent and answers TXT from it."""

    key: TsigKey | None = TsigKey("k.", "hmac-sha256", "c2VjcmV0")
    server = ("192.0.2.53", 53)

    def __init__(self, events: list[tuple[str, float]]) -> None:
        self.events = events
        self.txt_records: dict[str, list[bytes]] = {}
        self.sent: list[dns.update.UpdateMessage] = []

    def zone_for(self, name: str) -> str:
        return "provider.example."

    def send(self, update: dns.update.UpdateMessage) -> None:
        self.events.append(("send", time.monotonic()))
        self.sent.append(update)
        for rrset in update.update:
            name = rrset.name.to_text()
            if rrset.deleting is not None:
                self.txt_records.pop(name, None)
            else:
                self.txt_records[name] = [b"".join(r.strings) for r in rrset]

    def txt(self, name: str) -> list[bytes]:
        return self.txt_records.get(name, [])


def fake_config(tmp_path: Path) -> ProviderConfig:
    (tmp_path / "tenants").mkdir()
    return ProviderConfig(
        path=tmp_path / "config.yaml",
        tenants_dir=tmp_path / "tenants",
        state_dir=tmp_path / "var",
        policy_host="mta-sts.provider.example",
        id_zone="_mta-sts.provider.example",
        serve=ServeSettings(),
        dns=DnsSettings(primary=("192.0.2.53", 53)),
        apply=ApplySettings(upstreams=("http://192.0.2.1",), verify_timeout=2.0),
    )


def fake_env(config: ProviderConfig, events: list[tuple[str, float]], **kw: object) -> Environment:
    from policy_host.serve.compiler import compile_snapshot

    table: dict[str, bytes] = {}

    def reload(result: LoadResult, force: bool) -> ChangedDomains:
        events.append(("reload", time.monotonic()))
        compiled = compile_snapshot(config, loaded=result)
        table.clear()
        table.update(compiled.snapshot.policies_by_host())
        return compiled.changed_domains()

    def fetch(upstream: str, host: str) -> tuple[int, bytes]:
        body = table.get(host)
        return (200, body) if body is not None else (404, b"")

    return Environment(reload=reload, fetch=fetch, dns=FakeDns(events), **kw)  # type: ignore[arg-type]


def test_nothing_is_published_before_every_worker_had_time_to_swap(tmp_path: Path) -> None:
    config = fake_config(tmp_path)
    (config.tenants_dir / "a.example.yaml").write_text("mode: none\nmax_age: 86400\n")
    events: list[tuple[str, float]] = []

    report = run(config, fake_env(config, events, settle=0.4))

    assert report.failure is None, report.failure
    (first, reloaded), (second, sent) = events
    assert (first, second) == ("reload", "send")
    assert sent - reloaded >= 0.4


def test_many_changes_go_out_in_batches_with_progress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(send_mod, "BATCH_SIZE", 2)
    config = fake_config(tmp_path)
    for n in range(5):
        (config.tenants_dir / f"t{n}.example.yaml").write_text("mode: none\nmax_age: 86400\n")
    events: list[tuple[str, float]] = []
    progress: list[tuple[str, int, int]] = []
    env = fake_env(config, events, progress=lambda *p: progress.append(p))

    report = run(config, env)

    assert report.failure is None, report.failure
    assert isinstance(env.dns, FakeDns)
    assert [len(u.update) for u in env.dns.sent] == [4, 4, 2]  # delete + add per name
    assert len(report.updates) == 3
    assert ("verify", 5, 5) in progress and ("confirm", 5, 5) in progress
