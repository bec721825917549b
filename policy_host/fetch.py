"""Fetch a live policy the way a sending MTA does (RFC 8461 section 3.3).

HTTPS to ``mta-sts.<domain>`` with that name as SNI and Host, the
certificate checked against the system store (or one CA file), one ``GET``
of ``/.well-known/mta-sts.txt``, no redirects followed, at most 64 KiB read,
a short timeout. ``connect`` sends the connection to a given address instead
of the name's own (to test one front before DNS points at it); SNI and Host
stay the same.

The blocking work (``ssl`` + ``http.client``, which speaks chunked and
Content-Length bodies correctly) runs in a small thread pool, so the event
loop that drives the DNS checks never waits on it. `apply` verifies its
upstreams with ``fetch_from`` (blocking, the same TLS settings).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import http.client
import logging
import socket
import ssl
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from policy_host.model import MAX_POLICY_BYTES

log = logging.getLogger(__name__)

POLICY_PATH = "/.well-known/mta-sts.txt"
HTTPS_PORT = 443
HTTP_PORT = 80
USER_AGENT = "policy-host-check"
# apply's and nodes' own fetches, told apart from senders' in access logs.
VERIFY_USER_AGENT = "policy-host-verify"
# Threads fetching at once; fetches are rare next to DNS queries.
MAX_FETCH_THREADS = 16

# Failure codes a fetch can end with (the check turns them into reasons).
UNREACHABLE = "https_unreachable"
TIMEOUT = "https_timeout"
TLS_ERROR = "https_tls_error"
CERTIFICATE_INVALID = "https_certificate_invalid"
BAD_RESPONSE = "https_bad_response"


@dataclass(frozen=True)
class FetchResult:
    """What the server did. ``error_code`` is set when no HTTP response
    was read (``status`` is then ``None``)."""

    host: str
    address: str
    port: int
    status: int | None = None
    content_type: str | None = None
    location: str | None = None
    body: bytes = b""
    too_large: bool = False
    not_after: dt.datetime | None = None
    error_code: str | None = None
    error: str = ""


def client_context(ca_file: Path | None = None) -> ssl.SSLContext:
    """Certificate and host name checked, TLS 1.2 or later (RFC 8461 section 3.3)."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def fetch_policy_blocking(
    host: str,
    address: str,
    port: int,
    context: ssl.SSLContext,
    timeout: float,
) -> FetchResult:
    """One fetch of ``https://<host>/.well-known/mta-sts.txt`` from ``address:port``."""
    where = FetchResult(host, address, port)
    try:
        raw = socket.create_connection((address, port), timeout=timeout)
    except TimeoutError:
        return _failed(where, TIMEOUT, f"no connection to {address}:{port} within {timeout:g} s")
    except OSError as exc:
        return _failed(where, UNREACHABLE, f"cannot connect to {address}:{port}: {_text(exc)}")
    try:
        try:
            tls = context.wrap_socket(raw, server_hostname=host)
        except ssl.SSLCertVerificationError as exc:
            return _failed(where, CERTIFICATE_INVALID, f"certificate not valid: {_cert_text(exc)}")
        except TimeoutError:
            return _failed(where, TIMEOUT, f"TLS handshake not done within {timeout:g} s")
        except (ssl.SSLError, OSError) as exc:
            return _failed(where, TLS_ERROR, f"TLS handshake failed: {_text(exc)}")
        with tls:
            not_after = _not_after(tls.getpeercert())
            return _exchange(where, tls, not_after)
    finally:
        raw.close()


def _exchange(where: FetchResult, tls: ssl.SSLSocket, not_after: dt.datetime | None) -> FetchResult:
    # The connection is already made: http.client only writes and parses.
    # Host is the name alone, as a sender's is, whatever port was used.
    conn = http.client.HTTPConnection(where.host, HTTPS_PORT)
    conn.sock = tls
    try:
        conn.request(
            "GET",
            POLICY_PATH,
            headers={
                "Host": where.host,
                "User-Agent": USER_AGENT,
                "Accept": "*/*",
                "Connection": "close",
            },
        )
        response = conn.getresponse()
        body = response.read(MAX_POLICY_BYTES + 1)
    except TimeoutError:
        return _failed(where, TIMEOUT, "no complete HTTP response in time", not_after)
    except (http.client.HTTPException, OSError) as exc:
        return _failed(where, BAD_RESPONSE, f"bad HTTP response: {_text(exc)}", not_after)
    finally:
        conn.sock = None
    return FetchResult(
        where.host,
        where.address,
        where.port,
        status=response.status,
        content_type=response.getheader("Content-Type"),
        location=response.getheader("Location"),
        body=body[:MAX_POLICY_BYTES],
        too_large=len(body) > MAX_POLICY_BYTES,
        not_after=not_after,
    )


