"""Hostile requests against the real gunicorn and the real nginx.

Both run in a network namespace of the test's own (``support.front``):
nginx with this project's config on 443 (one certificate per tenant, SNI),
8081 (the loopback listener `apply` verifies through) and 80, in front of
``policy-host serve``; and a second ``policy-host serve`` reached directly
on TCP, as nothing in production ever reaches it (it sits behind nginx on
a unix socket), to show what the app alone does.

Fuzzed (hypothesis) and listed: Host headers and SNI names, absolute-form
targets (``GET http://other/...``), Host with ports and userinfo, path
tricks, huge headers, pipelining, slow clients. Whatever comes in:

- never a 5xx, never a redirect (the app, nginx on 443 and 8081);
- a 200 only with the exact policy of the tenant the request names: the
  SNI name, or the effective host (an absolute-form target's authority,
  else the Host header; RFC 9112 section 3.2.2), compared after folding
  case, one final dot and a port; never another tenant's policy, never
  anything else (the TSIG secret in the provider folder, the snapshot);
- a TLS handshake completes only for an SNI name we host exactly.

Requests come from many loopback source addresses, as from many senders,
so nginx's per-client limits (tested separately) do not answer for them.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.front import HTTPS, VERIFY, Front, require_front
from support.rawhttp import (
    NoReplyError,
    Reply,
    SourceAddresses,
    connect,
    exchange,
    request_bytes,
    sni_accepted,
)
from support.strict_policy import parse_policy
from test_server_gunicorn import Server, make_site, serve

from policy_host.model import Policy
from policy_host.render import render

PATH = "/.well-known/mta-sts.txt"
TENANTS = {
    "alpha.example": Policy("enforce", ("mx1.alpha.example", "*.alpha.example"), 604800),
    "beta.example": Policy("testing", ("mx.beta.example",), 86400),
    # Names that contain each other, label-wise and character-wise.
    "mail.alpha.example": Policy("enforce", ("mx.mail.alpha.example",), 1209600),
    "alpha.example.net": Policy("none", (), 86400),
    "xn--bcher-kva.example": Policy("enforce", ("mx.xn--bcher-kva.example",), 604800),
}
POLICIES = {f"mta-sts.{domain}": render(policy) for domain, policy in TENANTS.items()}
HOSTS = sorted(POLICIES)
SOURCES = SourceAddresses()
FUZZ = settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def tenant_yaml(policy: Policy) -> str:
    mx = "".join(f'  - "{p}"\n' for p in policy.mx)
    return f"mode: {policy.mode}\n" + (f"mx:\n{mx}" if mx else "") + f"max_age: {policy.max_age}\n"


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    require_front()
    tenants = {domain: tenant_yaml(policy) for domain, policy in TENANTS.items()}
    with Front(tmp_path_factory.mktemp("front"), tenants, dns=False) as running:
        yield running
        running.nginx.daemon.check_alive()
        assert running.gunicorn is not None
        running.gunicorn.check_alive()


@pytest.fixture(scope="module")
def direct(front: Front, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """gunicorn alone on TCP (inside the same namespace), the example tenants."""
    with serve(make_site(tmp_path_factory.mktemp("direct") / "site")) as server:
        yield server
        server.daemon.check_alive()


def direct_policies(server: Server) -> dict[str, bytes]:
    from policy_host.serve.snapshot import read_snapshot

    snapshot = read_snapshot(server.site.snapshot)
    assert snapshot is not None
    return snapshot.policies_by_host()


# -- what a reply may be ----------------------------------------------------------


def named(raw: bytes | str | None) -> str | None:
    """The host name a Host value or SNI name stands for: case folded, one
    final dot dropped, surrounding blanks ignored, and whatever follows the
    first colon dropped (nginx takes all of that for a port, digits or not;
    the app insists on digits and answers 404 otherwise)."""
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogateescape")
    try:
        text = raw.decode("ascii").strip(" \t")
    except UnicodeDecodeError:
        return None
    text = text.partition(":")[0].lower()
    return text[:-1] if text.endswith(".") else text


def effective_host(target: bytes, host: bytes | None) -> bytes | None:
    """RFC 9112 section 3.2.2: an absolute-form target's authority, else Host."""
    scheme, sep, rest = target.partition(b"://")
    if sep and scheme.lower() in (b"http", b"https"):
        return rest.partition(b"/")[0].partition(b"?")[0]
    return host


