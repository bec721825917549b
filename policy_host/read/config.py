"""The provider config: where tenants live and the provider's own names.

Looked up from ``--config``, then ``$POLICY_HOST_CONFIG``, then
``/etc/policy-host/config.yaml``. Relative paths in it are relative to the
config file's folder, so an example tree can be run from anywhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from policy_host.errors import ConfigError, Problem
from policy_host.model import MAX_AGE_LIMIT, InvalidValue, hostname
from policy_host.read import authoritative as authoritative_section
from policy_host.read.acme import (
    ACME_KEYS,
    NGINX_KEYS,
    AcmeSettings,
    NginxSettings,
    read_acme,
    read_nginx,
)
from policy_host.read.authoritative import AuthoritativeSettings
from policy_host.read.nodes import KEYS as NODES_KEYS
from policy_host.read.nodes import NodeSettings, read_nodes
from policy_host.read.promotion import KEYS as PROMOTE_KEYS
from policy_host.read.promotion import PromoteSettings, read_settings
from policy_host.read.schema import Fields
from policy_host.read.tlsrpt import KEYS as TLSRPT_KEYS
from policy_host.read.tlsrpt import TlsrptSettings, read_tlsrpt
from policy_host.read.values import parse_bind, ranged, server
from policy_host.read.yamlfile import parse_mapping, read_limited

DEFAULT_CONFIG = Path("/etc/policy-host/config.yaml")
CONFIG_ENV = "POLICY_HOST_CONFIG"
MAX_CONFIG_BYTES = 256 * 1024

# The defaults of the sections read here (each other section keeps its own
# in its module under read/).
DEFAULT_BIND = "127.0.0.1:8080"
DEFAULT_WORKERS = 2
DEFAULT_THREADS = 4
DEFAULT_STATE_DIR = "/var/lib/policy-host"
DEFAULT_TSIG_ALGORITHM = "hmac-sha256"
TSIG_ALGORITHMS = ("hmac-sha256", "hmac-sha384", "hmac-sha512", "hmac-sha224", "hmac-sha1")
DEFAULT_TXT_TTL = 300
DEFAULT_DNS_TIMEOUT = 5.0
DEFAULT_VERIFY_TIMEOUT = 10.0
DEFAULT_WITHDRAWAL_MAX_AGE = 86_400
DEFAULT_CAA_ISSUERS = ("letsencrypt.org",)
DEFAULT_CHECK_CONCURRENCY = 100


@dataclass(frozen=True)
class ServeSettings:
    bind: str = DEFAULT_BIND
    workers: int = DEFAULT_WORKERS
    threads: int = DEFAULT_THREADS


@dataclass(frozen=True)
class DnsSettings:
    # Recursive resolver for `check` (host, port); None: the system's.
    resolver: tuple[str, int] | None = None
    # The provider's primary server that takes RFC 2136 UPDATEs from `apply`.
    primary: tuple[str, int] | None = None
    # TSIG key (BIND `key "name" { algorithm ...; secret "..."; };` format).
    tsig_key_file: Path | None = None
    tsig_algorithm: str = DEFAULT_TSIG_ALGORITHM
    txt_ttl: int = DEFAULT_TXT_TTL
    timeout: float = DEFAULT_DNS_TIMEOUT


@dataclass(frozen=True)
class ApplySettings:
    # Base URLs whose answers must carry a new policy before its id is
    # published (RFC 8461 section 8); empty: the serve.bind address.
    upstreams: tuple[str, ...] = ()
    verify_timeout: float = DEFAULT_VERIFY_TIMEOUT
    # max_age of the `mode: none` policy served while a removed tenant is
    # withdrawn.
    withdrawal_max_age: int = DEFAULT_WITHDRAWAL_MAX_AGE


@dataclass(frozen=True)
class CheckSettings:
    # CAA issuer domains of the CA certificates come from (RFC 8659).
    caa_issuers: tuple[str, ...] = DEFAULT_CAA_ISSUERS
    concurrency: int = DEFAULT_CHECK_CONCURRENCY


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
    dns: DnsSettings = DnsSettings()
    apply: ApplySettings = ApplySettings()
    check: CheckSettings = CheckSettings()
    acme: AcmeSettings = field(default_factory=AcmeSettings)
    nginx: NginxSettings = field(default_factory=NginxSettings)
    tlsrpt: TlsrptSettings = field(default_factory=TlsrptSettings)
    promote: PromoteSettings = field(default_factory=PromoteSettings)
    authoritative: AuthoritativeSettings = field(default_factory=AuthoritativeSettings)
    # Serving nodes `apply` pushes to (none: this box serves alone).
    nodes: NodeSettings = field(default_factory=NodeSettings)

    @property
    def results_db(self) -> Path:
        """The latest `check` and `certs` results, and promotion and guard events."""
        return self.state_dir / "results.sqlite3"

    @property
    def certs_db(self) -> Path:
        """`certs`' own database: order attempts and certificate expiry."""
        return self.state_dir / "certs.sqlite3"

    @property
    def reports_db(self) -> Path:
        """The TLS report store (``reports.store``): SQLite in WAL mode."""
        return self.state_dir / "reports.sqlite3"

    @property
    def state_db(self) -> Path:
        """The apply state (ids, fingerprints, history): SQLite."""
        return self.state_dir / "state.sqlite3"

    @property
    def upstreams(self) -> tuple[str, ...]:
        """Where `apply` verifies served bytes before publishing an id."""
        if self.apply.upstreams:
            return self.apply.upstreams
        return (f"http://{self.serve.bind}",) if not self.serve.bind.startswith("unix:") else ()

    @property
    def snapshot_path(self) -> Path:
        """The compiled set of served policies (see ``snapshot``)."""
        return self.state_dir / "served.json"

    @property
    def pidfile(self) -> Path:
        return self.state_dir / "gunicorn.pid"

    @property
    def www_dir(self) -> Path:
        """One file per served policy, named by host, that nginx serves by
        itself (see ``static``; nginx/policy-host-tenant.conf)."""
        return self.state_dir / "www"

    @property
    def parse_cache_path(self) -> Path:
        """What each tenant file parsed to, by file identity (``parsecache``)."""
        return self.state_dir / "parse-cache.json"

    def id_record_target(self, domain: str) -> str:
        """Where ``_mta-sts.<domain>`` points: the TXT name the provider owns."""
        return f"{domain}.{self.id_zone}"

    def tlsrpt_record_target(self, domain: str) -> str | None:
        """Where a customer's ``_smtp._tls.<domain>`` CNAME points when we
        host its TLS-RPT record; None without ``tlsrpt.zone``."""
        zone = self.tlsrpt.zone
        return f"{domain}.{zone}" if zone is not None else None


