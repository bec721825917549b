"""The generated nginx include, checked by the real `nginx -t` with the
shipped site config; and the provider config's acme and nginx sections."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.fixtures_dns import in_ci
from support.nginx import NginxServer
from support.procs import MissingBinaryError, require_binary
from support.tls import make_ca

from policy_host.certs.nginxconf import NginxError, cert_files, render_conf, sync
from policy_host.errors import ConfigError
from policy_host.read.acme import DEFAULT_ACME_DIRECTORY
from policy_host.read.config import ProviderConfig, load_config
from policy_host.runner import run


def require(*names: str) -> None:
    for name in names:
        try:
            require_binary(name)
        except MissingBinaryError as exc:
            if in_ci():
                pytest.fail(f"{exc}; CI=true, so this is a failure", pytrace=False)
            pytest.skip(str(exc))


@pytest.fixture
def nginx_tree(tmp_path: Path, empty_tree: Path) -> tuple[ProviderConfig, NginxServer]:
    require("nginx", "openssl")
    server = NginxServer(
        tmp_path / "nginx", socket_path=tmp_path / "sock", webroot=tmp_path / "webroot"
    )
    server.install()
    for domain in ("a.example", "b.example"):
        (empty_tree / "tenants" / f"{domain}.yaml").write_text("mode: none\nmax_age: 86400\n")
    config_path = empty_tree / "config.yaml"
    config_path.write_text(
        config_path.read_text()
        + f"""\
acme:
  config_dir: {tmp_path}/le
nginx:
  tenants_conf: {server.tenants_conf}
  snippet: {server.snippet}
  test_command: {" ".join(server.test_command)}
  reload_command: "true"
"""
    )
    return load_config(config_path), server


def issue(config: ProviderConfig, tmp_path: Path, host: str) -> None:
    ca = make_ca(tmp_path / "ca")
    chain, key = ca.issue(host, [host])
    dest_chain, dest_key = cert_files(config.acme, host)
    dest_chain.parent.mkdir(parents=True)
    dest_chain.write_bytes(chain.read_bytes())
    dest_key.write_bytes(key.read_bytes())


def test_generated_blocks_pass_nginx_t_with_the_shipped_config(
    nginx_tree: tuple[ProviderConfig, NginxServer], tmp_path: Path
) -> None:
    config, _server = nginx_tree
    issue(config, tmp_path, "mta-sts.a.example")
    result = sync(config)
    assert result.changed and result.reloaded
    assert result.hosts == ["mta-sts.a.example"]
    assert result.without_certificate == ["mta-sts.b.example"]
    text = config.nginx.tenants_conf.read_text()
    assert "server_name mta-sts.a.example;" in text
    assert "b.example" not in text
    again = sync(config)
    assert not again.changed and not again.reloaded


def test_a_config_nginx_refuses_is_rolled_back(
    nginx_tree: tuple[ProviderConfig, NginxServer], tmp_path: Path
) -> None:
    config, _server = nginx_tree
    issue(config, tmp_path, "mta-sts.a.example")
    sync(config)
    good = config.nginx.tenants_conf.read_bytes()
    issue(config, tmp_path / "b", "mta-sts.b.example")
    cert_files(config.acme, "mta-sts.b.example")[1].write_text("not a key\n")
    with pytest.raises(NginxError, match="nginx config test failed"):
        sync(config)
    assert config.nginx.tenants_conf.read_bytes() == good


def test_shipped_config_alone_passes_nginx_t(
    nginx_tree: tuple[ProviderConfig, NginxServer],
) -> None:
    _config, server = nginx_tree
    result = run(server.test_command, timeout=30)
    assert result.ok, result.output


@pytest.mark.parametrize(
    "host",
    [
        "mta-sts.a.example;\n}\nserver {",
        "mta-sts.a.example include /etc/passwd",
        "mta-sts.$ssl_server_name",
        "mta-sts.A.example",
        "a.example",
    ],
)
def test_the_generator_refuses_anything_but_a_plain_host_name(
    config: ProviderConfig, host: str
) -> None:
    with pytest.raises(NginxError):
        render_conf(config, [host])


def test_acme_and_nginx_sections_have_defaults_in_one_place(config: ProviderConfig) -> None:
    assert config.acme.directory == DEFAULT_ACME_DIRECTORY
    assert config.acme.email is None
    assert config.acme.ca_bundle is None  # the system's store
    assert config.nginx.test_command == ("nginx", "-t", "-q")
    assert config.nginx.reload_command == ("systemctl", "reload", "nginx")


def test_acme_section_is_read_and_checked(empty_tree: Path) -> None:
    path = empty_tree / "config.yaml"
    base = path.read_text()
    path.write_text(
        base + "acme:\n  directory: https://127.0.0.1:14000/dir\n  email: ops@provider.example\n"
        "  ca_bundle: acme-ca.pem\n  webroot: acme\n  orders_per_hour: 5\n  backoff: 600\n"
        "nginx:\n  test_command: /usr/sbin/nginx -t -q -c '/etc/nginx/my conf'\n"
    )
    config = load_config(path)
    assert config.acme.email == "ops@provider.example"
    assert config.acme.webroot == empty_tree / "acme"
    assert config.acme.ca_bundle == empty_tree / "acme-ca.pem"
    assert (config.acme.orders_per_hour, config.acme.backoff) == (5, 600)
    assert config.nginx.test_command[-1] == "/etc/nginx/my conf"
    path.write_text(
        base + "acme:\n  directory: ftp://x\n  email: nobody\n  orders_per_hour: 0\n  bogus: 1\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    text = str(caught.value)
    for expected in ("acme.directory", "acme.email", "acme.orders_per_hour", "acme.bogus"):
        assert expected in text