def check_reply(
    reply: Reply,
    policies: dict[str, bytes],
    names: list[str | None],
    *,
    secrets: tuple[bytes, ...] = (),
    method: str = "GET",
) -> None:
    context = (reply.status, reply.headers, reply.body[:300], names)
    assert reply.status < 500, context
    assert not 300 <= reply.status < 400, context
    assert reply.header("Location") is None, context
    for secret in secrets:
        assert secret not in reply.body, context
    if reply.status == 200:
        allowed = {policies[name] for name in names if name in policies}
        if method == "HEAD":
            assert reply.body == b"", context
            assert reply.header("Content-Length") in {str(len(b)) for b in allowed}, context
        else:
            assert reply.body in allowed, context
            parse_policy(reply.body)
    else:
        assert b"STSv1" not in reply.body, context
        assert b"max_age" not in reply.body, context


# -- hostile values -----------------------------------------------------------------

TARGETS = [
    PATH,
    PATH + "?x=1",
    PATH + "?../../var/served.json",
    PATH + "#frag",
    PATH + "/",
    PATH + "/..",
    PATH + "/../mta-sts.txt",
    PATH + "%00",
    PATH + ";x",
    PATH + "\\..",
    "/.well-known/%2e%2e/.well-known/mta-sts.txt",
    "/%2e/.well-known/mta-sts.txt",
    "/.well-known/mta-sts%2etxt",
    "/.well-known/mta%2dsts.txt",
    "/%2E%77ell-known/mta-sts.txt",
    "//.well-known/mta-sts.txt",
    "/.well-known//mta-sts.txt",
    "///.well-known///mta-sts.txt",
    "/.well-known/./mta-sts.txt",
    "/./.well-known/mta-sts.txt",
    "/x/../.well-known/mta-sts.txt",
    "/../.well-known/mta-sts.txt",
    "/.WELL-KNOWN/MTA-STS.TXT",
    "/.well-known/",
    "/",
    "*",
    "/../var/served.json",
    "/../../tsig.key",
    "/.well-known/../../tsig.key",
    "/..%2f..%2ftsig.key",
    "/.tmp/dirty",
    "/var/www/",
    "\\.well-known\\mta-sts.txt",
    "/.well-known/mta-sts.txt\x7f",
    "/.well-known/\xe4.txt",
]


def mutate(base: str, how: int, extra: str) -> str:
    return [
        base,
        base.upper(),
        base.title(),
        base + ".",
        base + "..",
        base + ":443",
        base + ":" + extra,
        base + ".:8443",
        "user@" + base,
        base + "@evil.example",
        "x." + base,
        base + ".evil",
        base.replace(".", "%2e"),
        base.replace(".", ".."),
        base.replace("a", "\u0430"),  # Cyrillic a
        base + "\x00.evil",
        base + " ",
        " " + base,
        base + "/",
        base + "/..",
        "../" + base,
        base + "\\",
        base[: len(base) // 2],
        base + base,
        "[" + base + "]",
        base + ", mta-sts.beta.example",
        base.replace("mta-sts.", "mta_sts."),
        base.replace("mta-sts.", ""),
        base + "." + extra,
        extra,
    ][how % 30]


hosts = st.one_of(
    st.builds(
        mutate,
        st.sampled_from(HOSTS),
        st.integers(0, 29),
        st.text(alphabet="0123456789abc.:-", max_size=8),
    ),
    st.builds(
        mutate,
        st.sampled_from([*HOSTS, "mta-sts.example.com", "mta-sts.unknown.example"]),
        st.integers(0, 29),
        st.text(alphabet="0123456789abc.:-", max_size=8),
    ),
    st.sampled_from(["..", ".", ".tmp", ".tmp/dirty", "served.json", "../tsig.key", "", ":"]),
    st.text(max_size=30),
    st.binary(max_size=30).filter(lambda b: b"\r" not in b and b"\n" not in b),
)


def to_bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")


def clean(value: bytes) -> bytes:
    """No CR or LF: one header line stays one line."""
    return value.replace(b"\r", b"").replace(b"\n", b"")


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, bytes, bytes | None]:
    """(method, target, Host value or None)."""
    method = draw(st.sampled_from(["GET", "GET", "GET", "HEAD"]))
    host: bytes | None = clean(to_bytes(draw(hosts)))
    if draw(st.integers(0, 9)) == 0:
        host = None
    if draw(st.integers(0, 3)) == 0:
        authority = clean(to_bytes(draw(hosts))).replace(b" ", b"").replace(b"/", b"")
        scheme = draw(st.sampled_from([b"http://", b"https://", b"HTTP://"]))
        target = scheme + authority + PATH.encode()
    else:
        target = to_bytes(draw(st.sampled_from(TARGETS))).replace(b" ", b"%20")
    return method, target, host