def config_path(explicit: str | None) -> Path:
    if explicit:
        return Path(explicit)
    from_env = os.environ.get(CONFIG_ENV)
    return Path(from_env) if from_env else DEFAULT_CONFIG


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
        (
            "tenants_dir",
            "state_dir",
            "policy_host",
            "id_zone",
            "serve",
            "dns",
            "apply",
            "check",
            "acme",
            "nginx",
            "tlsrpt",
            "promote",
            "authoritative",
            "nodes",
        ),
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
            parse_bind(bind)
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
    dns = _dns_settings(fields.mapping("dns", _DNS_KEYS), base)
    apply = _apply_settings(fields.mapping("apply", _APPLY_KEYS))
    check = _check_settings(fields.mapping("check", _CHECK_KEYS))
    acme = read_acme(fields.mapping("acme", ACME_KEYS), base, "acme" in fields.entries)
    nginx = read_nginx(fields.mapping("nginx", NGINX_KEYS), base)
    tlsrpt = read_tlsrpt(fields.mapping("tlsrpt", TLSRPT_KEYS))
    promote = read_settings(fields.mapping("promote", PROMOTE_KEYS), PromoteSettings())
    authoritative = authoritative_section.read_settings(
        fields.mapping("authoritative", authoritative_section.KEYS)
    )
    nodes = read_nodes(fields.mapping("nodes", NODES_KEYS), base)
    if any(p.is_error for p in problems) or tenants_dir is None:
        raise ConfigError(problems)
    assert dns is not None and apply is not None and check is not None
    assert acme is not None and nginx is not None and tlsrpt is not None
    assert authoritative is not None
    assert nodes is not None
    return ProviderConfig(
        path=path,
        tenants_dir=Path(os.path.normpath(base / tenants_dir)),
        state_dir=(base / state_dir).resolve(),
        policy_host=names["policy_host"],
        id_zone=names["id_zone"],
        serve=serve,
        dns=dns,
        apply=apply,
        check=check,
        acme=acme,
        nginx=nginx,
        tlsrpt=tlsrpt,
        promote=promote,
        authoritative=authoritative,
        nodes=nodes,
    )


