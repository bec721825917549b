"""TLS reports posted over HTTPS through the shipped nginx config
(nginx/policy-host-reports.conf in a server block for the report name, as
docs/reports.md shows it) to a real ``policy-host serve``, in a network
namespace of the test's own. Needs root and nginx: skipped without them,
except under CI=true, where it fails."""

from __future__ import annotations

import http.client
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.netns import NetNamespace
from support.nginx import SHIPPED_NGINX, SITE, NginxServer
from support.procs import LOOPBACK, Daemon, port_open
from support.reportenv import CORPUS, report_tree
from support.stack import CLI
from support.tls import make_ca
from test_static_nginx import require_stack

from policy_host.read.config import ProviderConfig, load_config
from policy_host.reports.store import Store

NAME = "tlsrpt.provider.example"
TENANT = "mta-sts.example.com"
PORT = 8443
PATH = "/v1/report"
REPORTS = "policy-host-reports.conf"


class ReportsNginx(NginxServer):
    """The shipped site plus a server for the report name including the
    shipped reports snippet."""

    def __init__(
        self, workdir: Path, *, socket_path: Path, cert: Path, key: Path, tenant: tuple[Path, Path]
    ) -> None:
        super().__init__(workdir, socket_path=socket_path, webroot=workdir / "acme")
        self.cert, self.key = cert, key
        self.tenant = tenant

    def install(self) -> None:
        super().install()
        snippet = (SHIPPED_NGINX / REPORTS).read_text()
        assert "/var/log/nginx/" in snippet
        (self.conf_dir / REPORTS).write_text(snippet.replace("/var/log/nginx/", f"{self.log_dir}/"))
        with (self.conf_dir / SITE).open("a") as site:
            site.write(
                f"server {{\n    listen {LOOPBACK}:{PORT} ssl;\n    server_name {NAME};\n"
                f"    ssl_certificate {self.cert};\n    ssl_certificate_key {self.key};\n"
                f"    include {self.conf_dir / REPORTS};\n}}\n"
                # A tenant's server block, as `policy-host nginx-conf` makes it.
                f"server {{\n    server_name {TENANT};\n"
                f"    ssl_certificate {self.tenant[0]};\n"
                f"    ssl_certificate_key {self.tenant[1]};\n"
                f"    include {self.snippet};\n}}\n"
            )

    def _ready(self) -> bool:
        return super()._ready() and port_open(LOOPBACK, PORT)


@dataclass(frozen=True)
class Front:
    config: ProviderConfig
    context: ssl.SSLContext
    ca: Path  # the test CA's certificate, for other clients (curl)


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    require_stack()
    root = tmp_path_factory.mktemp("reports-nginx")
    config = report_tree(root)
    socket_path = root / "gunicorn.sock"
    text = config.path.read_text()
    assert "bind: 127.0.0.1:8080" in text
    config.path.write_text(text.replace("bind: 127.0.0.1:8080", f"bind: unix:{socket_path}"))
    config = load_config(config.path)
    ca = make_ca(root / "ca")
    cert, key = ca.issue("tlsrpt", [NAME])
    context = ssl.create_default_context(cafile=str(ca.cert))

    def gunicorn_ready() -> bool:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(socket_path))
        return True

    gunicorn = Daemon(
        [*CLI, "--config", str(config.path), "serve"],
        name="gunicorn",
        workdir=root / "gunicorn",
        ready=gunicorn_ready,
        ready_timeout=20,
    )
    tenant = ca.issue("tenant", [TENANT])
    nginx = ReportsNginx(root / "nginx", socket_path=socket_path, cert=cert, key=key, tenant=tenant)
    with NetNamespace() as netns, netns.entered(), gunicorn, nginx:
        yield Front(config, context, ca.cert)