def send(
    front: Front | None, port: int, sni: str | None, method: str, target: bytes, host: bytes | None
) -> Reply | None:
    request = request_bytes(target, host, method=method)
    source = SOURCES.next()
    try:
        if front is not None and port == HTTPS:
            assert sni is not None
            return front.https(sni, request, source=source, head_only=method == "HEAD")
        with connect(port, source=source) as sock:
            return exchange(sock, request, head_only=method == "HEAD")
    except NoReplyError:
        return None  # a server may close on garbage; what matters is what it sends


# -- 1. the app alone --------------------------------------------------------------


@FUZZ
@given(requests())
def test_gunicorn_alone_never_serves_a_wrong_policy_a_redirect_or_a_5xx(
    direct: Server, request_parts: tuple[str, bytes, bytes | None]
) -> None:
    method, target, host = request_parts
    reply = send(None, direct.port, None, method, target, host)
    if reply is not None:
        check_reply(
            reply, direct_policies(direct), [named(effective_host(target, host))], method=method
        )


HOSTILE_HOSTS = [
    mutate(base, how, "x")
    for base in ("mta-sts.alpha.example", "mta-sts.example.com")
    for how in range(30)
] + ["..", ".", ".tmp", ".tmp/dirty", "served.json", "../tsig.key", "", ":", "[::1]", "127.0.0.1"]


def every_trick(port_host: str) -> list[tuple[str, bytes, bytes | None]]:
    """Each target with a hosted name, each hostile host with the policy
    path, and absolute-form targets naming each hostile host."""
    cases: list[tuple[str, bytes, bytes | None]] = []
    for target in TARGETS:
        for method in ("GET", "HEAD"):
            cases.append((method, to_bytes(target).replace(b" ", b"%20"), port_host.encode()))
    for host in HOSTILE_HOSTS:
        raw = clean(to_bytes(host))
        cases.append(("GET", PATH.encode(), raw))
        authority = raw.replace(b" ", b"").replace(b"/", b"")
        cases.append(("GET", b"http://" + authority + PATH.encode(), port_host.encode()))
    return cases


@pytest.mark.parametrize("where", ["gunicorn", "nginx-443", "nginx-8081"])
def test_every_listed_trick_on_every_server(front: Front, direct: Server, where: str) -> None:
    host = "mta-sts.example.com" if where == "gunicorn" else "mta-sts.alpha.example"
    policies = direct_policies(direct) if where == "gunicorn" else POLICIES
    port = {"gunicorn": direct.port, "nginx-443": HTTPS, "nginx-8081": VERIFY}[where]
    for method, target, host_value in every_trick(host):
        reply = send(front if where != "gunicorn" else None, port, host, method, target, host_value)
        if reply is None:
            continue
        names = [named(effective_host(target, host_value))]
        if where == "nginx-443":
            names.append(host)
        check_reply(reply, policies, names, secrets=secrets(front), method=method)


def test_gunicorn_alone_takes_the_host_of_an_absolute_form_target(direct: Server) -> None:
    policies = direct_policies(direct)
    target = b"http://mta-sts.example.net/.well-known/mta-sts.txt"
    reply = send(None, direct.port, None, "GET", target, b"mta-sts.example.com")
    assert reply is not None
    assert (reply.status, reply.body) == (200, policies["mta-sts.example.net"])
    reply = send(None, direct.port, None, "GET", target, None)
    assert reply is not None
    assert (reply.status, reply.body) == (200, policies["mta-sts.example.net"])


# -- 2. nginx in front ----------------------------------------------------------------


@FUZZ
@given(st.sampled_from(HOSTS), requests())
def test_nginx_443_never_serves_a_wrong_policy_a_redirect_or_a_5xx(
    front: Front, sni: str, request_parts: tuple[str, bytes, bytes | None]
) -> None:
    method, target, host = request_parts
    reply = send(front, HTTPS, sni, method, target, host)
    if reply is not None:
        names = [named(sni), named(effective_host(target, host))]
        check_reply(reply, POLICIES, names, secrets=secrets(front), method=method)


@FUZZ
@given(requests())
def test_nginx_verify_listener_never_serves_a_wrong_policy_a_redirect_or_a_5xx(
    front: Front, request_parts: tuple[str, bytes, bytes | None]
) -> None:
    method, target, host = request_parts
    reply = send(front, VERIFY, None, method, target, host)
    if reply is not None:
        names = [named(effective_host(target, host))]
        check_reply(reply, POLICIES, names, secrets=secrets(front), method=method)