_DNS_KEYS = ("resolver", "primary", "tsig_key_file", "tsig_algorithm", "txt_ttl", "timeout")
_APPLY_KEYS = ("upstreams", "verify_timeout", "withdrawal_max_age")
_CHECK_KEYS = ("caa_issuers", "concurrency")


def _dns_settings(fields: Fields | None, base: Path) -> DnsSettings | None:
    if fields is None:
        return None
    key_file = fields.text("tsig_key_file")
    algorithm = fields.text("tsig_algorithm") or DEFAULT_TSIG_ALGORITHM
    if algorithm not in TSIG_ALGORITHMS:
        fields.error(
            fields.line("tsig_algorithm"),
            f"dns.tsig_algorithm: expected one of {', '.join(TSIG_ALGORITHMS)} (got {algorithm!r})",
        )
    return DnsSettings(
        resolver=server(fields, "resolver"),
        primary=server(fields, "primary"),
        tsig_key_file=(base / key_file) if key_file else None,
        tsig_algorithm=algorithm,
        txt_ttl=ranged(fields, "txt_ttl", 0, 86_400, DEFAULT_TXT_TTL),
        timeout=float(ranged(fields, "timeout", 1, 60, int(DEFAULT_DNS_TIMEOUT))),
    )


def _apply_settings(fields: Fields | None) -> ApplySettings | None:
    if fields is None:
        return None
    upstreams = []
    for text, line in fields.text_list("upstreams", allow_single=True) or []:
        if not text.startswith(("http://", "https://")) or len(text) < 10:
            fields.error(
                line, f"apply.upstreams: expected an http:// or https:// URL (got {text!r})"
            )
        else:
            upstreams.append(text.rstrip("/"))
    return ApplySettings(
        upstreams=tuple(upstreams),
        verify_timeout=float(ranged(fields, "verify_timeout", 1, 600, int(DEFAULT_VERIFY_TIMEOUT))),
        withdrawal_max_age=ranged(
            fields, "withdrawal_max_age", 0, MAX_AGE_LIMIT, DEFAULT_WITHDRAWAL_MAX_AGE
        ),
    )


def _check_settings(fields: Fields | None) -> CheckSettings | None:
    if fields is None:
        return None
    issuers = []
    for text, line in fields.text_list("caa_issuers", allow_single=True) or []:
        try:
            issuers.append(hostname(text, what="check.caa_issuers").ascii)
        except InvalidValue as exc:
            fields.error(line, str(exc))
    return CheckSettings(
        caa_issuers=tuple(issuers) or DEFAULT_CAA_ISSUERS,
        concurrency=ranged(fields, "concurrency", 1, 10_000, DEFAULT_CHECK_CONCURRENCY),
    )
