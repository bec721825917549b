"""``policy-host promote`` end to end through the stores: one tenant that
becomes ready and is promoted by a one-line edit, one held back, evidence kept."""

from __future__ import annotations

import json
from pathlib import Path

from support.promoteenv import policy_host, provider_with_evidence

from policy_host.results import PROMOTED, read_events


def test_report_says_who_is_ready_and_why_not(tmp_path: Path) -> None:
    config = provider_with_evidence(tmp_path)
    done = policy_host(config, "promote", "--json")
    assert done.returncode == 0, done.stderr
    found = {t["domain"]: t for t in json.loads(done.stdout)["tenants"]}
    assert set(found) == {"ready.example", "young.example"}
    assert found["ready.example"]["ready"] is True
    assert found["ready.example"]["evidence"]["reports"]["successful_sessions"] == 1000
    assert found["ready.example"]["evidence"]["reports"]["organizations"] == ["Google", "Microsoft"]
    assert [h["code"] for h in found["young.example"]["holds"]] == [
        "testing_too_short",
        "reports_too_few_organizations",
    ]
    before = (config.tenants_dir / "ready.example.yaml").read_bytes()
    text = policy_host(config, "promote")
    assert "ready  ready.example" in text.stdout
    assert "       testing_too_short: in testing for 3.0 days" in text.stdout
    assert (config.tenants_dir / "ready.example.yaml").read_bytes() == before


def test_write_promotes_only_the_ready_tenant_by_one_line(tmp_path: Path) -> None:
    config = provider_with_evidence(tmp_path)
    path = config.tenants_dir / "ready.example.yaml"
    before = path.read_text()
    dry = policy_host(config, "promote", "--write", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "-mode: testing\n+mode: enforce  # promoted to enforce by policy-host" in dry.stdout
    assert path.read_text() == before
    done = policy_host(config, "promote", "--write")
    assert done.returncode == 0, done.stderr
    after = path.read_text()
    changed = [
        (a, b) for a, b in zip(before.splitlines(), after.splitlines(), strict=True) if a != b
    ]
    assert len(changed) == 1
    assert changed[0][1].startswith("mode: enforce  # promoted to enforce by policy-host ")
    assert "mode: testing" in (config.tenants_dir / "young.example.yaml").read_text()
    assert policy_host(config, "validate").returncode == 0
    events = read_events(config.results_db, "ready.example")
    assert [e.kind for e in events] == [PROMOTED]
    assert events[0].evidence["reports"]["successful_sessions"] == 1000
    assert events[0].evidence["line"] == changed[0][1]
    assert read_events(config.results_db, "young.example") == []


def test_auto_promotes_only_tenants_that_opted_in(tmp_path: Path) -> None:
    config = provider_with_evidence(tmp_path)
    done = policy_host(config, "promote", "--write", "--auto")
    assert done.returncode == 0, done.stderr
    assert "mode: testing" in (config.tenants_dir / "ready.example.yaml").read_text()
    opted = provider_with_evidence(tmp_path / "b", auto=True)
    done = policy_host(opted, "promote", "--write", "--auto")
    assert done.returncode == 0, done.stderr
    assert "mode: enforce" in (opted.tenants_dir / "ready.example.yaml").read_text()


def test_apply_goes_only_with_write_and_nothing_is_applied_without_an_edit(
    tmp_path: Path,
) -> None:
    config = provider_with_evidence(tmp_path)
    alone = policy_host(config, "promote", "--apply")
    assert alone.returncode == 2
    assert "--apply goes with --write" in alone.stderr
    # ready.example has not opted in (promote.auto): nothing to edit, no apply.
    before = (config.tenants_dir / "ready.example.yaml").read_bytes()
    done = policy_host(config, "promote", "--write", "--auto", "--apply")
    assert done.returncode == 0, done.stderr
    assert "running apply" not in done.stderr
    assert "promoted 0" in done.stderr
    assert (config.tenants_dir / "ready.example.yaml").read_bytes() == before