def secrets(front: Front) -> tuple[bytes, ...]:
    """What must never be in an answer: the TSIG secret, the snapshot's and
    the state's own contents, a private key."""
    return (front.key.secret.encode(), b'"format":', b"SQLite format", b"PRIVATE KEY")


@pytest.mark.parametrize("domain", sorted(TENANTS))
def test_every_tenant_gets_its_own_policy_by_sni_and_host(front: Front, domain: str) -> None:
    host = f"mta-sts.{domain}"
    for variant in (host, host.upper(), host + ".", host + ":443"):
        reply = front.https(host, request_bytes(PATH, variant), source=SOURCES.next())
        assert (reply.status, reply.body) == (200, POLICIES[host]), variant
        assert (reply.header("Content-Type") or "").split(";")[0] == "text/plain"
        assert reply.header("Content-Length") == str(len(POLICIES[host]))
    head = front.https(host, request_bytes(PATH, host, method="HEAD"), head_only=True)
    assert head.status == 200 and head.header("Content-Length") == str(len(POLICIES[host]))


def test_absolute_form_through_nginx_names_the_host_like_gunicorn(front: Front) -> None:
    target = b"http://mta-sts.beta.example/.well-known/mta-sts.txt"
    for port in (HTTPS, VERIFY):
        reply = send(front, port, "mta-sts.beta.example", "GET", target, b"mta-sts.alpha.example")
        assert reply is not None
        assert (reply.status, reply.body) == (200, POLICIES["mta-sts.beta.example"]), port
    # The absolute-form host is unknown: never the Host header's tenant.
    target = b"http://mta-sts.unknown.example/.well-known/mta-sts.txt"
    reply = send(front, VERIFY, None, "GET", target, b"mta-sts.alpha.example")
    assert reply is not None and reply.status == 404


@settings(max_examples=150, deadline=None)
@given(
    st.one_of(
        st.builds(
            mutate,
            st.sampled_from(HOSTS),
            st.integers(0, 29),
            st.text(alphabet="0123456789abc.:-", max_size=8),
        ),
        st.text(max_size=40),
    ).map(lambda s: s.encode("utf-8", "surrogateescape"))
    | st.binary(max_size=80)
)
def test_tls_handshake_completes_only_for_a_hosted_sni_name(front: Front, sni: bytes) -> None:
    accepted = sni_accepted(HTTPS, sni, source=SOURCES.next())
    if accepted:
        # nginx reads an SNI name as it reads a Host value: whatever follows
        # a colon is taken for a port and ignored. The certificate sent is
        # the one of the name before it, which a client then checks.
        head = sni.partition(b":")[0]
        assert named(head) in POLICIES and head.strip(b" \t") == head, sni
    exact = sni[:-1] if sni.endswith(b".") else sni
    if exact.lower() in {host.encode() for host in HOSTS}:
        assert accepted, sni


def test_no_sni_and_unknown_sni_are_refused(front: Front) -> None:
    assert not sni_accepted(HTTPS, None)
    for name in (b"mta-sts.unknown.example", b"alpha.example", b"localhost", b"127.0.0.1"):
        assert not sni_accepted(HTTPS, name, source=SOURCES.next()), name


# -- 3. sizes, pipelining ------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "body"),
    [
        pytest.param([b"X-Big: " + b"a" * 9000], b"", id="9k-header"),
        pytest.param([b"Cookie: " + b"c=" + b"b" * 7000], b"", id="7k-cookie"),
        pytest.param([b"X-%d: v" % n for n in range(300)], b"", id="300-headers"),
        pytest.param([b"X-%d: " % n + b"v" * 200 for n in range(200)], b"", id="40k-of-headers"),
        pytest.param([b"Content-Length: 4000"], b"b" * 4000, id="4k-body"),
        pytest.param([b"Content-Length: 10485760"], b"b" * 65536, id="10M-body-announced"),
        pytest.param([b"Transfer-Encoding: chunked"], b"4\r\nbody\r\n0\r\n\r\n", id="chunked"),
        pytest.param(
            [b"Content-Length: 3", b"Transfer-Encoding: chunked"], b"0\r\n\r\n", id="cl-and-te"
        ),
        pytest.param([b"Content-Length: 3", b"Content-Length: 4"], b"abcd", id="two-lengths"),
    ],
)
def test_huge_headers_and_bodies_get_4xx_never_5xx(
    front: Front, extra: list[bytes], body: bytes
) -> None:
    for port in (HTTPS, VERIFY):
        request = request_bytes(PATH, "mta-sts.alpha.example", extra=extra) + body
        try:
            if port == HTTPS:
                reply = front.https("mta-sts.alpha.example", request, source=SOURCES.next())
            else:
                reply = front.plain(port, request, source=SOURCES.next())
        except NoReplyError:
            continue
        check_reply(reply, POLICIES, ["mta-sts.alpha.example"], secrets=secrets(front))


