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
from policy_host.read.authoritative import AuthoritativeSettings
from policy_host.read.nodes import KEYS as NODES_KEYS
from policy_host.read.nodes import NodeSettings, read_nodes
from policy_host.read.promotion import KEYS as PROMOTE_KEYS
from policy_host.read.promotion import PromoteSettings, read_settings
from policy_host.read.schema import Fields
from policy_host.read.yamlfile import parse_mapping, read_limited

DEFAULT_CONFIG = Path("/etc/policy-host/config.yaml")
CONFIG_ENV = "POLICY_HOST_CONFIG"
MAX_CONFIG_BYTES = 256 * 1024

# Defaults live here and nowhere else.
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
DEFAULT_ACME_DIRECTORY = "https://acme-v02.api.letsencrypt.org/directory"
DEFAULT_ACME_WEBROOT = "/var/www/policy-host-acme"
DEFAULT_CERTBOT = "certbot"
DEFAULT_CERTBOT_CONFIG_DIR = "/etc/letsencrypt"
DEFAULT_CERTBOT_WORK_DIR = "/var/lib/letsencrypt"
DEFAULT_CERTBOT_LOGS_DIR = "/var/log/letsencrypt"
# Let's Encrypt allows 300 new orders per account per 3 hours; stay well below.
DEFAULT_ORDERS_PER_HOUR = 30
DEFAULT_ACME_BACKOFF = 86_400
DEFAULT_NGINX_TENANTS_CONF = "/etc/nginx/policy-host/tenants.conf"
DEFAULT_NGINX_SNIPPET = "/etc/nginx/snippets/policy-host-tenant.conf"
DEFAULT_NGINX_TEST = "nginx -t -q"
DEFAULT_NGINX_RELOAD = "systemctl reload nginx"
# TLS reports (RFC 8460). Mail without a DKIM signature that counts is kept
# aside (`require`, as section 3 asks) or counted as unverified (`record`).
UNVERIFIED_MAIL_CHOICES = ("require", "record")
DEFAULT_UNVERIFIED_MAIL = "require"
DEFAULT_REPORT_RETENTION_DAYS = 400
DEFAULT_RAW_RETENTION_DAYS = 30
# "A commonly observed receiver limit is ten megabytes" (RFC 8460 section 5.3).
DEFAULT_MAX_REPORT_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_FAILURE_RATE = 0.05
DEFAULT_MIN_SESSIONS = 100


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
class AcmeSettings:
    """How `certs` runs certbot (one certificate per mta-sts.<domain>)."""

    directory: str = DEFAULT_ACME_DIRECTORY
    # The config has an `acme` section: `certs` gets the certificates, and
    # `apply` publishes a new tenant's first id only once it has one.
    configured: bool = False
    # PEM bundle of the CA(s) to trust for the ACME server's own HTTPS
    # listener (a private or test CA); None: the system's store.
    ca_bundle: Path | None = None
    # Account contact; None registers without one.
    email: str | None = None
    # Served by nginx on port 80 for /.well-known/acme-challenge/ of any host.
    webroot: Path = Path(DEFAULT_ACME_WEBROOT)
    certbot: tuple[str, ...] = (DEFAULT_CERTBOT,)
    config_dir: Path = Path(DEFAULT_CERTBOT_CONFIG_DIR)
    work_dir: Path = Path(DEFAULT_CERTBOT_WORK_DIR)
    logs_dir: Path = Path(DEFAULT_CERTBOT_LOGS_DIR)
    # New certificate orders at most this many per hour (all hosts together).
    orders_per_hour: int = DEFAULT_ORDERS_PER_HOUR
    # After a failed order, at most one attempt per host per this many seconds.
    backoff: int = DEFAULT_ACME_BACKOFF


@dataclass(frozen=True)
class NginxSettings:
    """Where `certs`/`nginx-conf` write the per-tenant server blocks."""

    tenants_conf: Path = Path(DEFAULT_NGINX_TENANTS_CONF)
    # Included by every generated server block (listen, TLS, proxy settings).
    snippet: Path = Path(DEFAULT_NGINX_SNIPPET)
    test_command: tuple[str, ...] = tuple(DEFAULT_NGINX_TEST.split())
    reload_command: tuple[str, ...] = tuple(DEFAULT_NGINX_RELOAD.split())


