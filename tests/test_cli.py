"""The command line: exit codes, output forms, config lookup."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.layout import EXAMPLES

from policy_host.cli.main import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_validate_examples_is_clean(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "validate", "--config", str(EXAMPLES / "config.yaml"))
    assert (status, out) == (0, "")
    assert "3 tenant files, 3 valid, 0 errors, 0 warnings" in err


def test_validate_reports_every_problem_and_fails(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tree / "tenants" / "example.com.yaml").write_text("mode: enforced\nmx: [a]\nmax_age: 5\n")
    (tree / "tenants" / "example.net.yaml").write_text("mode: testing\n")
    status, out, _ = run(capsys, "--config", str(tree / "config.yaml"), "validate")
    lines = out.splitlines()
    assert status == 1
    com = tree / "tenants" / "example.com.yaml"
    net = tree / "tenants" / "example.net.yaml"
    assert lines == [
        f"{com}:1: mode: expected one of enforce, testing, none (got 'enforced')",
        f"{com}:2: mx 'a' needs at least two labels",
        f"{com}:3: warning: max_age 5 is under a day (86400); "
        "some senders ignore such short policies",
        f"{net}:1: mx: required but missing",
        f"{net}:1: max_age: required but missing",
    ]


def test_validate_warnings_fail_unless_allowed(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tree / "tenants" / "example.com.yaml").write_text("mode: testing\nmx: [a.b.c]\nmax_age: 60\n")
    config = str(tree / "config.yaml")
    status, out, _ = run(capsys, "validate", "--config", config)
    assert (status, "warning: max_age 60 is under a day" in out) == (1, True)
    assert run(capsys, "validate", "--allow-warnings", "--config", config)[0] == 0


def test_validate_json(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tree / "tenants" / "example.org.yaml").write_text("mode: nope\nmax_age: 86400\n")
    status, out, _ = run(capsys, "validate", "--json", "--config", str(tree / "config.yaml"))
    report = json.loads(out)
    assert status == 1
    assert (report["files"], report["valid"], report["errors"]) == (3, 2, 1)
    assert report["problems"][0]["line"] == 1
    assert report["problems"][0]["severity"] == "error"


def test_config_from_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("POLICY_HOST_CONFIG", str(EXAMPLES / "config.yaml"))
    assert run(capsys, "validate")[0] == 0


def test_missing_config_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = run(capsys, "validate", "--config", str(tmp_path / "nope.yaml"))
    assert status == 2
    assert "nope.yaml: cannot read" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tenants_dir: t\npolicy_host: mta-sts.p.example\n", "1: id_zone: required but missing"),
        (
            "tenants_dir: t\npolicy_host: bad..host\nid_zone: _mta-sts.p.example\n",
            "2: policy_host 'bad..host' has an empty label",
        ),
        (
            "tenants_dir: t\npolicy_host: h.p.example\nid_zone: _mta-sts.p.example\nserve:\n"
            "  workers: 0\n",
            "5: serve.workers: expected 1..256 (got 0)",
        ),
        (
            "tenants_dir: t\npolicy_host: h.p.example\nid_zone: _mta-sts.p.example\nserve:\n"
            "  bind: nowhere\n",
            "5: serve.bind: expected HOST:PORT",
        ),
        (
            "tenants_dir: t\npolicy_host: h.p.example\nid_zone: _mta-sts.p.example\nport: 1\n",
            "4: unknown key 'port'",
        ),
    ],
)
def test_broken_provider_config_names_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    status, _, err = run(capsys, "validate", "--config", str(path))
    assert status == 2
    assert f"{path}:{message}" in err


def test_show_prints_policy_and_records(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "show", "EXAMPLE.com.", "--config", str(EXAMPLES / "config.yaml"))
    assert status == 0
    assert "version: STSv1\nmode: enforce\nmx: mx1.example.com\nmx: mx2.example.com\n" in out
    assert "mta-sts.example.com.   3600  IN  CNAME  mta-sts.provider.example.\n" in out
    assert "_mta-sts.example.com.  3600  IN  CNAME  example.com._mta-sts.provider.example.\n" in out
    assert 'example.com._mta-sts.provider.example.  300  IN  TXT  "v=STSv1; id=' in out
    assert '"v=TLSRPTv1; rua=mailto:tlsrpt@example.com"' in out


def test_show_json(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(
        capsys, "show", "example.org", "--json", "--config", str(EXAMPLES / "config.yaml")
    )
    report = json.loads(out)
    assert status == 0
    assert report["policy"] == "version: STSv1\r\nmode: none\r\nmax_age: 86400\r\n"
    assert report["customer_records"][1] == {
        "name": "_mta-sts.example.org.",
        "type": "CNAME",
        "value": "example.org._mta-sts.provider.example.",
    }


def test_show_unknown_domain_fails_clearly(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(
        capsys, "show", "nobody.example", "--config", str(EXAMPLES / "config.yaml")
    )
    assert status == 1
    assert "nobody.example.yaml does not exist" in err


def test_help_explains_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    for command in ("validate", "serve", "reload", "show"):
        assert command in out
    assert "Exit status" in out
