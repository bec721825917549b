"""The provider config: where tenants live and the provider's own names.

Looked up from ``--config``, then ``$POLICY_HOST_CONFIG``, then
``/etc/policy-host/config.yaml``. Relative paths in it are relative to the
config file's folder, so an example tree can be run from anywhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, Problem
from .model import InvalidValue, hostname
from .schema import Fields
from .yamlfile import parse_mapping, read_limited

DEFAULT_CONFIG = Path("/etc/policy-host/config.yaml")
CONFIG_ENV = "POLICY_HOST_CONFIG"
MAX_CONFIG_BYTES = 256 * 1024

# Defaults live here and nowhere else.
DEFAULT_BIND = "127.0.0.1:8080"
DEFAULT_WORKERS = 2
DEFAULT_THREADS = 4
DEFAULT_STATE_DIR = "/var/lib/policy-host"


@dataclass(frozen=True)
class ServeSettings:
    bind: str = DEFAULT_BIND
    workers: int = DEFAULT_WORKERS
    threads: int = DEFAULT_THREADS


@dataclass(frozen=True)
class ProviderConfig:
    path: Path
    tenants_dir: Path
    state_dir: Path
    # The name every customer's mta-sts.<domain> CNAME points at.
    policy_host: str
    # The zone holding <domain>.<id_zone> TXT records (RFC 8461 section 3.1).
    id_zone: str
    serve: ServeSettings

    @property
    def snapshot_path(self) -> Path:
        """The compiled set of served policies (see ``snapshot``)."""
        return self.state_dir / "served.json"

    @property
    def pidfile(self) -> Path:
        return self.state_dir / "gunicorn.pid"

    def id_record_target(self, domain: str) -> str:
        """Where ``_mta-sts.<domain>`` points: the TXT name the provider owns."""
        return f"{domain}.{self.id_zone}"


def config_path(explicit: str | None) -> Path:
    if explicit:
        return Path(explicit)
    from_env = os.environ.get(CONFIG_ENV)
    return Path(from_env) if from_env else DEFAULT_CONFIG


def _bind(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if text.startswith("unix:"):
        return text
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidValue(f"serve.bind: expected HOST:PORT or unix:PATH (got {text!r})")
    return text


def parse_bind(text: str) -> str:
    """Check a ``HOST:PORT`` or ``unix:PATH`` bind address (for ``--bind``)."""
    return _bind(text)


def load_config(path: Path) -> ProviderConfig:
    """Read and check the provider config; raise ``ConfigError`` with every problem."""
    data = read_limited(path, MAX_CONFIG_BYTES)
    if isinstance(data, Problem):
        raise ConfigError(data)
    entries, problems = parse_mapping(path, data)
    if entries is None:
        raise ConfigError(problems)
    fields = Fields(
        path,
        entries,
        ("tenants_dir", "state_dir", "policy_host", "id_zone", "serve"),
        problems,
    )
    base = path.parent
    tenants_dir = fields.text("tenants_dir", required=True)
    state_dir = fields.text("state_dir") or DEFAULT_STATE_DIR
    names: dict[str, str] = {}
    for key in ("policy_host", "id_zone"):
        value = fields.text(key, required=True)
        if value is None:
            continue
        try:
            # The id zone's first label is usually "_mta-sts"; check the rest
            # as a host name and the underscore label on its own.
            head, _, rest = value.partition(".")
            if key == "id_zone" and head.startswith("_") and rest:
                names[key] = head.lower() + "." + hostname(rest, what=key).ascii
            else:
                names[key] = hostname(value, what=key).ascii
        except InvalidValue as exc:
            fields.error(fields.line(key), str(exc))
    serve = ServeSettings()
    serve_fields = fields.mapping("serve", ("bind", "workers", "threads"))
    if serve_fields is not None:
        bind = serve_fields.text("bind") or DEFAULT_BIND
        try:
            _bind(bind)
        except InvalidValue as exc:
            serve_fields.error(serve_fields.line("bind"), str(exc))
        counts: dict[str, int] = {}
        for key, default in (("workers", DEFAULT_WORKERS), ("threads", DEFAULT_THREADS)):
            count = serve_fields.integer(key)
            if count is not None and not 1 <= count <= 256:
                serve_fields.error(
                    serve_fields.line(key), f"serve.{key}: expected 1..256 (got {count})"
                )
            counts[key] = count if count is not None else default
        serve = ServeSettings(bind, counts["workers"], counts["threads"])
    if any(p.is_error for p in problems) or tenants_dir is None:
        raise ConfigError(problems)
    return ProviderConfig(
        path=path,
        tenants_dir=Path(os.path.normpath(base / tenants_dir)),
        state_dir=(base / state_dir).resolve(),
        policy_host=names["policy_host"],
        id_zone=names["id_zone"],
        serve=serve,
    )
