"""`check --https`: the policy fetched as a sender would, from a real TLS server.

One Python TLS server on 127.0.0.1 with certificates from a throw-away CA
(the openssl CLI); each host name plays one way of getting it wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.fixtures_dns import in_ci
from support.policyhttps import PolicyHttpsServer, Reply
from support.procs import MissingBinaryError, require_binary
from support.tls import TestCA, make_ca

from policy_host.check.context import CheckContext
from policy_host.check.dnsclient import DnsAnswer
from policy_host.check.https import check_https
from policy_host.check.reasons import TenantReport
from policy_host.fetch import HttpsFetcher
from policy_host.model import Policy, Tenant
from policy_host.read.config import ProviderConfig, load_config
from policy_host.render import render

POLICY = Policy("enforce", ("mx1.example.com", "*.mail.example.com"), 604800)
BODY = render(POLICY)

REPLIES = {
    "mta-sts.good.example": Reply(body=BODY, content_type="text/plain; charset=utf-8"),
    "mta-sts.differs.example": Reply(body=BODY.replace(b"enforce", b"testing")),
    "mta-sts.lf.example": Reply(body=BODY.replace(b"\r\n", b"\n")),
    "mta-sts.redirect.example": Reply(
        301, b"", headers={"Location": "https://www.redirect.example/mta-sts.txt"}
    ),
    "mta-sts.html.example": Reply(body=BODY, content_type="text/html"),
    "mta-sts.huge.example": Reply(body=BODY + b"x" * (70 * 1024)),
}
NAMES = [*REPLIES, "mta-sts.missing.example"]


class NoDns:
    """--https needs no DNS of its own in these tests."""

    async def lookup(self, name: str, rdtype: str) -> DnsAnswer:
        raise AssertionError(f"unexpected lookup {name} {rdtype}")


def require_openssl() -> None:
    try:
        require_binary("openssl")
    except MissingBinaryError as exc:
        if in_ci():
            pytest.fail(f"{exc}; CI=true, so this is a failure, not a skip", pytrace=False)
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    require_openssl()
    return make_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def server(ca: TestCA) -> Iterator[PolicyHttpsServer]:
    good = ca.issue("policies", NAMES, days=60)
    other = ca.issue("other", ["mta-sts.someone-else.example"], days=60)
    with PolicyHttpsServer({name: good for name in NAMES}, other, REPLIES) as running:
        yield running


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> ProviderConfig:
    root = tmp_path_factory.mktemp("provider")
    (root / "tenants").mkdir()
    (root / "config.yaml").write_text(
        "tenants_dir: tenants\npolicy_host: mta-sts.provider.example\n"
        "id_zone: _mta-sts.provider.example\n"
    )
    return load_config(root / "config.yaml")


def fetch(
    config: ProviderConfig,
    domain: str,
    *,
    connect: tuple[str, int],
    ca_file: Path | None,
    days_later: int = 0,
    timeout: float = 3.0,
) -> TenantReport:
    fetcher = HttpsFetcher(ca_file=ca_file, connect=connect, timeout=timeout)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=days_later)
    ctx = CheckContext(
        config=config, lookup=NoDns(), expected_ids={}, fetcher=fetcher, clock=lambda: later
    )
    tenant = Tenant(domain, POLICY, source="test")
    report = TenantReport(domain, POLICY.mode)
    try:
        asyncio.run(check_https(ctx, tenant, report, []))
    finally:
        fetcher.close()
    return report


CASES = [
    ("good.example", []),
    ("differs.example", ["https_policy_mismatch"]),
    ("lf.example", ["https_policy_mismatch"]),
    ("redirect.example", ["https_redirect"]),
    ("html.example", ["https_content_type"]),
    ("huge.example", ["https_too_large"]),
    ("missing.example", ["https_status"]),
    # The server presents a certificate for another name.
    ("someone-else-name.example", ["https_certificate_invalid"]),
]


@pytest.mark.parametrize(("domain", "codes"), CASES, ids=[c[0] for c in CASES])
def test_each_server_fault_gives_its_reason(
    domain: str,
    codes: list[str],
    server: PolicyHttpsServer,
    ca: TestCA,
    config: ProviderConfig,
) -> None:
    report = fetch(config, domain, connect=("127.0.0.1", server.port), ca_file=ca.cert)
    assert report.codes == codes, [r.message for r in report.reasons]
    assert all(r.label == "fail" for r in report.reasons)


def test_the_fetch_looks_like_a_senders(
    server: PolicyHttpsServer, ca: TestCA, config: ProviderConfig
) -> None:
    before = len(server.seen)
    report = fetch(config, "good.example", connect=("127.0.0.1", server.port), ca_file=ca.cert)
    # SNI and Host are the policy host; Host carries no port, though the
    # connection went to another port.
    assert server.seen[before:] == [("mta-sts.good.example", "mta-sts.good.example")]
    https = report.observed["https"]
    assert https["status"] == 200
    assert https["address"] == f"127.0.0.1:{server.port}"
    assert https["certificate_not_after"] is not None


def test_messages_say_what_differs(
    server: PolicyHttpsServer, ca: TestCA, config: ProviderConfig
) -> None:
    connect = ("127.0.0.1", server.port)
    (differs,) = fetch(config, "differs.example", connect=connect, ca_file=ca.cert).reasons
    assert differs.message == (
        "https://mta-sts.differs.example/.well-known/mta-sts.txt serves a different policy: "
        "line 2 is 'mode: testing\\r\\n', expected 'mode: enforce\\r\\n'"
    )
    (redirect,) = fetch(config, "redirect.example", connect=connect, ca_file=ca.cert).reasons
    assert "301 redirecting to https://www.redirect.example/mta-sts.txt" in redirect.message


def test_certificate_from_an_unknown_ca_is_refused(
    server: PolicyHttpsServer, config: ProviderConfig
) -> None:
    # The system store does not know the test CA.
    report = fetch(config, "good.example", connect=("127.0.0.1", server.port), ca_file=None)
    assert report.codes == ["https_certificate_invalid"]
    assert "certificate not valid: self-signed certificate in certificate chain" in (
        report.reasons[0].message
    )


def test_certificate_expiring_soon_is_a_warning(
    server: PolicyHttpsServer, ca: TestCA, config: ProviderConfig
) -> None:
    # The certificate is good for 60 days; 45 days from now 15 are left.
    report = fetch(
        config,
        "good.example",
        connect=("127.0.0.1", server.port),
        ca_file=ca.cert,
        days_later=45,
    )
    assert [(r.code, r.label) for r in report.reasons] == [("https_cert_expiring", "warn")]
    assert "(14 days left)" in report.reasons[0].message or "(15 days left)" in (
        report.reasons[0].message
    )


def test_nothing_listening_is_unreachable(config: ProviderConfig, ca: TestCA) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    report = fetch(config, "good.example", connect=("127.0.0.1", port), ca_file=ca.cert)
    assert report.codes == ["https_unreachable"]


def test_a_server_that_never_answers_times_out(config: ProviderConfig, ca: TestCA) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)  # accepts the TCP connection, never speaks TLS
        report = fetch(
            config,
            "good.example",
            connect=silent.getsockname(),
            ca_file=ca.cert,
            timeout=0.5,
        )
    assert report.codes == ["https_timeout"]


@contextlib.contextmanager
def one_shot_server(serve: Callable[[socket.socket], None]) -> Iterator[tuple[str, int]]:
    """A TCP listener on 127.0.0.1 whose first connection ``serve`` handles."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(5)

        def run() -> None:
            with contextlib.suppress(OSError):
                conn, _ = listener.accept()
                with conn:
                    conn.settimeout(5)
                    serve(conn)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        yield listener.getsockname()
        thread.join(timeout=5)


def test_a_server_that_does_not_speak_tls(config: ProviderConfig, ca: TestCA) -> None:
    def plain_http(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    with one_shot_server(plain_http) as address:
        report = fetch(config, "good.example", connect=address, ca_file=ca.cert)
    assert report.codes == ["https_tls_error"]
    assert "TLS handshake failed" in report.reasons[0].message


def test_a_response_that_is_not_http(config: ProviderConfig, ca: TestCA) -> None:
    chain, key = ca.issue("garbage", ["mta-sts.good.example"], days=60)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain, key)

    def garbage(conn: socket.socket) -> None:
        with context.wrap_socket(conn, server_side=True) as tls:
            tls.recv(4096)
            tls.sendall(b"this is not HTTP\r\n\r\n")

    with one_shot_server(garbage) as address:
        report = fetch(config, "good.example", connect=address, ca_file=ca.cert)
    assert report.codes == ["https_bad_response"]
