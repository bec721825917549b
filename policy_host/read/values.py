"""Readers of single config values shared by the config's sections:
addresses, bounded integers, command lines, paths."""

from __future__ import annotations

from pathlib import Path

from policy_host.model import InvalidValue
from policy_host.read.schema import Fields


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


def ranged(fields: Fields, key: str, low: int, high: int, default: int) -> int:
    value = fields.integer(key)
    if value is None:
        return default
    if not low <= value <= high:
        fields.error(
            fields.line(key), f"{fields.prefix}{key}: expected {low}..{high} (got {value})"
        )
        return default
    return value


def server(fields: Fields, key: str) -> tuple[str, int] | None:
    text = fields.text(key)
    if text is None:
        return None
    try:
        return parse_server(text)
    except InvalidValue as exc:
        fields.error(fields.line(key), f"{fields.prefix}{key}: {exc}")
        return None


def command(fields: Fields, key: str, default: str) -> tuple[str, ...]:
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


def path_in(fields: Fields, key: str, default: str, base: Path) -> Path:
    return base / (fields.text(key) or default)