def test_huge_target_and_host_get_4xx(front: Front) -> None:
    cases = [
        request_bytes(PATH + "?" + "q" * 20000, "mta-sts.alpha.example"),
        request_bytes(PATH, "mta-sts." + "a" * 10000 + ".example"),
        request_bytes(PATH, "mta-sts.alpha.example", extra=[b"Host: mta-sts.beta.example"]),
    ]
    for request in cases:
        reply = front.https("mta-sts.alpha.example", request, source=SOURCES.next())
        assert 400 <= reply.status < 500, reply


def test_pipelined_requests_each_get_their_own_answer(front: Front) -> None:
    order = [HOSTS[n % len(HOSTS)] for n in range(12)]
    pipeline = b"".join(request_bytes(PATH, host, close=False) for host in order)
    with (
        connect(HTTPS, source=SOURCES.next()) as raw,
        front.tls_context().wrap_socket(raw, server_hostname=HOSTS[0]) as sock,
    ):
        sock.sendall(pipeline)
        sock.settimeout(5)
        data = b""
        deadline = time.monotonic() + 5
        while data.count(b"HTTP/1.1 ") < len(order) or not data.endswith(b"\r\n"):
            chunk = sock.recv(65536)
            if not chunk or time.monotonic() > deadline:
                break
            data += chunk
    bodies = [POLICIES[host] for host in order]
    position = 0
    for body in bodies:
        found = data.find(body, position)
        assert found >= 0, (body, data[position : position + 300])
        position = found + len(body)


# -- 4. limits and slow clients --------------------------------------------------------


