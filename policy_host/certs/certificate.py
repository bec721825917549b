"""The certificates certbot keeps for our names: expiry and names."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509

from policy_host.certs.attempts import recorded_until
from policy_host.certs.nginxconf import cert_files
from policy_host.errors import PolicyHostError
from policy_host.model import POLICY_HOST_PREFIX
from policy_host.read.config import ProviderConfig


class CertsError(PolicyHostError):
    """A certificate could not be read, or the run could not start."""


@dataclass(frozen=True)
class Certificate:
    host: str
    not_after: float
    names: tuple[str, ...]


def read_certificate(config: ProviderConfig, host: str) -> Certificate | None:
    """The certificate certbot keeps for ``host`` (the first of its
    ``fullchain.pem``), or None if there is none."""
    chain, key = cert_files(config.acme, host)
    if not chain.exists() or not key.exists():
        return None
    try:
        cert = x509.load_pem_x509_certificate(chain.read_bytes())
    except (OSError, ValueError) as exc:
        raise CertsError(f"{chain}: cannot read the certificate: {exc}") from None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [name.lower() for name in san.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        names = []
    return Certificate(host, cert.not_valid_after_utc.timestamp(), tuple(names))


def valid_certificate(config: ProviderConfig, host: str, now: float) -> Certificate | None:
    """The certificate for ``host`` if it names ``host`` and has not run
    out at ``now``; None otherwise. (The one judgement `certs` and `apply`
    share.)"""
    cert = read_certificate(config, host)
    if cert is None or host not in cert.names or cert.not_after <= now:
        return None
    return cert


def has_valid_certificate(config: ProviderConfig, host: str, now: float) -> bool:
    """Whether ``host`` has a valid certificate at ``now``: read from
    certbot's files when this user may read them, otherwise what `certs`
    (root) last recorded (``attempts.recorded_until``)."""
    try:
        return valid_certificate(config, host, now) is not None
    except (PermissionError, CertsError):
        until = recorded_until(config.certs_db, host)
        return until is not None and until > now


def certificates_on_disk(config: ProviderConfig) -> list[str]:
    """Names of the certificates certbot keeps that look like ours."""
    live = config.acme.config_dir / "live"
    try:
        return sorted(
            p.name for p in live.iterdir() if p.is_dir() and p.name.startswith(POLICY_HOST_PREFIX)
        )
    except FileNotFoundError:
        return []
