"""What a serving node needs, as files on the control node (pure-ish).

A node serves exactly what the control node serves: the snapshot and its
change journal (the app), the policy files (nginx serves them by itself),
one server block per hosted name with a certificate, and those
certificates and keys (certbot's ``live`` and ``archive``, as `certs`
copied them for the service user, ``certcopy``; ``live`` holds relative
links into ``archive``, pushed as links). Only the server blocks
differ per node: their certificate paths and snippet are the node's own,
so the control node writes one file per node under
``<state_dir>/nodes/<name>/nginx/``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from policy_host.certs.nginxconf import has_certificate, policy_host_name, render_conf
from policy_host.fileio import replace_file
from policy_host.nodes.certcopy import copy_dir
from policy_host.read.config import ProviderConfig
from policy_host.read.nodes import Node
from policy_host.serve.journal import journal_path
from policy_host.serve.snapshot import read_snapshot

# Inside a release on the node (``current`` links to the release in use).
CURRENT = "current"
NGINX_DIR = "nginx"
TENANTS_CONF = "tenants.conf"


def node_config(config: ProviderConfig, node: Node) -> ProviderConfig:
    """``config`` as the node's generated server blocks must see it: the
    certificates under the node's ``current`` release, its own snippet."""
    acme = dataclasses.replace(config.acme, config_dir=Path(node.path) / CURRENT)
    nginx = dataclasses.replace(config.nginx, snippet=Path(node.snippet))
    return dataclasses.replace(config, acme=acme, nginx=nginx)


def served_hosts(config: ProviderConfig) -> list[str]:
    """The served names whose certificate `certs` copied for the nodes
    (certbot's own folder is root's; `apply` reads the copy)."""
    snapshot = read_snapshot(config.snapshot_path)
    domains = sorted(snapshot.entries) if snapshot is not None else []
    copied = dataclasses.replace(config.acme, config_dir=copy_dir(config))
    hosts = (policy_host_name(domain) for domain in domains)
    return [host for host in hosts if has_certificate(copied, host)]


def node_dir(config: ProviderConfig, node: Node) -> Path:
    return config.state_dir / "nodes" / node.name


def write_node_conf(config: ProviderConfig, node: Node, hosts: list[str]) -> Path:
    """Write the node's server blocks (only when they changed, atomically,
    so an unchanged file keeps its mtime and rsync skips it)."""
    path = node_dir(config, node) / NGINX_DIR / TENANTS_CONF
    new = render_conf(node_config(config, node), hosts)
    try:
        if path.read_bytes() == new:
            return path
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
    replace_file(path, new)
    os.chmod(path, 0o644)
    return path


def sources(config: ProviderConfig, node: Node) -> list[str]:
    """rsync's sources, each ``base/./name`` (``--relative`` keeps ``name``
    as the path in the release); what does not exist yet is left out."""
    state = config.state_dir
    candidates = [
        (state, config.snapshot_path.name),
        (state, journal_path(config.snapshot_path).name),
        (state, config.www_dir.name + "/"),
        (node_dir(config, node), NGINX_DIR + "/"),
        (copy_dir(config), "live/"),
        (copy_dir(config), "archive/"),
    ]
    return [f"{base}/./{name}" for base, name in candidates if (base / name).exists()]
