"""`apply --changed FILE...`: only the named tenants are validated, served,
published and recorded; the others are left exactly as they were."""

from __future__ import annotations

import time
from pathlib import Path

from test_apply_plan import FakeDns, fake_config

from policy_host.publish.apply import run
from policy_host.publish.environment import ChangedDomains, Environment, compile_loaded
from policy_host.read.config import ProviderConfig
from policy_host.read.tenants import LoadResult
from policy_host.serve.journal import JOURNAL_NAME, read_journal
from policy_host.serve.snapshot import served_policies, snapshot_id
from policy_host.state import read_records

TENANT = "mode: testing\nmx:\n  - mx.{domain}\nmax_age: {age}\n"


def write(config: ProviderConfig, domain: str, age: int = 86400) -> Path:
    path = config.tenants_dir / f"{domain}.yaml"
    path.write_text(TENANT.format(domain=domain, age=age))
    return path


def env_for(config: ProviderConfig, dns: FakeDns, reloads: list[LoadResult]) -> Environment:
    """The real compile (``compile_loaded``, as `apply` runs it); fetches
    read the policy files nginx serves."""

    def reload(result: LoadResult, force: bool) -> ChangedDomains | None:
        reloads.append(result)
        compiled = compile_loaded(config, result, proceed=lambda changed: bool(changed) or force)
        return compiled.changed_domains() if compiled.written else None

    def fetch(upstream: str, host: str) -> tuple[int, bytes]:
        path = config.www_dir / host
        return (200, path.read_bytes()) if path.exists() else (404, b"")

    return Environment(reload=reload, fetch=fetch, dns=dns, sleep=lambda s: None)


def test_only_the_named_tenant_is_served_and_published(tmp_path: Path) -> None:
    config = fake_config(tmp_path)
    for domain in ("a.example", "b.example", "c.example"):
        write(config, domain)
    dns = FakeDns([])
    reloads: list[LoadResult] = []
    assert run(config, env_for(config, dns, reloads)).ok
    before = read_records(config.state_db)
    snapshot_before = snapshot_id(config.snapshot_path)
    sent_before = len(dns.sent)
    # b changes, and so does c, whose file is not named: c waits.
    write(config, "b.example", 172800)
    write(config, "c.example", 172800)
    time.sleep(0.01)

    report = run(config, env_for(config, dns, reloads), changed=["b.example.yaml"])

    assert report.ok, report.failure
    assert [c.domain for c in report.plan.changes] == ["b.example"]
    assert reloads[-1].named == ("b.example.yaml",)
    assert sorted(reloads[-1].tenants) == ["b.example"]
    after = read_records(config.state_db)
    assert after["b.example"].policy_id != before["b.example"].policy_id
    assert after["b.example"].body is not None and b"max_age: 172800" in after["b.example"].body
    assert after["a.example"] == before["a.example"]
    assert after["c.example"] == before["c.example"]
    assert len(dns.sent) == sent_before + 1
    [update] = dns.sent[sent_before:]
    assert {r.name.to_text() for r in update.update} == {"b.example._mta-sts.provider.example."}
    # Served: b's new bytes through one journal step, the snapshot as it was.
    served = served_policies(config.snapshot_path)
    assert served is not None
    assert b"max_age: 172800" in served[0]["mta-sts.b.example"]
    assert b"max_age: 86400" in served[0]["mta-sts.c.example"]
    assert snapshot_id(config.snapshot_path) == snapshot_before
    journal = read_journal(config.snapshot_path.with_name(JOURNAL_NAME))
    assert journal is not None and journal.head == served[1]

    # A run without --changed then takes c (and only c) too.
    report = run(config, env_for(config, dns, reloads))
    assert report.ok and [c.domain for c in report.plan.changes] == ["c.example"]


def test_a_named_file_that_is_gone_is_withdrawn_and_no_other(tmp_path: Path) -> None:
    config = fake_config(tmp_path)
    for domain in ("a.example", "b.example"):
        write(config, domain)
    dns = FakeDns([])
    assert run(config, env_for(config, dns, [])).ok
    (config.tenants_dir / "a.example.yaml").unlink()
    (config.tenants_dir / "b.example.yaml").unlink()

    report = run(config, env_for(config, dns, []), changed=["a.example.yaml"])

    assert report.ok, report.failure
    assert [(c.domain, c.kind) for c in report.plan.changes] == [("a.example", "withdraw")]
    served = served_policies(config.snapshot_path)
    assert served is not None
    assert b"mode: none" in served[0]["mta-sts.a.example"]
    assert b"mode: testing" in served[0]["mta-sts.b.example"]  # not named: as it was


def test_a_broken_named_file_stops_the_run(tmp_path: Path) -> None:
    config = fake_config(tmp_path)
    write(config, "a.example")
    dns = FakeDns([])
    assert run(config, env_for(config, dns, [])).ok
    (config.tenants_dir / "a.example.yaml").write_text("mode: sometimes\n")
    report = run(config, env_for(config, dns, []), changed=["a.example.yaml"])
    assert report.failure is not None and report.failure.step == "validate"
    assert report.failure.domains == ["a.example"]