def test_one_client_flooding_gets_429_and_others_are_still_served(front: Front) -> None:
    # 80 requests pipelined on one connection: faster than any rate limit.
    count = 80
    pipeline = b"".join(
        request_bytes(PATH, "mta-sts.alpha.example", close=n == count - 1) for n in range(count)
    )
    with (
        connect(HTTPS, source="127.0.3.3") as raw,
        front.tls_context().wrap_socket(raw, server_hostname="mta-sts.alpha.example") as sock,
    ):
        sock.sendall(pipeline)
        data = b""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    statuses = [int(line[9:12]) for line in data.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")]
    assert set(statuses) <= {200, 429}, statuses
    assert 429 in statuses, "nginx's limit_req should stop one client's flood"
    other = front.https(
        "mta-sts.beta.example", request_bytes(PATH, "mta-sts.beta.example"), source=SOURCES.next()
    )
    assert (other.status, other.body) == (200, POLICIES["mta-sts.beta.example"])


def test_unknown_hosts_on_a_hosted_name_wait_their_turn_and_tenants_do_not(
    front: Front,
) -> None:
    """Requests whose Host names no hosted server (on a TLS connection made
    for one that is) share one bucket in nginx, whoever sends them: a burst
    of them is answered 404 at the bucket's pace (or 429 beyond its queue),
    while a hosted name is answered at once meanwhile; none of them writes
    a line to nginx's error log (a flood of them would hide real errors)."""
    count = 120
    unknown = request_bytes(PATH, "mta-sts.nobody.example")
    logged = front.nginx.error_log.stat().st_size
    started = time.monotonic()
    answers: list[tuple[int, float]] = []
    lock = threading.Lock()

    def ask() -> None:
        reply = front.https("mta-sts.alpha.example", unknown, source=SOURCES.next(), timeout=15)
        with lock:
            answers.append((reply.status, time.monotonic() - started))

    threads = [threading.Thread(target=ask, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)  # most of them are now waiting in nginx
    before = time.monotonic()
    known = front.https(
        "mta-sts.beta.example", request_bytes(PATH, "mta-sts.beta.example"), source=SOURCES.next()
    )
    known_took = time.monotonic() - before
    for thread in threads:
        thread.join(timeout=20)
    assert (known.status, known.body) == (200, POLICIES["mta-sts.beta.example"])
    assert len(answers) == count
    statuses = {status for status, _ in answers}
    assert statuses <= {404, 429}, statuses
    # 50 a second: the burst cannot all be answered within a second; the
    # tenant's request did not wait behind it.
    assert max(took for status, took in answers if status == 404) > 1.0
    assert known_took < 1.0, known_took
    with front.nginx.error_log.open("rb") as log:
        log.seek(logged)
        new = log.read().decode(errors="replace").splitlines()
    noise = [line for line in new if "[info]" not in line and "[notice]" not in line]
    assert noise == [], noise[:5]


def _slow_connections(front: Front, count: int) -> list[socket.socket]:
    """``count`` clients that stall: a third never start TLS, a third
    finish TLS and send nothing, a third send half a request."""
    held: list[socket.socket] = []
    partial = b"GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: mta-sts.alpha"
    context = front.tls_context()
    for n in range(count):
        raw = connect(HTTPS, source=f"127.0.9.{n + 1}")
        if n % 3 == 0:
            held.append(raw)
            continue
        tls = context.wrap_socket(raw, server_hostname="mta-sts.alpha.example")
        if n % 3 == 2:
            tls.sendall(partial)
        held.append(tls)
    return held


def test_slow_clients_do_not_hold_up_other_senders(front: Front) -> None:
    held = _slow_connections(front, 60)
    try:
        # More stalled clients than gunicorn has threads: nginx holds them.
        slowest = 0.0
        for host in HOSTS * 3:
            started = time.monotonic()
            reply = front.https(host, request_bytes(PATH, host), source=SOURCES.next())
            slowest = max(slowest, time.monotonic() - started)
            assert (reply.status, reply.body) == (200, POLICIES[host])
        assert slowest < 1.0, slowest
        # A client that trickles its request byte by byte still gets it.
        request = request_bytes(PATH, "mta-sts.beta.example")
        with (
            connect(HTTPS, source=SOURCES.next()) as raw,
            front.tls_context().wrap_socket(raw, server_hostname="mta-sts.beta.example") as sock,
        ):
            for byte in request[:-1]:
                sock.sendall(bytes([byte]))
                time.sleep(0.01)
            reply = exchange(sock, request[-1:])
        assert (reply.status, reply.body) == (200, POLICIES["mta-sts.beta.example"])
    finally:
        for stalled in held:
            stalled.close()


def test_gunicorn_alone_serves_others_while_a_few_clients_stall(direct: Server) -> None:
    """gunicorn has no header timeout (each stalled client holds a thread:
    serve.workers x serve.threads of them), which is why it only ever sits
    behind nginx; a few stalled clients must not stop it."""
    policies = direct_policies(direct)
    held = []
    try:
        for n in range(3):
            sock = connect(direct.port, source=f"127.0.8.{n + 1}")
            sock.sendall(b"GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: mta-")
            held.append(sock)
        for host in sorted(policies) * 2:
            reply = send(None, direct.port, None, "GET", PATH.encode(), host.encode())
            assert reply is not None and (reply.status, reply.body) == (200, policies[host])
    finally:
        for sock in held:
            sock.close()


def test_port_80_never_answers_with_a_policy(front: Front) -> None:
    for host in (*HOSTS, "..", "mta-sts.unknown.example"):
        reply = front.plain(80, request_bytes(PATH, host), source=SOURCES.next())
        assert reply.status < 500
        assert b"STSv1" not in reply.body


def test_concurrent_hostile_and_normal_traffic_keeps_serving(front: Front) -> None:
    """Garbage from some clients while others fetch: the fetches all work."""
    stop = threading.Event()
    errors: list[str] = []

    def garbage() -> None:
        junk = [b"\x16\x03\x01\x00\x05hello", b"GET / HTTP/9.9\r\n\r\n", b"\x00" * 100]
        n = 0
        while not stop.is_set():
            try:
                with connect(HTTPS, source=SOURCES.next(), timeout=1) as sock:
                    sock.sendall(junk[n % len(junk)])
                    sock.recv(100)
            except OSError:
                pass
            n += 1

    threads = [threading.Thread(target=garbage, daemon=True) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        for host in HOSTS * 4:
            try:
                reply = front.https(host, request_bytes(PATH, host), source=SOURCES.next())
            except (OSError, ssl.SSLError) as exc:
                errors.append(repr(exc))
                continue
            if (reply.status, reply.body) != (200, POLICIES[host]):
                errors.append(f"{host}: {reply.status}")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=5)
    assert not errors, errors
