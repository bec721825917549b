"""The shipped systemd units: what they promise holds.

``Type=notify`` is only honest if the server really sends ``READY=1``:
gunicorn 23 does (``Arbiter.start``), proven here with a real
``policy-host serve`` and a notify socket of our own.
"""

from __future__ import annotations

import configparser
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from support.fixtures_dns import in_ci
from support.layout import ROOT
from support.procs import Daemon, free_port, wait_for_port
from support.stack import CLI

DEPLOY = ROOT / "deploy"
UNITS = sorted(p.name for p in DEPLOY.iterdir() if p.suffix in (".service", ".timer"))


def unit(name: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(DEPLOY / name)
    return parser


def test_server_unit_is_notify_reloads_in_place_and_is_sandboxed() -> None:
    service = unit("policy-host.service")["Service"]
    assert service["Type"] == "notify"
    assert service["ExecReload"] == "/opt/policy-host/.venv/bin/policy-host reload"
    assert service["User"] == "policy-host"
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["StateDirectory"] == "policy-host"
    assert service["RuntimeDirectory"] == "policy-host"
    assert service["CapabilityBoundingSet"] == ""


def test_every_timer_has_its_service() -> None:
    for name in UNITS:
        if name.endswith(".timer"):
            assert name.removesuffix(".timer") + ".service" in UNITS


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        message = "systemd-analyze (Debian package systemd) is not installed"
        if in_ci():
            pytest.fail(f"{message}; CI=true, so this is a failure, not a skip", pytrace=False)
        pytest.skip(message)
    for name in UNITS:
        text = (DEPLOY / name).read_text()
        text = text.replace("/opt/policy-host/.venv/bin/policy-host", CLI[0])
        (tmp_path / name).write_text(text)
    done = subprocess.run(
        [analyze, "verify", "--man=no", *(str(tmp_path / n) for n in UNITS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_gunicorn_sends_ready_to_systemd(tree: Path, tmp_path: Path) -> None:
    notify = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(notify))
        listener.settimeout(20)
        port = free_port("tcp")
        env = dict(os.environ, NOTIFY_SOCKET=str(notify))
        argv = [*CLI, "--config", str(tree / "config.yaml"), "serve", "--bind", f"127.0.0.1:{port}"]
        with Daemon(argv, name="gunicorn", env=env, workdir=tmp_path / "run"):
            message = listener.recv(4096).decode()
            wait_for_port("127.0.0.1", port, timeout=10)
    assert "READY=1" in message.splitlines()


def test_certbot_deploy_hook_tests_nginx_before_reloading() -> None:
    hook = DEPLOY / "certbot-deploy-hook"
    assert os.access(hook, os.X_OK)
    lines = [ln for ln in hook.read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines == ["set -eu", "nginx -t -q", "exec systemctl reload nginx"]
