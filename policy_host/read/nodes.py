"""The provider config's ``nodes:`` section: the serving nodes `apply` pushes to.

One control node (where the tenant files, the state, `apply` and `certs`
run) and any number of serving nodes that run nginx and the app from what
the control node pushes to them (``policy_host.nodes``). Without a
``nodes:`` section the control node is the only one, as on a single box.

    nodes:
      ssh_key: /etc/policy-host/node-push.key      # private key for the pushes
      known_hosts: /etc/policy-host/node-known-hosts
      ca_file: /etc/ssl/certs/ca-certificates.crt  # to check the nodes' certificates
      timeout: 60                                  # seconds for one push
      serving:
        - name: fra1
          address: 198.51.100.10        # where senders connect (HTTPS, port 443)
          ssh: policy-host@10.0.0.10    # the ssh destination of the pushes
          app: 10.0.0.10:8080           # the node app's private listener
          path: /var/lib/policy-host-node
          drained: true                 # out of DNS: skipped by apply
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from policy_host.model import InvalidValue
from policy_host.read.schema import Fields

DEFAULT_NODE_ROOT = "/var/lib/policy-host-node"
DEFAULT_NODE_SNIPPET = "/etc/nginx/snippets/policy-host-tenant.conf"
DEFAULT_PUSH_TIMEOUT = 60
KEYS = ("ssh_key", "known_hosts", "ca_file", "timeout", "serving")
NODE_KEYS = ("name", "address", "ssh", "app", "path", "snippet", "drained")

_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?\Z")
# user@host: a login name and a host name or address, nothing ssh would
# read as an option or a command.
_SSH = re.compile(r"[a-z_][a-z0-9_-]{0,31}@[A-Za-z0-9.:-]{1,253}\Z")
_ABSOLUTE = re.compile(r"/[A-Za-z0-9._/@+-]*\Z")


@dataclass(frozen=True)
class Node:
    """One serving node."""

    name: str
    # Where senders reach it: (address, port) of its HTTPS listener.
    address: tuple[str, int]
    # ssh destination (user@host) whose key runs only the node's receiver.
    ssh: str
    # The node app's private listener (HOST:PORT): it says which snapshot
    # each worker holds (serve.web.SNAPSHOT_PATH).
    app: str
    # The receiver's folder on the node (releases, ``current``); the
    # generated nginx config names certificates under it.
    path: str = DEFAULT_NODE_ROOT
    # The node's copy of nginx/policy-host-tenant.conf.
    snippet: str = DEFAULT_NODE_SNIPPET
    # Taken out of DNS: `apply` neither pushes to it nor waits for it.
    drained: bool = False

    @property
    def https_url(self) -> str:
        host, port = self.address
        shown = f"[{host}]" if ":" in host else host
        return f"https://{shown}:{port}"


@dataclass(frozen=True)
class NodeSettings:
    serving: tuple[Node, ...] = ()
    ssh_key: Path | None = None
    known_hosts: Path | None = None
    # PEM bundle to check the nodes' certificates with; None: the system's.
    ca_file: Path | None = None
    timeout: float = float(DEFAULT_PUSH_TIMEOUT)

    @property
    def active(self) -> tuple[Node, ...]:
        """The nodes senders may reach: every one not drained."""
        return tuple(node for node in self.serving if not node.drained)


def read_nodes(fields: Fields | None, base: Path) -> NodeSettings | None:
    """The ``nodes:`` section, every problem added to ``fields``."""
    if fields is None:
        return None
    serving: list[Node] = []
    node = fields.entries.get("serving")
    items = node.value if node is not None else []
    if not isinstance(items, list):
        fields.error(fields.line("serving"), "nodes.serving: expected a list of nodes")
        items = []
    names: set[str] = set()
    for index, item in enumerate(items):
        if not isinstance(item.value, dict):
            fields.error(item.line, "nodes.serving: expected a mapping per node")
            continue
        one = Fields(fields.path, item.value, NODE_KEYS, fields.problems, prefix=f"nodes.{index}.")
        parsed = _node(one, item.line)
        if parsed is None:
            continue
        if parsed.name in names:
            fields.error(item.line, f"nodes.serving: the name {parsed.name!r} is used twice")
        names.add(parsed.name)
        serving.append(parsed)
    timeout = fields.integer("timeout")
    if timeout is not None and not 1 <= timeout <= 3600:
        fields.error(fields.line("timeout"), f"nodes.timeout: expected 1..3600 (got {timeout})")
        timeout = None
    paths = {key: fields.text(key) for key in ("ssh_key", "known_hosts", "ca_file")}
    if serving and paths["ssh_key"] is None:
        fields.error(fields.line("serving"), "nodes.ssh_key: required with serving nodes")
    return NodeSettings(
        serving=tuple(serving),
        ssh_key=base / paths["ssh_key"] if paths["ssh_key"] else None,
        known_hosts=base / paths["known_hosts"] if paths["known_hosts"] else None,
        ca_file=base / paths["ca_file"] if paths["ca_file"] else None,
        timeout=float(timeout if timeout is not None else DEFAULT_PUSH_TIMEOUT),
    )


def _node(one: Fields, line: int) -> Node | None:
    from policy_host.read.values import parse_bind, parse_server

    name = one.text("name", required=True, missing_line=line)
    address_text = one.text("address", required=True, missing_line=line)
    ssh = one.text("ssh", required=True, missing_line=line)
    app = one.text("app", required=True, missing_line=line)
    path = one.text("path") or DEFAULT_NODE_ROOT
    snippet = one.text("snippet") or DEFAULT_NODE_SNIPPET
    drained = one.entries.get("drained")
    if drained is not None and not isinstance(drained.value, bool):
        one.error(drained.line, f"{one.prefix}drained: expected true or false")
    ok = True
    if name is not None and not _NAME.match(name):
        one.error(one.line("name"), f"{one.prefix}name: expected a-z, 0-9 and '-' (got {name!r})")
        ok = False
    address: tuple[str, int] | None = None
    if address_text is not None:
        try:
            address = parse_server(address_text, default_port=443)
        except InvalidValue as exc:
            one.error(one.line("address"), f"{one.prefix}address: {exc}")
    if ssh is not None and not _SSH.match(ssh):
        one.error(one.line("ssh"), f"{one.prefix}ssh: expected user@host (got {ssh!r})")
        ok = False
    if app is not None:
        try:
            if app.startswith("unix:"):
                raise InvalidValue("a unix socket is not reachable from the control node")
            parse_bind(app)
        except InvalidValue as exc:
            one.error(one.line("app"), f"{one.prefix}app: {exc}")
            ok = False
    for key, value in (("path", path), ("snippet", snippet)):
        if not _ABSOLUTE.match(value):
            one.error(
                one.line(key),
                f"{one.prefix}{key}: expected an absolute path of letters, digits and ._/@+- "
                f"(got {value!r})",
            )
            ok = False
    if not ok or None in (name, address, ssh, app):
        return None
    assert name is not None and address is not None and ssh is not None and app is not None
    return Node(
        name=name,
        address=address,
        ssh=ssh,
        app=app,
        path=path.rstrip("/") or "/",
        snippet=snippet,
        drained=bool(drained.value) if drained is not None else False,
    )
