"""The `tlsrpt` section: receiving the customers' TLS reports (RFC 8460;
docs/reports.md)."""

from __future__ import annotations

from dataclasses import dataclass

from policy_host.model import InvalidValue, hostname
from policy_host.read.schema import Fields
from policy_host.read.values import ranged

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

        return tuple(urllib.parse.urlsplit(uri).path or "/" for uri in self._https)

    @property
    def https_hosts(self) -> tuple[str, ...]:
        """The host names of the https: destinations (each needs nginx's
        report site and a certificate), sorted, once each."""
        import urllib.parse

        hosts = {urllib.parse.urlsplit(uri).hostname for uri in self._https}
        return tuple(sorted(host for host in hosts if host))

    @property
    def _https(self) -> tuple[str, ...]:
        # URI schemes are case-insensitive (RFC 3986 section 3.1).
        return tuple(uri for uri in self.rua if uri.lower().startswith("https:"))


KEYS = (
    "rua",
    "zone",
    "unverified_mail",
    "retention_days",
    "raw_retention_days",
    "max_report_bytes",
    "max_failure_rate",
    "min_sessions",
)


def read_tlsrpt(fields: Fields | None) -> TlsrptSettings | None:
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
        retention_days=ranged(fields, "retention_days", 1, 36_500, DEFAULT_REPORT_RETENTION_DAYS),
        raw_retention_days=ranged(
            fields, "raw_retention_days", 1, 36_500, DEFAULT_RAW_RETENTION_DAYS
        ),
        max_report_bytes=ranged(
            fields, "max_report_bytes", 1024, 1024**3, DEFAULT_MAX_REPORT_BYTES
        ),
        max_failure_rate=max_rate,
        min_sessions=ranged(fields, "min_sessions", 0, 10**9, DEFAULT_MIN_SESSIONS),
    )
