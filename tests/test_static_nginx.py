"""nginx serves each policy from its file by itself, and falls back to the app.

The shipped site config (``nginx/``) on its loopback listener (port 8081,
the one `apply` verifies through; the tenant servers on 443 include the same
location), with a real ``policy-host serve`` behind it, in a network
namespace of the test's own. Needs root and nginx: skipped without them,
except under CI=true, where it fails.
"""

from __future__ import annotations

import http.client
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.fixtures_dns import in_ci
from support.layout import EXAMPLES, GOLDEN
from support.netns import NetNamespace, netns_supported
from support.nginx import NginxServer
from support.procs import Daemon, MissingBinaryError, require_binary
from support.stack import CLI

from policy_host.serve.files import TMP

HOST = "mta-sts.example.com"
PORT = 8081


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Site:
    www: Path
    socket_path: Path


def require_stack() -> None:
    why = netns_supported()
    if why is None:
        try:
            require_binary("nginx")
        except MissingBinaryError as exc:
            why = str(exc)
    if why is None:
        return
    if in_ci():
        pytest.fail(f"{why}; CI=true, so this is a failure, not a skip", pytrace=False)
    pytest.skip(why)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    require_stack()
    root = tmp_path_factory.mktemp("static")
    provider = root / "provider"
    shutil.copytree(EXAMPLES, provider, ignore=shutil.ignore_patterns("var"))
    socket_path = root / "gunicorn.sock"
    config = provider / "config.yaml"
    config.write_text(
        config.read_text().replace("bind: 127.0.0.1:8080", f"bind: unix:{socket_path}")
    )
    assert f"unix:{socket_path}" in config.read_text()
    www = provider / "var" / "www"

    def gunicorn_ready() -> bool:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(socket_path))
        return True

    gunicorn = Daemon(
        [*CLI, "--config", str(config), "serve"],
        name="gunicorn",
        workdir=root / "gunicorn",
        ready=gunicorn_ready,
        ready_timeout=20,
    )
    nginx = NginxServer(root / "nginx", socket_path=socket_path, webroot=root / "acme", www=www)
    with NetNamespace() as netns, netns.entered(), gunicorn, nginx:
        yield Site(www, socket_path)


def fetch(host: str, *, method: str = "GET", headers: dict[str, str] | None = None) -> Answer:
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=5)
    try:
        conn.request(method, "/.well-known/mta-sts.txt", headers={"Host": host, **(headers or {})})
        response = conn.getresponse()
        return Answer(
            response.status,
            {k.lower(): v for k, v in response.getheaders()},
            response.read(),
        )
    finally:
        conn.close()


def golden() -> bytes:
    return (GOLDEN / "example.com.txt").read_bytes()


def test_the_policy_comes_from_its_file(site: Site) -> None:
    answer = fetch(HOST)
    assert (answer.status, answer.body) == (200, golden())
    # nginx's own answer: text/plain without the app's charset parameter.
    assert answer.headers["content-type"] == "text/plain"
    # Proof that nginx read the file: change it behind the app's back.
    path = site.www / HOST
    try:
        path.write_bytes(b"version: STSv1\r\nmode: none\r\nmax_age: 86400\r\n")
        assert fetch(HOST).body == b"version: STSv1\r\nmode: none\r\nmax_age: 86400\r\n"
    finally:
        path.write_bytes(golden())


def test_without_its_file_the_app_answers_the_same_bytes(site: Site) -> None:
    path = site.www / HOST
    path.unlink()
    try:
        answer = fetch(HOST)
    finally:
        path.write_bytes(golden())
    assert (answer.status, answer.body) == (200, golden())
    assert answer.headers["content-type"] == "text/plain; charset=utf-8"  # the app's


@pytest.mark.parametrize("host", ["MTA-STS.Example.COM", f"{HOST}.", f"{HOST}:8081"])
def test_host_variants_get_the_same_file(site: Site, host: str) -> None:
    answer = fetch(host)
    assert (answer.status, answer.body) == (200, golden())


def test_head_sends_the_length_and_no_body(site: Site) -> None:
    answer = fetch(HOST, method="HEAD")
    assert (answer.status, answer.body) == (200, b"")
    assert answer.headers["content-length"] == str(len(golden()))


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS"])
def test_other_methods_go_to_the_app(site: Site, method: str) -> None:
    answer = fetch(HOST, method=method)
    assert answer.status == 405
    assert answer.headers["allow"] == "GET, HEAD"


@pytest.mark.parametrize(
    "headers",
    [{"Range": "bytes=0-3"}, {"If-Modified-Since": "Fri, 01 Jan 2100 00:00:00 GMT"}],
)
def test_always_the_whole_policy_never_a_range_or_304(site: Site, headers: dict[str, str]) -> None:
    answer = fetch(HOST, headers=headers)
    assert (answer.status, answer.body) == (200, golden())


@pytest.mark.parametrize("host", ["mta-sts.unknown.example", TMP, "example.com"])
def test_unknown_hosts_get_404(site: Site, host: str) -> None:
    assert fetch(host).status == 404
