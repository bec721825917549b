"""The provider config's ``authoritative`` section: defaults, values, every error."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import CONFIG_TEXT

from policy_host.authdns import configured_servers
from policy_host.errors import ConfigError
from policy_host.read.authoritative import DEFAULT_WAIT, AuthoritativeSettings
from policy_host.read.config import ProviderConfig, load_config


def _load(tmp_path: Path, extra: str) -> ProviderConfig:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG_TEXT + extra)
    return load_config(path)


def test_without_the_section_only_the_primary_is_asked(tmp_path: Path) -> None:
    config = _load(tmp_path, "dns:\n  primary: 127.0.0.1:5300\n")
    assert config.authoritative == AuthoritativeSettings()
    assert not config.authoritative.configured
    assert config.authoritative.wait == DEFAULT_WAIT
    assert configured_servers(config) is None


def test_a_list_of_servers_is_read(tmp_path: Path) -> None:
    config = _load(
        tmp_path,
        "dns:\n  primary: 127.0.0.1:5300\n"
        'authoritative:\n  servers: [192.0.2.53, "198.51.100.7:5353", "[2001:db8::53]:53"]\n'
        "  wait: 30\n",
    )
    settings = config.authoritative
    assert settings.servers == (("192.0.2.53", 53), ("198.51.100.7", 5353), ("2001:db8::53", 53))
    assert (settings.from_ns, settings.wait, settings.configured) == (False, 30.0, True)
    assert configured_servers(config) is not None


def test_ns_means_the_zones_ns_set(tmp_path: Path) -> None:
    settings = _load(tmp_path, "authoritative:\n  servers: ns\n").authoritative
    assert (settings.from_ns, settings.servers, settings.configured) == (True, (), True)


def test_without_a_primary_nothing_is_compared(tmp_path: Path) -> None:
    config = _load(tmp_path, "authoritative:\n  servers: [192.0.2.53]\n")
    assert config.authoritative.configured
    assert configured_servers(config) is None


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("  servers: [ns1.example]\n", "authoritative.servers: expected an IP address"),
        ("  servers: [ns, 192.0.2.1]\n", "either 'ns' or a list of addresses, not both"),
        ("  servers: [192.0.2.1:0]\n", "expected a port 1..65535"),
        ("  wait: 0\n", "authoritative.wait: expected 1..3600 seconds"),
        ("  wait: soon\n", "authoritative.wait: expected a whole number"),
        ("  servers: {a: 1}\n", "authoritative.servers: expected a list"),
        ("  server: [192.0.2.1]\n", "unknown key 'authoritative.server'"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"config\.yaml:") as caught:
        _load(tmp_path, "authoritative:\n" + extra)
    assert message in str(caught.value)