def _failed(
    where: FetchResult, code: str, message: str, not_after: dt.datetime | None = None
) -> FetchResult:
    return FetchResult(
        where.host, where.address, where.port, not_after=not_after, error_code=code, error=message
    )


def _not_after(cert: object) -> dt.datetime | None:
    if not isinstance(cert, dict) or not isinstance(cert.get("notAfter"), str):
        return None
    seconds = ssl.cert_time_to_seconds(cert["notAfter"])
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


def _cert_text(exc: ssl.SSLCertVerificationError) -> str:
    return str(exc.verify_message or exc.reason or exc)


def _text(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).lower().replace("_", " ")
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


class HttpsFetcher:
    """Fetches policies in a thread pool; ``await fetcher.fetch(host, addresses)``.

    ``connect`` (address, port) overrides where every connection goes;
    otherwise the addresses given (from DNS) are tried in turn on port 443
    until one accepts a connection.
    """

    def __init__(
        self,
        *,
        ca_file: Path | None = None,
        connect: tuple[str, int] | None = None,
        timeout: float = 5.0,
        threads: int = MAX_FETCH_THREADS,
    ) -> None:
        self.context = client_context(ca_file)
        self.connect = connect
        self.timeout = timeout
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="policy-host-fetch"
        )

    async def fetch(self, host: str, addresses: Sequence[str]) -> FetchResult:
        targets = [self.connect] if self.connect else [(a, HTTPS_PORT) for a in addresses]
        if not targets:
            return FetchResult(
                host, "", HTTPS_PORT, error_code=UNREACHABLE, error=f"{host} has no address"
            )
        loop = asyncio.get_running_loop()
        result: FetchResult | None = None
        for address, port in targets:
            result = await loop.run_in_executor(
                self._pool, fetch_policy_blocking, host, address, port, self.context, self.timeout
            )
            if result.error_code != UNREACHABLE:
                break
        assert result is not None
        return result

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def fetch_from(
    upstream: str,
    host: str,
    *,
    timeout: float,
    context: ssl.SSLContext | None = None,
) -> tuple[int, bytes]:
    """One ``GET`` of ``host``'s policy from ``upstream``, a base URL:
    (HTTP status, body, at most 64 KiB and one byte). With ``https://`` the
    connection is made as a sender makes it (SNI ``host``, the certificate
    checked by ``context``, default ``client_context()``: TLS 1.2 or later);
    ``http://`` is for a listener on loopback in front of the workers.
    Raises ``OSError`` or ``http.client.HTTPException``."""
    url = urllib.parse.urlsplit(upstream)
    https = url.scheme == "https"
    address = url.hostname or ""
    port = url.port or (HTTPS_PORT if https else HTTP_PORT)
    sock: socket.socket = socket.create_connection((address, port), timeout=timeout)
    try:
        if https:
            sock = (context or client_context()).wrap_socket(sock, server_hostname=host)
        conn = http.client.HTTPConnection(address, port, timeout=timeout)
        conn.sock = sock
        conn.request(
            "GET",
            url.path.rstrip("/") + POLICY_PATH,
            headers={"Host": host, "User-Agent": VERIFY_USER_AGENT, "Connection": "close"},
        )
        response = conn.getresponse()
        return response.status, response.read(MAX_POLICY_BYTES + 1)
    finally:
        sock.close()


def fetch_app(bind: str, path: str, host: str, *, timeout: float) -> tuple[int, bytes]:
    """One plain-HTTP ``GET path`` from the app's own listener ``bind``
    (``HOST:PORT`` or ``unix:PATH``, as ``serve.bind``), with ``Host: host``
    and ``Connection: close`` (each request a new connection, so any worker
    may take it): (HTTP status, body, at most 64 KiB and one byte).
    Raises ``OSError`` or ``http.client.HTTPException``."""
    sock: socket.socket
    if bind.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(bind.removeprefix("unix:"))
        except OSError:
            sock.close()
            raise
        address, port = "localhost", HTTP_PORT
    else:
        address, _, number = bind.rpartition(":")
        address, port = address.strip("[]"), int(number)
        sock = socket.create_connection((address, port), timeout=timeout)
    try:
        conn = http.client.HTTPConnection(address, port, timeout=timeout)
        conn.sock = sock
        conn.request("GET", path, headers={"Host": host, "Connection": "close"})
        response = conn.getresponse()
        return response.status, response.read(MAX_POLICY_BYTES + 1)
    finally:
        sock.close()