@dataclass(frozen=True)
class TlsrptSettings:
    """Receiving the customers' TLS reports (docs/reports.md)."""

    # The report destinations we run: mailto: and/or https: URIs; they go in
    # the rua= of every hosted _smtp._tls record.
    rua: tuple[str, ...] = ()
    # The zone holding hosted TLS-RPT records (<domain>.<zone> TXT).
    zone: str | None = None
    unverified_mail: str = DEFAULT_UNVERIFIED_MAIL
    retention_days: int = DEFAULT_REPORT_RETENTION_DAYS
    # Inputs that made no report (refused, foreign, unverified, not a report).
    raw_retention_days: int = DEFAULT_RAW_RETENTION_DAYS
    # Cap on a body as received and on the report once decompressed.
    max_report_bytes: int = DEFAULT_MAX_REPORT_BYTES
    # `reports` exits 1 when a tenant fails more than this share of sessions
    # (counted only from min_sessions sessions on), or on any failure that is
    # about the policy host itself.
    max_failure_rate: float = DEFAULT_MAX_FAILURE_RATE
    min_sessions: int = DEFAULT_MIN_SESSIONS

    @property
    def hosted(self) -> bool:
        """Does `apply` publish hosted _smtp._tls records (a zone for them
        and our rua to put in them)?"""
        return self.zone is not None and bool(self.rua)

    @property
    def https_paths(self) -> tuple[str, ...]:
        """The URL paths of the https: destinations (the POST route)."""
        import urllib.parse

        return tuple(
            urllib.parse.urlsplit(uri).path or "/"
            for uri in self.rua
            if uri.lower().startswith("https:")
        )


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
    acme: AcmeSettings = AcmeSettings()
    nginx: NginxSettings = NginxSettings()
    tlsrpt: TlsrptSettings = TlsrptSettings()
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


