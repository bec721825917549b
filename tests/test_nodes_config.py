"""The provider config's ``nodes`` section, the receiver's rsync command and
the node's own server blocks (no network: ``test_nodes_netns.py`` runs them)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from conftest import CONFIG_TEXT

from policy_host.errors import ConfigError
from policy_host.nodes.bundle import node_config
from policy_host.nodes.push import rsync_argv, ssh_argv
from policy_host.read.config import ProviderConfig, load_config
from policy_host.read.nodes import DEFAULT_NODE_ROOT, NodeSettings

NODES = """\
nodes:
  ssh_key: keys/push
  known_hosts: keys/known_hosts
  timeout: 30
  serving:
    - name: fra1
      address: 198.51.100.10
      ssh: policy-host@10.0.0.10
      app: 10.0.0.10:8080
    - name: ams1
      address: "[2001:db8::10]:8443"
      ssh: deploy@ams1.provider.example
      app: 10.0.1.10:8080
      path: /srv/node
      snippet: /etc/nginx/snippets/tenant.conf
      drained: true
"""


def _load(tmp_path: Path, extra: str) -> ProviderConfig:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG_TEXT + extra)
    return load_config(path)


def test_without_nodes_the_box_serves_alone(tmp_path: Path) -> None:
    config = _load(tmp_path, "")
    assert config.nodes == NodeSettings()
    assert config.nodes.active == ()


def test_nodes_are_read_with_their_defaults(tmp_path: Path) -> None:
    nodes = _load(tmp_path, NODES).nodes
    fra1, ams1 = nodes.serving
    assert (fra1.name, fra1.address, fra1.ssh, fra1.app) == (
        "fra1",
        ("198.51.100.10", 443),
        "policy-host@10.0.0.10",
        "10.0.0.10:8080",
    )
    assert (fra1.path, fra1.drained) == (DEFAULT_NODE_ROOT, False)
    assert ams1.https_url == "https://[2001:db8::10]:8443"
    assert (ams1.path, ams1.drained) == ("/srv/node", True)
    assert nodes.active == (fra1,)
    assert nodes.ssh_key == tmp_path / "keys/push"
    assert nodes.timeout == 30.0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("name: fra1", "name: Fra_1"), "nodes.0.name: expected a-z, 0-9 and '-'"),
        (("name: ams1", "name: fra1"), "the name 'fra1' is used twice"),
        (("address: 198.51.100.10", "address: www.example"), "nodes.0.address: expected an IP"),
        (
            ("ssh: policy-host@10.0.0.10", "ssh: -oProxyCommand=x"),
            "nodes.0.ssh: expected user@host",
        ),
        (("app: 10.0.0.10:8080", "app: unix:/run/x.sock"), "nodes.0.app: a unix socket"),
        (("path: /srv/node", "path: srv/node"), "nodes.1.path: expected an absolute path"),
        (("drained: true", "drained: yes please"), "nodes.1.drained: expected true or false"),
        (("  ssh_key: keys/push\n", ""), "nodes.ssh_key: required with serving nodes"),
        (("timeout: 30", "timeout: 0"), "nodes.timeout: expected 1..3600"),
        (("      app: 10.0.1.10:8080\n", ""), "nodes.1.app: required but missing"),
        (("      path: /srv/node", "      paht: /srv/node"), "unknown key 'nodes.1.paht'"),
    ],
)
def test_each_mistake_is_named(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    old, new = change
    assert old in NODES
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, NODES.replace(old, new, 1))
    assert message in str(caught.value)


def test_pushes_use_our_key_and_known_host_keys_only(tmp_path: Path) -> None:
    config = _load(tmp_path, NODES)
    ssh = ssh_argv(config.nodes)
    assert ["-i", str(tmp_path / "keys/push")] == ssh[ssh.index("-i") : ssh.index("-i") + 2]
    assert "BatchMode=yes" in ssh and "StrictHostKeyChecking=yes" in ssh
    assert f"UserKnownHostsFile={tmp_path / 'keys/known_hosts'}" in ssh
    node = config.nodes.serving[0]
    argv = rsync_argv(config.nodes, node, ["/var/lib/x/./served.json"])
    assert argv[-2:] == ["/var/lib/x/./served.json", "policy-host@10.0.0.10:"]
    assert "--delete" in argv and "--relative" in argv and "--timeout=30" in argv


def test_a_nodes_server_blocks_name_its_own_certificate_paths(tmp_path: Path) -> None:
    config = _load(tmp_path, NODES)
    ams1 = config.nodes.serving[1]
    seen = node_config(config, ams1)
    assert seen.acme.config_dir == Path("/srv/node/current")
    assert seen.nginx.snippet == Path("/etc/nginx/snippets/tenant.conf")
    assert dataclasses.replace(seen, acme=config.acme, nginx=config.nginx) == config


def test_the_nodes_get_server_blocks_for_the_copied_certificates_only(tmp_path: Path) -> None:
    """`apply` runs as the service user: it reads the copy `certs` made,
    never certbot's own folder (root's)."""
    from policy_host.nodes.bundle import served_hosts, write_node_conf
    from policy_host.nodes.certcopy import copy_dir
    from policy_host.serve.compiler import compile_snapshot

    config = _load(tmp_path, NODES + "acme:\n  config_dir: letsencrypt\n")
    assert config.acme.config_dir == tmp_path / "letsencrypt"
    config.tenants_dir.mkdir(parents=True, exist_ok=True)
    for domain in ("a.example", "b.example"):
        (config.tenants_dir / f"{domain}.yaml").write_text("mode: none\nmax_age: 86400\n")
    compile_snapshot(config)
    # certbot's folder has both; only a.example was copied for the nodes.
    for base, domains in ((config.acme.config_dir, ("a", "b")), (copy_dir(config), ("a",))):
        for name in domains:
            live = base / "live" / f"mta-sts.{name}.example"
            live.mkdir(parents=True)
            (live / "fullchain.pem").write_text("chain")
            (live / "privkey.pem").write_text("key")
    hosts = served_hosts(config)
    assert hosts == ["mta-sts.a.example"]
    fra1 = config.nodes.serving[0]
    conf = write_node_conf(config, fra1, hosts).read_text()
    assert (
        f"ssl_certificate_key {DEFAULT_NODE_ROOT}/current/live/mta-sts.a.example/privkey.pem;"
        in conf
    )
    assert "mta-sts.b.example" not in conf


def test_nodes_without_serving_nodes_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from policy_host.cli.main import main

    config = _load(tmp_path, "")
    assert main(["--config", str(config.path), "nodes"]) == 2
    assert "no serving nodes" in capsys.readouterr().err


def test_nodes_names_a_node_whose_app_does_not_answer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from policy_host.cli.main import main

    # Nothing listens on port 1 of loopback: refused at once (and nothing
    # is sent off this machine).
    text = NODES.replace("app: 10.0.0.10:8080", "app: 127.0.0.1:1")
    config = _load(tmp_path, text.replace("app: 10.0.1.10:8080", "app: 127.0.0.1:1"))
    assert main(["--config", str(config.path), "nodes", "--push", "nosuch"]) == 2
    assert "no serving node named nosuch (known: fra1, ams1)" in capsys.readouterr().err
    assert main(["--config", str(config.path), "nodes", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    fra1 = report["nodes"][0]
    assert (fra1["name"], fra1["up_to_date"], fra1["snapshot"]) == ("fra1", False, None)
    assert "its app at 127.0.0.1:1 does not answer" in fra1["problem"]
    assert report["ok"] is False
