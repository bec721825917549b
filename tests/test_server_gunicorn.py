"""The real policy server: ``policy-host serve`` (gunicorn) on loopback.

Every test runs ``policy-host --config <copy of examples>/config.yaml serve
--bind 127.0.0.1:<port>`` as a subprocess and talks to it over raw sockets,
so the request line, the Host header and the bytes read back are exactly what
the test says (HTTP client libraries normalise or refuse odd hosts). Expected
bodies are data files: ``tests/golden/served-<domain>.txt`` hold the exact
CRLF bytes a sender must get for each example tenant.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support.procs import Daemon, free_port, wait_until

from policy_host.serve.snapshot import served_id
from policy_host.serve.web import WATCH_INTERVAL

TESTS = Path(__file__).resolve().parent
EXAMPLES = TESTS.parent / "examples"
GOLDEN = TESTS / "golden"
LOOPBACK = "127.0.0.1"
POLICY_PATH = "/.well-known/mta-sts.txt"
IO_TIMEOUT = 3.0

_SCRIPT = Path(sys.executable).with_name("policy-host")
CLI: tuple[str, ...] = (
    (str(_SCRIPT),) if _SCRIPT.exists() else (sys.executable, "-m", "policy_host.cli.main")
)
DOMAINS = tuple(
    sorted(path.name.removesuffix(".yaml") for path in (EXAMPLES / "tenants").glob("*.yaml"))
)
CANONICAL_POLICY = re.compile(
    rb"version: STSv1\r\nmode: (enforce|testing|none)\r\n(mx: [!-~]+\r\n)*max_age: [0-9]+\r\n"
)
# Line 2 is the error `reload` must point at.
BROKEN_TENANT = """\
# example.com, broken on purpose: 'enforced' is not a mode
mode: enforced
mx:
  - mx1.example.com
  - mx2.example.com
max_age: 604800
"""


def golden(domain: str) -> bytes:
    path = GOLDEN / f"{domain}.txt"
    assert path.exists(), f"{path} is missing: add the exact bytes served for {domain}"
    return path.read_bytes()


# -- a tiny HTTP/1.x client on raw sockets ----------------------------------


class NoReplyError(ConnectionError):
    """The server closed the connection without a complete reply."""


@dataclass(frozen=True)
class Reply:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        values = [value for key, value in self.headers if key.lower() == name.lower()]
        assert len(values) <= 1, f"{name} sent {len(values)} times: {values}"
        return values[0] if values else None


def http_request(
    host: bytes | str | None,
    *,
    method: str = "GET",
    target: str = POLICY_PATH,
    version: str = "HTTP/1.1",
    extra: Sequence[bytes] = (),
) -> bytes:
    """One request's bytes; ``host=None`` sends no Host header at all."""
    lines = [f"{method} {target} {version}".encode("ascii")]
    if host is not None:
        lines.append(b"Host: " + (host.encode("utf-8") if isinstance(host, str) else host))
    lines.extend(extra)
    if method in ("POST", "PUT", "PATCH"):
        lines.append(b"Content-Length: 0")
    if version == "HTTP/1.1":
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


def parse_reply(data: bytes) -> Reply:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        raise NoReplyError(f"no complete reply: {data[:200]!r}")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    match = re.fullmatch(r"HTTP/1\.[01] ([0-9]{3})(?: .*)?", status_line)
    if match is None:
        raise NoReplyError(f"bad status line: {status_line!r}")
    headers = []
    for line in header_lines:
        name, colon, value = line.partition(":")
        if not colon:
            raise NoReplyError(f"bad header line: {line!r}")
        headers.append((name.strip(), value.strip()))
    return Reply(int(match.group(1)), tuple(headers), body)


def exchange(port: int, request: bytes, *, timeout: float = IO_TIMEOUT) -> Reply:
    """Send ``request`` on a fresh connection; read until the server closes it.

    Reading to the end (every request asks ``Connection: close`` or is
    HTTP/1.0) proves there are no bytes after the declared body.
    """
    deadline = time.monotonic() + timeout
    data = bytearray()
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
        sock.sendall(request)
        while chunk := sock.recv(65536):
            data += chunk
            if time.monotonic() > deadline:
                raise TimeoutError(f"reply not finished after {timeout}s")
    return parse_reply(bytes(data))


def media_type(reply: Reply) -> tuple[str, dict[str, str]]:
    value = reply.header("Content-Type")
    assert value is not None, "no Content-Type"
    main, *params = (part.strip() for part in value.split(";"))
    parsed = {}
    for param in params:
        key, _, val = param.partition("=")
        parsed[key.strip().lower()] = val.strip().strip('"').lower()
    return main.lower(), parsed


