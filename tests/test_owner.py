"""Commands that write into state_dir run as its owner (or, for certs and
nginx-conf, root), or not at all: files written there by another user are
unreadable to the server, which then silently keeps serving old policies."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support.fixtures_dns import in_ci

from policy_host.cli.main import main
from policy_host.cli.owner import OWNER_ONLY, OWNER_OR_ROOT, refusal, wrong_user
from policy_host.read.config import load_config

OWNER, ROOT, OTHER = 998, 0, 1000


@pytest.mark.parametrize(
    ("command", "uid", "refused"),
    [
        ("apply", OWNER, False),
        ("apply", ROOT, True),
        ("apply", OTHER, True),
        ("reload", ROOT, True),
        ("serve", ROOT, True),
        ("reports", ROOT, True),
        ("reports", OTHER, True),
        ("reports", OWNER, False),
        ("certs", ROOT, False),
        ("certs", OWNER, False),
        ("certs", OTHER, True),
        ("nginx-conf", ROOT, False),
        ("nginx-conf", OTHER, True),
        ("validate", OTHER, False),
        ("check", ROOT, False),
        ("show", OTHER, False),
    ],
)
def test_who_may_run_each_command(command: str, uid: int, refused: bool) -> None:
    assert wrong_user(command, dry_run=False, owner=OWNER, uid=uid) is refused


@pytest.mark.parametrize("command", sorted(OWNER_ONLY | OWNER_OR_ROOT))
def test_a_dry_run_or_a_missing_state_dir_is_never_refused(command: str) -> None:
    assert not wrong_user(command, dry_run=True, owner=OWNER, uid=OTHER)
    assert not wrong_user(command, dry_run=False, owner=None, uid=OTHER)


def test_the_owner_is_never_refused(tree: Path) -> None:
    config = load_config(tree / "config.yaml")
    config.state_dir.mkdir()
    for command in sorted(OWNER_ONLY | OWNER_OR_ROOT):
        assert refusal(command, config.state_dir) is None


def test_reload_by_another_user_is_refused_with_a_message_and_changes_nothing(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if os.geteuid() != 0:
        if in_ci():
            pytest.fail("needs root (to own state_dir by another user); CI=true", pytrace=False)
        pytest.skip("needs root (to own state_dir by another user)")
    state = tree / "var"
    state.mkdir()
    snapshot = state / "served.json"
    snapshot.write_text("{}\n")
    os.chown(state, 65534, 65534)
    os.chown(snapshot, 65534, 65534)
    before = snapshot.stat()
    status = main(["--config", str(tree / "config.yaml"), "reload"])
    err = capsys.readouterr().err
    assert status == 2
    assert "reload must run as" in err
    assert f"the owner of {state} (state_dir), not as root" in err
    assert "runuser -u" in err
    after = snapshot.stat()
    assert (after.st_uid, after.st_mtime_ns, after.st_ino) == (
        65534,
        before.st_mtime_ns,
        before.st_ino,
    )
    assert sorted(p.name for p in state.iterdir()) == ["served.json"]


@pytest.mark.parametrize(
    ("words", "status"),
    [(["reports", "ingest", "-"], 75), (["reports", "ingest"], 75), (["reports"], 2)],
)
def test_reports_by_another_user_is_refused_and_the_pipe_retries(
    tree: Path, capsys: pytest.CaptureFixture[str], words: list[str], status: int
) -> None:
    if os.geteuid() != 0:
        if in_ci():
            pytest.fail("needs root (to own state_dir by another user); CI=true", pytrace=False)
        pytest.skip("needs root (to own state_dir by another user)")
    state = tree / "var"
    state.mkdir()
    os.chown(state, 65534, 65534)
    assert main(["--config", str(tree / "config.yaml"), *words]) == status
    assert "reports must run as" in capsys.readouterr().err
    # No root-owned report store the server and the pipe could not write.
    assert list(state.iterdir()) == []
