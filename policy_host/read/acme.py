"""The `acme` and `nginx` sections: how `certs` runs certbot and where the
per-tenant server blocks go."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from policy_host.model import MAX_AGE_LIMIT
from policy_host.read.schema import Fields
from policy_host.read.values import command, path_in, ranged

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


ACME_KEYS = (
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
NGINX_KEYS = ("tenants_conf", "snippet", "test_command", "reload_command")


def read_acme(fields: Fields | None, base: Path, configured: bool) -> AcmeSettings | None:
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
        webroot=path_in(fields, "webroot", DEFAULT_ACME_WEBROOT, base),
        certbot=command(fields, "certbot", DEFAULT_CERTBOT),
        config_dir=path_in(fields, "config_dir", DEFAULT_CERTBOT_CONFIG_DIR, base),
        work_dir=path_in(fields, "work_dir", DEFAULT_CERTBOT_WORK_DIR, base),
        logs_dir=path_in(fields, "logs_dir", DEFAULT_CERTBOT_LOGS_DIR, base),
        orders_per_hour=ranged(fields, "orders_per_hour", 1, 10_000, DEFAULT_ORDERS_PER_HOUR),
        backoff=ranged(fields, "backoff", 0, MAX_AGE_LIMIT, DEFAULT_ACME_BACKOFF),
    )


def read_nginx(fields: Fields | None, base: Path) -> NginxSettings | None:
    if fields is None:
        return None
    return NginxSettings(
        tenants_conf=path_in(fields, "tenants_conf", DEFAULT_NGINX_TENANTS_CONF, base),
        snippet=path_in(fields, "snippet", DEFAULT_NGINX_SNIPPET, base),
        test_command=command(fields, "test_command", DEFAULT_NGINX_TEST),
        reload_command=command(fields, "reload_command", DEFAULT_NGINX_RELOAD),
    )