def assert_policy_headers(reply: Reply, expected: bytes) -> None:
    assert reply.status == 200, reply
    main, params = media_type(reply)
    # RFC 8461 section 3.3: media type text/plain; a charset parameter is fine.
    assert main == "text/plain", reply.headers
    assert set(params) <= {"charset"}, reply.headers
    assert params.get("charset", "us-ascii") in ("us-ascii", "utf-8"), reply.headers
    assert reply.header("Content-Length") == str(len(expected)), reply.headers
    assert reply.header("Location") is None, reply.headers


def assert_policy(reply: Reply, expected: bytes) -> None:
    assert_policy_headers(reply, expected)
    assert reply.body == expected


def assert_refused(reply: Reply, allowed: Sequence[int] = (400, 404)) -> None:
    """A refusal: an allowed 4xx, no redirect, nothing about any tenant."""
    assert reply.status in allowed, reply
    assert reply.header("Location") is None, reply.headers
    body = reply.body.lower()
    for domain in DOMAINS:
        assert golden(domain) not in reply.body, reply
        assert domain.encode() not in body, reply
    assert b"stsv1" not in body, reply
    assert b"max_age" not in body, reply


# -- the server under test ----------------------------------------------------


@dataclass(frozen=True)
class Site:
    """A provider tree (config + tenants) copied from examples/ for one test."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def tenants(self) -> Path:
        return self.root / "tenants"

    @property
    def state_dir(self) -> Path:
        return self.root / "var"

    @property
    def snapshot(self) -> Path:
        return self.state_dir / "served.json"

    @property
    def pidfile(self) -> Path:
        return self.state_dir / "gunicorn.pid"

    def tenant(self, domain: str) -> Path:
        return self.tenants / f"{domain}.yaml"


def make_site(root: Path) -> Site:
    """Copy examples/ without any earlier state; keep all state under ``root``."""
    shutil.copytree(EXAMPLES, root, ignore=shutil.ignore_patterns("var"))
    site = Site(root)
    text = site.config.read_text()
    text, found = re.subn(r"(?m)^state_dir:.*$", "state_dir: var", text)
    if not found:
        text += "state_dir: var\n"
    site.config.write_text(text)
    return site


def run_cli(site: Site, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "--config", str(site.config), *args],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


@dataclass(frozen=True)
class Server:
    site: Site
    port: int
    daemon: Daemon

    def get(self, domain: str, *, method: str = "GET") -> Reply:
        return exchange(self.port, http_request(f"mta-sts.{domain}", method=method))

    def body_or_none(self, domain: str) -> bytes | None:
        """The body served now, or None if the request failed (for polling)."""
        try:
            reply = self.get(domain)
        except OSError:
            return None
        return reply.body if reply.status == 200 else None

    def workers(self) -> set[int]:
        """PIDs of the gunicorn master's children (its workers), from /proc."""
        pids = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # "pid (comm) state ppid ..."; comm may hold spaces and parentheses.
            if int(stat.rpartition(")")[2].split()[1]) == self.daemon.pid:
                pids.add(int(entry.name))
        return pids