def _bind(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if text.startswith("unix:"):
        return text
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidValue(f"serve.bind: expected HOST:PORT or unix:PATH (got {text!r})")
    return text


def parse_server(text: str, default_port: int = 53) -> tuple[str, int]:
    """``IP``, ``IP:PORT`` or ``[IPv6]:PORT`` -> (address, port)."""
    import ipaddress

    host, port = text, str(default_port)
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise InvalidValue(f"expected IP, IP:PORT or [IPv6]:PORT (got {text!r})")
        port = rest[1:] or port
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise InvalidValue(f"expected an IP address (got {host!r})") from None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidValue(f"expected a port 1..65535 (got {port!r})")
    return host, int(port)


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
    dns = _dns_settings(fields.mapping("dns", _DNS_KEYS), base)
    apply = _apply_settings(fields.mapping("apply", _APPLY_KEYS))
    check = _check_settings(fields.mapping("check", _CHECK_KEYS))
    acme = _acme_settings(fields.mapping("acme", _ACME_KEYS), base, "acme" in fields.entries)
    nginx = _nginx_settings(fields.mapping("nginx", _NGINX_KEYS), base)
    tlsrpt = _tlsrpt_settings(fields.mapping("tlsrpt", _TLSRPT_KEYS))
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


def _ranged(fields: Fields, key: str, low: int, high: int, default: int) -> int:
    value = fields.integer(key)
    if value is None:
        return default
    if not low <= value <= high:
        fields.error(
            fields.line(key), f"{fields.prefix}{key}: expected {low}..{high} (got {value})"
        )
        return default
    return value


def _server(fields: Fields, key: str) -> tuple[str, int] | None:
    text = fields.text(key)
    if text is None:
        return None
    try:
        return parse_server(text)
    except InvalidValue as exc:
        fields.error(fields.line(key), f"{fields.prefix}{key}: {exc}")
        return None


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
        resolver=_server(fields, "resolver"),
        primary=_server(fields, "primary"),
        tsig_key_file=(base / key_file) if key_file else None,
        tsig_algorithm=algorithm,
        txt_ttl=_ranged(fields, "txt_ttl", 0, 86_400, DEFAULT_TXT_TTL),
        timeout=float(_ranged(fields, "timeout", 1, 60, int(DEFAULT_DNS_TIMEOUT))),
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
        verify_timeout=float(
            _ranged(fields, "verify_timeout", 1, 600, int(DEFAULT_VERIFY_TIMEOUT))
        ),
        withdrawal_max_age=_ranged(
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
        concurrency=_ranged(fields, "concurrency", 1, 10_000, DEFAULT_CHECK_CONCURRENCY),
    )


_ACME_KEYS = (
    "directory",
    "ca_bundle",
    "email",
    "webroot",
    "certbot",
    "config_dir",
    "work_dir",
    "logs_dir",
    "orders_per_hour",
    "backoff",
)
_NGINX_KEYS = ("tenants_conf", "snippet", "test_command", "reload_command")


def _command(fields: Fields, key: str, default: str) -> tuple[str, ...]:
    """A command line written as one string (split like a shell would)."""
    import shlex

    text = fields.text(key) or default
    try:
        argv = tuple(shlex.split(text))
    except ValueError as exc:
        fields.error(fields.line(key), f"{fields.prefix}{key}: {exc} (got {text!r})")
        return tuple(default.split())
    if not argv:
        fields.error(fields.line(key), f"{fields.prefix}{key}: expected a command")
        return tuple(default.split())
    return argv


def _path(fields: Fields, key: str, default: str, base: Path) -> Path:
    return base / (fields.text(key) or default)


def _acme_settings(fields: Fields | None, base: Path, configured: bool) -> AcmeSettings | None:
    if fields is None:
        return None
    directory = fields.text("directory") or DEFAULT_ACME_DIRECTORY
    if not directory.startswith(("https://", "http://")):
        fields.error(
            fields.line("directory"),
            f"acme.directory: expected the ACME directory URL (got {directory!r})",
        )
    ca_bundle = fields.text("ca_bundle")
    email = fields.text("email")
    if email is not None:
        local, at, domain = email.rpartition("@")
        if not at or not local or "." not in domain or any(c in email for c in " ,;<>"):
            fields.error(fields.line("email"), f"acme.email: expected name@domain (got {email!r})")
    return AcmeSettings(
        configured=configured,
        directory=directory,
        ca_bundle=(base / ca_bundle) if ca_bundle else None,
        email=email,
        webroot=_path(fields, "webroot", DEFAULT_ACME_WEBROOT, base),
        certbot=_command(fields, "certbot", DEFAULT_CERTBOT),
        config_dir=_path(fields, "config_dir", DEFAULT_CERTBOT_CONFIG_DIR, base),
        work_dir=_path(fields, "work_dir", DEFAULT_CERTBOT_WORK_DIR, base),
        logs_dir=_path(fields, "logs_dir", DEFAULT_CERTBOT_LOGS_DIR, base),
        orders_per_hour=_ranged(fields, "orders_per_hour", 1, 10_000, DEFAULT_ORDERS_PER_HOUR),
        backoff=_ranged(fields, "backoff", 0, MAX_AGE_LIMIT, DEFAULT_ACME_BACKOFF),
    )


def _nginx_settings(fields: Fields | None, base: Path) -> NginxSettings | None:
    if fields is None:
        return None
    return NginxSettings(
        tenants_conf=_path(fields, "tenants_conf", DEFAULT_NGINX_TENANTS_CONF, base),
        snippet=_path(fields, "snippet", DEFAULT_NGINX_SNIPPET, base),
        test_command=_command(fields, "test_command", DEFAULT_NGINX_TEST),
        reload_command=_command(fields, "reload_command", DEFAULT_NGINX_RELOAD),
    )


_TLSRPT_KEYS = (
    "rua",
    "zone",
    "unverified_mail",
    "retention_days",
    "raw_retention_days",
    "max_report_bytes",
    "max_failure_rate",
    "min_sessions",
)


def _tlsrpt_settings(fields: Fields | None) -> TlsrptSettings | None:
    if fields is None:
        return None
    from policy_host.model import check_rua

    rua = []
    for text, line in fields.text_list("rua", allow_single=True) or []:
        try:
            rua.append(check_rua(text))
        except InvalidValue as exc:
            fields.error(line, f"tlsrpt.rua: {exc}")
    zone = fields.text("zone")
    if zone is not None:
        try:
            # Usually "_smtp._tls.provider.example": underscore labels first.
            plain = [label for label in zone.split(".") if not label.startswith("_")]
            hostname(".".join(plain), what="tlsrpt.zone")
            zone = zone.lower()
        except InvalidValue as exc:
            fields.error(fields.line("zone"), str(exc))
    unverified = fields.text("unverified_mail") or DEFAULT_UNVERIFIED_MAIL
    if unverified not in UNVERIFIED_MAIL_CHOICES:
        fields.error(
            fields.line("unverified_mail"),
            f"tlsrpt.unverified_mail: expected one of {', '.join(UNVERIFIED_MAIL_CHOICES)} "
            f"(got {unverified!r})",
        )
    rate = fields.entries.get("max_failure_rate")
    max_rate = DEFAULT_MAX_FAILURE_RATE
    if rate is not None:
        if isinstance(rate.value, bool) or not isinstance(rate.value, int | float):
            fields.error(rate.line, "tlsrpt.max_failure_rate: expected a number 0..1")
        elif not 0 <= rate.value <= 1:
            fields.error(rate.line, f"tlsrpt.max_failure_rate: expected 0..1 (got {rate.value})")
        else:
            max_rate = float(rate.value)
    return TlsrptSettings(
        rua=tuple(rua),
        zone=zone,
        unverified_mail=unverified,
        retention_days=_ranged(fields, "retention_days", 1, 36_500, DEFAULT_REPORT_RETENTION_DAYS),
        raw_retention_days=_ranged(
            fields, "raw_retention_days", 1, 36_500, DEFAULT_RAW_RETENTION_DAYS
        ),
        max_report_bytes=_ranged(
            fields, "max_report_bytes", 1024, 1024**3, DEFAULT_MAX_REPORT_BYTES
        ),
        max_failure_rate=max_rate,
        min_sessions=_ranged(fields, "min_sessions", 0, 10**9, DEFAULT_MIN_SESSIONS),
    )