def post(
    front: Front, body: bytes, *, media_type: str = "application/tlsrpt+gzip", method: str = "POST"
) -> tuple[int, bytes]:
    sock = socket.create_connection((LOOPBACK, PORT), timeout=10)
    conn = http.client.HTTPSConnection(NAME, PORT, context=front.context, timeout=10)
    conn.sock = front.context.wrap_socket(sock, server_hostname=NAME)
    try:
        conn.request(method, PATH, body=body, headers={"Content-Type": media_type})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_a_report_posted_through_nginx_is_stored_with_the_client_address(front: Front) -> None:
    status, body = post(front, (CORPUS / "gzip.json.gz").read_bytes())
    assert (status, body) == (200, b"accepted\n")
    with Store(front.config.reports_db) as store:
        row = store.conn.execute(
            "SELECT r.channel, r.origin FROM raw r JOIN report p ON r.report = p.id "
            "WHERE p.report_id = 'gzip-1'"
        ).fetchone()
    assert row == ("https", LOOPBACK)


def test_nginx_refuses_an_oversized_body(front: Front) -> None:
    status, _ = post(front, b"{" + b" " * (11 * 1024 * 1024) + b"}")
    assert status == 413


def test_only_post_passes(front: Front) -> None:
    assert post(front, b"", method="GET")[0] == 403


def test_a_flood_from_one_client_is_limited(front: Front) -> None:
    """Requests on kept-alive connections, so the flood outruns the rate
    (1/s, burst 20) even on a busy machine."""
    statuses: list[int] = []
    conn: http.client.HTTPSConnection | None = None
    for _ in range(400):
        if conn is None:
            conn = http.client.HTTPSConnection(NAME, PORT, context=front.context, timeout=10)
            conn.sock = front.context.wrap_socket(
                socket.create_connection((LOOPBACK, PORT), timeout=10), server_hostname=NAME
            )
        try:
            conn.request("POST", PATH, body=b"x", headers={"Content-Type": "text/plain"})
            response = conn.getresponse()
            response.read()
            statuses.append(response.status)
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = None
    if conn is not None:
        conn.close()
    assert set(statuses) <= {415, 429}
    assert statuses.count(429) >= 100
    # The burst and about one a second pass; the rest wait a day.
    assert 1 <= statuses.count(415) < 80


def _last_origin(front: Front) -> tuple[int, str]:
    with Store(front.config.reports_db) as store:
        row = store.conn.execute("SELECT count(*), max(id) FROM raw").fetchone()
        origin = store.conn.execute("SELECT origin FROM raw WHERE id = ?", (row[1],)).fetchone()
    return int(row[0]), origin[0] if origin else ""


def test_a_client_cannot_choose_the_address_recorded(front: Front) -> None:
    """The loopback server apply verifies through proxies to the app too:
    a client's own X-Real-IP and X-Forwarded-For are replaced."""
    forged = {"X-Real-IP": "203.0.113.7", "X-Forwarded-For": "203.0.113.8"}
    conn = http.client.HTTPConnection(LOOPBACK, 8081, timeout=10)
    try:
        conn.request(
            "POST", PATH, body=b"{not json",
            headers={"Host": NAME, "Content-Type": "application/tlsrpt+json", **forged},
        )  # fmt: skip
        response = conn.getresponse()
        assert (response.status, response.read()[:17]) == (400, b"refused: not JSON")
    finally:
        conn.close()
    assert _last_origin(front)[1] == LOOPBACK


def test_a_tenant_server_block_takes_no_reports(front: Front) -> None:
    before = _last_origin(front)[0]
    sock = socket.create_connection((LOOPBACK, 443), timeout=10)
    conn = http.client.HTTPSConnection(TENANT, 443, context=front.context, timeout=10)
    conn.sock = front.context.wrap_socket(sock, server_hostname=TENANT)
    try:
        conn.request(
            "POST", PATH, body=(CORPUS / "gzip.json.gz").read_bytes(),
            headers={"Content-Type": "application/tlsrpt+gzip", "X-Real-IP": "203.0.113.7"},
        )  # fmt: skip
        response = conn.getresponse()
        assert (response.status, response.read()) == (404, b"not found\n")
    finally:
        conn.close()
    assert _last_origin(front)[0] == before
