"""The provider config's ``tlsrpt`` section: defaults, values, every error."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import CONFIG_TEXT

from policy_host.errors import ConfigError
from policy_host.read.config import load_config
from policy_host.read.tlsrpt import DEFAULT_MAX_REPORT_BYTES, TlsrptSettings


def _load(tmp_path: Path, extra: str) -> TlsrptSettings:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG_TEXT + extra)
    return load_config(path).tlsrpt


def test_without_a_tlsrpt_section_the_defaults_apply(tmp_path: Path) -> None:
    settings = _load(tmp_path, "")
    assert settings == TlsrptSettings()
    assert (settings.unverified_mail, settings.max_report_bytes) == (
        "require",
        DEFAULT_MAX_REPORT_BYTES,
    )


def test_tlsrpt_section_is_read(tmp_path: Path) -> None:
    settings = _load(
        tmp_path,
        "tlsrpt:\n"
        "  rua: [mailto:tlsrpt@provider.example, https://tlsrpt.provider.example/v1/report]\n"
        "  zone: _smtp._tls.Provider.example\n"
        "  unverified_mail: record\n"
        "  retention_days: 90\n"
        "  max_failure_rate: 0.2\n",
    )
    assert settings.rua == (
        "mailto:tlsrpt@provider.example",
        "https://tlsrpt.provider.example/v1/report",
    )
    assert settings.zone == "_smtp._tls.provider.example"
    assert settings.https_paths == ("/v1/report",)
    assert (settings.unverified_mail, settings.retention_days) == ("record", 90)
    assert settings.max_failure_rate == 0.2


def test_the_report_names_are_the_https_hosts_once_each(tmp_path: Path) -> None:
    """What deploy/install serves reports for (its server blocks)."""
    settings = _load(
        tmp_path,
        "tlsrpt:\n  rua: [mailto:r@b.example, HTTPS://B.example:8443/r, https://a.example/x,\n"
        "    https://b.example/other]\n",
    )
    assert settings.https_hosts == ("a.example", "b.example")
    assert settings.https_paths == ("/r", "/x", "/other")
    assert _load(tmp_path, "tlsrpt:\n  rua: [mailto:r@b.example]\n").https_hosts == ()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("  rua: [ftp://x.example/]\n", "tlsrpt.rua: tlsrpt_rua 'ftp://x.example/'"),
        ("  unverified_mail: ignore\n", "tlsrpt.unverified_mail: expected one of require, record"),
        ("  max_failure_rate: 2\n", "tlsrpt.max_failure_rate: expected 0..1"),
        ("  retention_days: 0\n", "tlsrpt.retention_days: expected 1..36500"),
        ("  zone: _smtp._tls..example\n", "empty label"),
        ("  max_report_bytes: 10\n", "tlsrpt.max_report_bytes: expected 1024.."),
        ("  rua_: x\n", "unknown key 'tlsrpt.rua_'"),
    ],
)
def test_tlsrpt_errors_name_the_key(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"config\.yaml:") as caught:
        _load(tmp_path, "tlsrpt:\n" + extra)
    assert message in str(caught.value)