@contextmanager
def serve(site: Site, *extra: str) -> Iterator[Server]:
    """``policy-host serve`` on a free loopback port, stopped by its PID."""
    port = free_port("tcp")
    argv = [*CLI, "--config", str(site.config), "serve", "--bind", f"{LOOPBACK}:{port}", *extra]

    def answers() -> bool:
        exchange(port, http_request(None, target="/", version="HTTP/1.0"), timeout=0.5)
        return True

    with Daemon(
        argv,
        name="policy-host-serve",
        workdir=site.root / "logs",
        ready=answers,
        ready_timeout=10.0,
        stop_timeout=5.0,
    ) as daemon:
        server = Server(site, port, daemon)
        # Every worker of the example config (serve.workers: 2) has booted.
        wait_until(lambda: len(server.workers()) == 2, 10.0, what="both gunicorn workers")
        yield server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the read-only tests."""
    site = make_site(tmp_path_factory.mktemp("served") / "site")
    with serve(site) as running:
        yield running
        running.daemon.check_alive()  # nothing the tests sent may have crashed it


# -- 1. exact bytes and headers -----------------------------------------------


@pytest.mark.parametrize("domain", DOMAINS)
def test_golden_file_is_a_canonical_crlf_policy(domain: str) -> None:
    """Guards the expected data itself (an editor or git must not turn CRLF into LF)."""
    body = golden(domain)
    assert CANONICAL_POLICY.fullmatch(body), body
    assert body.isascii()
    assert b"\n" not in body.replace(b"\r\n", b"")


@pytest.mark.parametrize("domain", DOMAINS)
def test_get_serves_the_exact_policy_bytes(server: Server, domain: str) -> None:
    reply = server.get(domain)
    assert_policy(reply, golden(domain))


@pytest.mark.parametrize("domain", DOMAINS)
def test_head_sends_the_get_headers_and_no_body(server: Server, domain: str) -> None:
    expected = golden(domain)
    get = server.get(domain)
    head = server.get(domain, method="HEAD")
    assert_policy_headers(head, expected)
    assert head.body == b""
    assert head.header("Content-Type") == get.header("Content-Type")
    assert head.header("Content-Length") == get.header("Content-Length")


def test_pidfile_names_the_master_that_reload_signals(server: Server) -> None:
    assert int(server.site.pidfile.read_text().strip()) == server.daemon.pid
    assert server.workers(), "no gunicorn workers found under the master"


# -- 2. host variants, refusals, methods -------------------------------------


@pytest.mark.parametrize(
    ("host", "target"),
    [
        pytest.param("MTA-STS.EXAMPLE.COM", POLICY_PATH, id="upper-case"),
        pytest.param("Mta-Sts.Example.Com", POLICY_PATH, id="mixed-case"),
        pytest.param("mta-sts.example.com:443", POLICY_PATH, id="port-443"),
        pytest.param("mta-sts.example.com:{port}", POLICY_PATH, id="bound-port"),
        pytest.param("mta-sts.example.com.", POLICY_PATH, id="trailing-dot"),
        pytest.param("MTA-STS.Example.COM.:443", POLICY_PATH, id="upper-dot-port"),
        pytest.param("mta-sts.example.com", POLICY_PATH + "?v=2", id="query-ignored"),
    ],
)
def test_host_variants_get_the_same_policy(server: Server, host: str, target: str) -> None:
    reply = exchange(server.port, http_request(host.format(port=server.port), target=target))
    assert_policy(reply, golden("example.com"))


HOST_300 = b"mta-sts." + b"a" * (300 - len(b"mta-sts..example.com")) + b".example.com"
assert len(HOST_300) == 300
HOST_300_LABELS = b"mta-sts." + b".".join([b"b" * 60] * 4) + b".example.com"
assert len(HOST_300_LABELS) > 253

REFUSED = [
    pytest.param(http_request("mta-sts.unknown.example"), id="unknown-tenant"),
    pytest.param(http_request("example.com"), id="bare-domain"),
    pytest.param(http_request("EXAMPLE.COM:443"), id="bare-domain-upper-port"),
    pytest.param(http_request("mta-sts."), id="label-and-dot-only"),
    pytest.param(http_request("mta-sts"), id="label-only"),
    pytest.param(http_request("www.example.com"), id="other-label"),
    pytest.param(http_request("mta-sts.example.com.evil.test"), id="tenant-as-prefix"),
    pytest.param(http_request("evil.mta-sts.example.com"), id="tenant-as-suffix"),
    pytest.param(http_request("mta-sts.example.com.."), id="two-trailing-dots"),
    pytest.param(http_request("mta-sts..example.com"), id="empty-label"),
    pytest.param(http_request(b"mta-sts.example.com\x00.evil.test"), id="nul-inside"),
    pytest.param(http_request(b"mta-sts.example.com\x00"), id="nul-at-end"),
    pytest.param(http_request("mta-sts.example.com/"), id="slash"),
    pytest.param(http_request("mta-sts.example.com/.."), id="slash-dotdot"),
    pytest.param(http_request("../mta-sts.example.com"), id="dotdot-prefix"),
    pytest.param(http_request("mta-sts.example.com/../mta-sts.example.net"), id="dotdot-path"),
    pytest.param(http_request("user@mta-sts.example.com"), id="userinfo"),
    pytest.param(http_request("mta-sts.bücher.example"), id="idn-unicode"),
    pytest.param(http_request("mta-sts.xn--bcher-kva.example"), id="idn-a-label-unknown"),
    pytest.param(http_request("mta-sts.example.\uff43\uff4f\uff4d"), id="fullwidth-tenant"),
    pytest.param(http_request(HOST_300), id="300-byte-host"),
    pytest.param(http_request(HOST_300_LABELS), id="over-253-host"),
    pytest.param(http_request(""), id="empty-host"),
    pytest.param(http_request(":443"), id="port-only"),
    pytest.param(http_request("mta-sts.example.com:https"), id="named-port"),
    pytest.param(http_request("mta-sts.example.com:99999999"), id="huge-port"),
    pytest.param(http_request("127.0.0.1"), id="ipv4"),
    pytest.param(http_request("[::1]:443"), id="ipv6"),
    pytest.param(http_request("mta-sts.example .com"), id="space-inside"),
    pytest.param(http_request("mta-sts.example.com, mta-sts.example.net"), id="host-list"),
    pytest.param(
        http_request("mta-sts.example.com", extra=[b"Host: mta-sts.example.net"]),
        id="two-host-headers",
    ),
    pytest.param(http_request(None, version="HTTP/1.0"), id="no-host-http-1.0"),
    pytest.param(http_request(None), id="no-host-http-1.1"),
    *(
        pytest.param(http_request("mta-sts.example.com", target=target), id=f"path:{target}")
        for target in (
            "/",
            "/.well-known/",
            "/.well-known/mta-sts.txt/..",
            "/.well-known/mta-sts.txt/",
            "/.well-known/mta-sts.txtx",
            "/.well-known/mta-sts.txt.bak",
            "/.well-known/MTA-STS.TXT",
            "/.well-known/mta-sts",
            "/mta-sts.txt",
            "/.well-known/mta-sts.txt%00",
            "/.well-known/mta-sts.txt%2F..",
            "/.well-known/../.well-known/mta-sts.txt",
        )
    ),
]


@pytest.mark.parametrize("request_bytes", REFUSED)
def test_odd_requests_are_refused_without_leaking(server: Server, request_bytes: bytes) -> None:
    assert_refused(exchange(server.port, request_bytes))
    server.daemon.check_alive()


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_other_methods_get_405(server: Server, method: str) -> None:
    reply = server.get("example.com", method=method)
    assert_refused(reply, allowed=(405,))
    allow = {item.strip() for item in (reply.header("Allow") or "").split(",")}
    assert {"GET", "HEAD"} <= allow, reply.headers


def test_10k_host_header_gets_4xx_not_5xx(server: Server) -> None:
    host = b"mta-sts." + b"x" * 10240 + b".example.com"
    reply = exchange(server.port, http_request(host))
    assert 400 <= reply.status < 500, reply
    assert_refused(reply, allowed=(reply.status,))
    # Still serving afterwards.
    assert_policy(server.get("example.com"), golden("example.com"))


# -- 3. a broken tenant keeps its last good policy ---------------------------


def test_broken_tenant_keeps_its_last_good_policy_through_reload(tmp_path: Path) -> None:
    site = make_site(tmp_path / "site")
    old_com = golden("example.com")
    old_org = golden("example.org")
    new_org = old_org.replace(b"max_age: 86400\r\n", b"max_age: 172800\r\n")
    assert new_org != old_org
    with serve(site) as server:
        assert_policy(server.get("example.com"), old_com)
        before = server.workers()

        broken = site.tenant("example.com")
        broken.write_text(BROKEN_TENANT)
        org = site.tenant("example.org")
        org.write_text(org.read_text().replace("max_age: 86400", "max_age: 172800"))
        result = run_cli(site, "reload")

        assert result.returncode == 1, result
        where = re.escape(f"{broken}:2:")
        assert re.search(rf"(?m)^{where} mode: .*'enforced'", result.stdout), result
        assert re.search(r"(?m)^example\.com: .*last good", result.stderr), result
        assert "Traceback" not in result.stdout + result.stderr

        # The valid edit made in the same reload shows the reload is live ...
        wait_until(
            lambda: server.body_or_none("example.org") == new_org,
            10.0,
            what="the example.org edit to be served",
        )
        # ... and once every worker has had time to swap its table, the
        # broken tenant still gets its last good bytes from all of them, and
        # no worker was restarted for it.
        time.sleep(2 * WATCH_INTERVAL + 0.2)
        assert server.workers() == before
        for _ in range(10):
            assert_policy(server.get("example.com"), old_com)
        assert_policy(server.get("example.org"), new_org)
        assert_policy(server.get("example.net"), golden("example.net"))
        server.daemon.check_alive()


# -- 4. a live change fails no request ---------------------------------------


@dataclass(frozen=True)
class Outcome:
    status: int
    body: bytes
    content_length: str | None
    error: str | None = None


@dataclass
class Sender:
    """A sending MTA fetching one policy over and over, a new connection each time.

    Stops once the new body has been seen and then ``more`` further requests
    were made over at least ``linger`` seconds (gunicorn's old workers linger
    about a second after a reload), or at ``deadline``.
    """

    port: int
    host: str
    new_body: bytes
    more: int = 50
    linger: float = 1.5
    deadline: float = field(default_factory=lambda: time.monotonic() + 15.0)
    outcomes: list[Outcome] = field(default_factory=list)

    def run(self) -> None:
        request = http_request(self.host)
        first_new: float | None = None
        after = 0
        while time.monotonic() < self.deadline:
            try:
                reply = exchange(self.port, request)
                outcome = Outcome(reply.status, reply.body, reply.header("Content-Length"))
            except (OSError, AssertionError) as exc:
                outcome = Outcome(0, b"", None, repr(exc))
            self.outcomes.append(outcome)
            if first_new is None and outcome.body == self.new_body:
                first_new = time.monotonic()
            if first_new is not None:
                after += 1
                if after >= self.more and time.monotonic() - first_new >= self.linger:
                    return


@pytest.mark.parametrize(
    "serve_args",
    [
        pytest.param((), id="configured-gthread"),
        pytest.param(("--threads", "1"), id="sync-workers"),
    ],
)
def test_live_policy_change_fails_no_request(tmp_path: Path, serve_args: tuple[str, ...]) -> None:
    site = make_site(tmp_path / "site")
    old = golden("example.com")
    new = old.replace(b"max_age: 604800\r\n", b"max_age: 1209600\r\n")
    assert new != old
    with serve(site, *serve_args) as server:
        sender = Sender(server.port, "mta-sts.example.com", new)
        thread = threading.Thread(target=sender.run, name="sender", daemon=True)
        thread.start()
        workers = server.workers()
        database = site.snapshot.with_name("served.sqlite3")
        built = os.readlink(database)
        try:
            wait_until(lambda: len(sender.outcomes) >= 20, 5.0, what="the first requests")
            tenant = site.tenant("example.com")
            tenant.write_text(tenant.read_text().replace("max_age: 604800", "max_age: 1209600"))
            result = run_cli(site, "reload")
            assert result.returncode == 0, result
        finally:
            thread.join(timeout=20.0)
        assert not thread.is_alive(), "the sender did not stop"
        server.daemon.check_alive()
        assert server.workers() == workers, "the change must go live without restarting workers"
        # The one change went into the database the workers read as a
        # journal step (the same database: none was built from the whole
        # snapshot again), and every worker serves it.
        assert os.readlink(database) == built
        log = server.daemon.log_path.read_text(errors="replace")
        new_id = served_id(site.snapshot)
        assert log.count(f"serving snapshot {new_id}") == len(workers), server.daemon.log_tail()

    outcomes = sender.outcomes
    bad = [
        (index, outcome)
        for index, outcome in enumerate(outcomes)
        if outcome.error is not None
        or outcome.status != 200
        or outcome.body not in (old, new)
        or outcome.content_length != str(len(outcome.body))
    ]
    assert not bad, f"{len(bad)} of {len(outcomes)} requests failed, first: {bad[:5]}"
    assert outcomes[0].body == old
    assert new in (outcome.body for outcome in outcomes), "the new policy was never served"
    assert all(outcome.body == new for outcome in outcomes[-20:]), "the old policy came back"


# -- 5. start-up with a broken tenant ----------------------------------------


def test_server_starts_with_a_broken_tenant_and_serves_the_others(tmp_path: Path) -> None:
    site = make_site(tmp_path / "site")
    site.tenant("example.com").write_text(BROKEN_TENANT)
    assert not site.snapshot.exists()
    with serve(site) as server:
        for domain in DOMAINS:
            if domain != "example.com":
                assert_policy(server.get(domain), golden(domain))
        assert_refused(server.get("example.com"), allowed=(404,))
        server.daemon.check_alive()


# -- 6. reload with no server -------------------------------------------------


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait(timeout=10)
    return child.pid


@pytest.mark.parametrize("dry_run", [False, True], ids=["reload", "reload-dry-run"])
@pytest.mark.parametrize("pidfile", ["missing", "stale", "garbage"])
def test_reload_without_a_server_exits_3_with_one_line(
    tmp_path: Path, pidfile: str, dry_run: bool
) -> None:
    site = make_site(tmp_path / "site")
    site.state_dir.mkdir()
    if pidfile == "stale":
        pid = _dead_pid()
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        site.pidfile.write_text(f"{pid}\n")
    elif pidfile == "garbage":
        site.pidfile.write_text("not a pid\n")
    result = run_cli(site, "reload", *(["--dry-run"] if dry_run else []))
    assert result.returncode == 3, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("policy-host: "), lines
    assert "Traceback" not in result.stdout + result.stderr
