"""`policy-host check` from the command line: table, JSON, exit status,
tenant selection, resolver choice, --https; real knotd + unbound behind it."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.dnsservers import UnboundResolver, Zone, start_dns
from support.fixtures_dns import require_dns_binaries
from support.layout import ROOT
from support.policyhttps import PolicyHttpsServer, Reply
from support.procs import free_port
from support.tls import make_ca

from policy_host import state
from policy_host.check.reasons import REASONS
from policy_host.cli.main import main
from policy_host.cli.output import Progress
from policy_host.model import Policy
from policy_host.read.config import ProviderConfig
from policy_host.render import render

PUBLISHED = {"good.example": "id1", "stale.example": "id2", "testing.example": "id3"}

TENANTS = {
    "good.example": "mode: enforce\nmx: [mx1.good.example]\nmax_age: 604800\n",
    "stale.example": "mode: enforce\nmx: [mx1.stale.example]\nmax_age: 604800\n",
    "testing.example": "mode: testing\nmx: [mx1.testing.example]\nmax_age: 604800\n",
    "broken.example": "mode: enforced\nmax_age: 604800\n",
}


def customer(domain: str, mx: str) -> Zone:
    return Zone(
        domain,
        [
            "mta-sts CNAME mta-sts.provider.example.",
            f"_mta-sts CNAME {domain}._mta-sts.provider.example.",
            f"@ MX 10 {mx}.",
            f'_smtp._tls TXT "v=TLSRPTv1; rua=mailto:tls@{domain}"',
        ],
    )


ZONES = [
    customer("good.example", "mx1.good.example"),
    customer("stale.example", "mx1.stale.example"),
    customer("testing.example", "mail.testing.example"),
    Zone(
        "provider.example",
        [
            "mta-sts A 127.0.0.1",
            'good.example._mta-sts TXT "v=STSv1; id=id1;"',
            'stale.example._mta-sts TXT "v=STSv1; id=old;"',
            'testing.example._mta-sts TXT "v=STSv1; id=id3;"',
        ],
    ),
]


@pytest.fixture(scope="module")
def unbound() -> Iterator[UnboundResolver]:
    require_dns_binaries()
    with start_dns(ZONES) as (_knot, resolver):
        yield resolver


def write_provider(root: Path, resolver: str) -> Path:
    (root / "tenants").mkdir(parents=True)
    for domain, text in TENANTS.items():
        (root / "tenants" / f"{domain}.yaml").write_text(text)
    config = root / "config.yaml"
    config.write_text(
        "tenants_dir: tenants\nstate_dir: var\npolicy_host: mta-sts.provider.example\n"
        f"id_zone: _mta-sts.provider.example\ndns:\n  resolver: {resolver}\n  timeout: 2\n"
        "check:\n  concurrency: 16\n"
    )
    return config


@pytest.fixture
def config_file(tmp_path: Path, unbound: UnboundResolver) -> Path:
    return write_provider(tmp_path / "provider", f"127.0.0.1:{unbound.port}")


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> None:
    def published_ids(config: ProviderConfig) -> dict[str, str]:
        return dict(PUBLISHED)

    monkeypatch.setattr(state, "published_ids", published_ids)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.usefixtures("published")
def test_table_puts_failures_first_and_exits_1(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run(capsys, "check", "--config", str(config_file))
    lines = out.splitlines()
    assert status == 1
    assert [line.split()[:3] for line in lines] == [
        ["fail", "broken.example", "tenant_invalid:"],
        ["fail", "stale.example", "txt_stale_id:"],
        ["warn", "testing.example", "mx_mismatch:"],
        ["ok", "good.example"],
    ]
    assert "stale.example._mta-sts.provider.example says id=old but the provider" in lines[1]
    assert "checked 4 tenants in" in err
    assert "1 ok, 1 warn, 2 fail" in err


@pytest.mark.usefixtures("published")
def test_named_domains_only_and_warnings_pass_unless_strict(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(config_file)
    status, out, _ = run(capsys, "check", "--config", config, "good.example", "TESTING.example.")
    assert status == 0
    assert [line.split()[:2] for line in out.splitlines()] == [
        ["warn", "testing.example"],
        ["ok", "good.example"],
    ]
    assert run(capsys, "check", "--config", config, "--strict", "testing.example")[0] == 1
    status, out, _ = run(capsys, "check", "--config", config, "--problems", "good.example")
    assert (status, out) == (0, "")


@pytest.mark.usefixtures("published")
def test_json_for_monitoring(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "check", "--config", str(config_file), "--json")
    report = json.loads(out)
    assert status == 1
    assert report["summary"] == {"tenants": 4, "ok": 1, "warn": 1, "fail": 2}
    assert report["queries"] > 0
    tenants = {t["domain"]: t for t in report["tenants"]}
    assert list(tenants) == sorted(tenants)
    stale = tenants["stale.example"]
    assert stale["status"] == "fail"
    assert stale["reasons"] == [
        {
            "code": "txt_stale_id",
            "severity": "fail",
            "message": "stale.example._mta-sts.provider.example says id=old but the provider "
            "last published id=id2; senders will not fetch the current policy",
            "subject": "stale.example._mta-sts.provider.example",
        }
    ]
    assert stale["observed"]["txt"]["records"] == ["v=STSv1; id=old;"]
    assert tenants["testing.example"]["reasons"][0]["severity"] == "warn"


def test_without_apply_state_ids_are_reported_unpublished(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The real state module: no database yet, so nothing was published.
    status, out, _ = run(capsys, "check", "--config", str(config_file), "good.example")
    assert status == 0
    assert out.startswith("warn  good.example  txt_unpublished: no id is recorded as published")


@pytest.mark.usefixtures("published")
def test_verbose_shows_what_dns_said(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "check", "--config", str(config_file), "-v", "stale.example")
    assert status == 1
    assert out.splitlines() == [
        "fail  stale.example",
        "      fail txt_stale_id: stale.example._mta-sts.provider.example says id=old but the "
        "provider last published id=id2; senders will not fetch the current policy",
        "      . mta-sts.stale.example -> mta-sts.provider.example A: 127.0.0.1",
        "      . _mta-sts.stale.example -> stale.example._mta-sts.provider.example TXT: "
        "v=STSv1; id=old;",
        "      . stale.example MX: 10 mx1.stale.example.",
        "      . _smtp._tls.stale.example TXT: v=TLSRPTv1; rua=mailto:tls@stale.example",
    ]


@pytest.mark.usefixtures("published")
def test_nameserver_option_overrides_the_config(
    tmp_path: Path, unbound: UnboundResolver, capsys: pytest.CaptureFixture[str]
) -> None:
    # Nothing listens at the config's resolver (the kernel says so at once);
    # --nameserver points at unbound.
    config = write_provider(tmp_path / "p", f"127.0.0.1:{free_port('udp')}")
    argv = ["check", "--config", str(config), "good.example", "--timeout", "0.5"]
    status, out, _ = run(capsys, *argv)
    assert status == 1
    assert "dns_error" in out and "Connection refused" in out
    status, out, err = run(capsys, *argv, "--nameserver", f"127.0.0.1:{unbound.port}")
    assert (status, out.split()) == (0, ["ok", "good.example"])
    assert f"through 127.0.0.1:{unbound.port}" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["nosuch.example"], "no tenant file for nosuch.example"),
        (["not a domain"], "may hold only letters"),
        (["--connect", "127.0.0.1:8443"], "only make sense with --https"),
        (["--https", "--ca-file", "/nonexistent/ca.pem"], "no such file"),
    ],
)
def test_usage_errors_exit_2(
    argv: list[str], message: str, config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run(capsys, "check", "--config", str(config_file), *argv)
    assert (status, out) == (2, "")
    assert message in err


def test_bad_option_values_exit_2(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--nameserver", "resolver.example"], ["--concurrency", "0"]):
        with pytest.raises(SystemExit) as exc:
            main(["check", "--config", str(config_file), *argv])
        assert exc.value.code == 2
    capsys.readouterr()


@pytest.mark.usefixtures("published")
def test_https_fetch_through_the_cli(
    tmp_path: Path, config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = make_ca(tmp_path / "ca")
    cert = ca.issue("good", ["mta-sts.good.example"], days=60)
    body = render(Policy("enforce", ("mx1.good.example",), 604800))
    with PolicyHttpsServer({}, cert, {"mta-sts.good.example": Reply(body=body)}) as server:
        argv = ["check", "--config", str(config_file), "--https", "--ca-file", str(ca.cert)]
        status, out, _ = run(capsys, *argv, "--connect", f"127.0.0.1:{server.port}", "good.example")
        assert (status, out.split()) == (0, ["ok", "good.example"])
        # The same fetch without the test CA: the certificate is not trusted.
        status, out, _ = run(
            capsys,
            "check",
            "--config",
            str(config_file),
            "--https",
            "--connect",
            f"127.0.0.1:{server.port}",
            "good.example",
        )
        assert status == 1
        assert "https_certificate_invalid" in out


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_only_on_a_terminal_and_for_large_runs() -> None:
    quiet = io.StringIO()
    Progress(quiet, 100, noun="tenants").step("checking", 50, 100)
    assert quiet.getvalue() == ""
    small = Terminal()
    Progress(small, 3, noun="tenants").step("checking", 1, 3)
    assert small.getvalue() == ""
    screen = Terminal()
    progress = Progress(screen, 100, noun="tenants")
    progress.step("checking", 1, 100)
    progress.step("checking", 2, 100)  # too soon after the first: not drawn
    progress.step("checking", 100, 100)
    progress.finish()
    assert screen.getvalue() == (
        "\rchecking: 1/100 tenants (1%)\rchecking: 100/100 tenants (100%)\r\x1b[K"
    )


def test_readme_lists_every_reason_code() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [code for code in REASONS if f"`{code}`" not in readme]
    assert missing == []
