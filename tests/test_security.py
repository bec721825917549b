"""Security properties (docs/security.md says what each layer defends):

1. The TSIG secret is never printed, logged (even with ``--debug``) or
   written anywhere but its key file: not by `apply`, its ``--dry-run`` and
   ``--json`` reports, its errors (a refused key, a malformed key file), the
   server's logs, nginx's logs, the state or the served files.
2. A key file group or others may read is refused, whatever its mode or a
   symlink in front of it says, and nothing is changed.
3. The server never reads a file path built from a request: an audit hook
   (PEP 578) in the real gunicorn master and workers records every file
   the processes touch while hostile requests carrying a marker arrive;
   the marker never shows up (a control proves the hook sees the workers).
4. The shipped systemd units are sandboxed and stay so (systemd's own
   exposure score, and the settings each unit relies on); the shipped
   nginx config keeps its limits. (tests/test_deploy.py checks the server
   unit's type and reload; this extends it to every unit.)
"""

from __future__ import annotations

import configparser
import json
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.fixtures_dns import in_ci
from support.front import Front, require_front
from support.layout import EXAMPLES, ROOT
from support.procs import LOOPBACK, Daemon, free_port, port_open, wait_until
from support.rawhttp import connect, exchange, request_bytes

AUDITED = ROOT / "tests" / "support" / "audited.py"
DEPLOY = ROOT / "deploy"
NGINX = ROOT / "nginx"
TENANT = "secure.example"


def tenant_yaml(max_age: int) -> str:
    return f"mode: enforce\nmx:\n  - mx.secure.example\nmax_age: {max_age}\n"


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    require_front()
    with Front(
        tmp_path_factory.mktemp("security"), {TENANT: tenant_yaml(604800)}, verify_timeout=1
    ) as running:
        yield running


def no_secret(front: Front, *texts: str) -> None:
    for text in texts:
        assert front.key.secret not in text


# -- 1. the secret is never shown ---------------------------------------------------


def test_apply_never_shows_the_secret_even_with_debug(front: Front) -> None:
    front.write_tenant(TENANT, tenant_yaml(604801))
    dry = front.cli("--debug", "apply", "--dry-run")
    dry_json = front.cli("--debug", "apply", "--dry-run", "--json")
    assert dry.returncode == 0 and dry_json.returncode == 0, dry.stderr + dry_json.stderr
    assert "<secret not shown>" in dry.stdout
    assert "<secret not shown>" in "".join(json.loads(dry_json.stdout)["dns_updates"])
    done = front.cli("--debug", "apply", "--json")
    assert done.returncode == 0, done.stderr
    assert "DEBUG" in done.stderr  # the debug log was on
    no_secret(front, dry.stdout, dry.stderr, dry_json.stdout, dry_json.stderr)
    no_secret(front, done.stdout, done.stderr)


def test_a_refused_key_is_reported_without_either_secret(front: Front) -> None:
    good = front.key_file.read_text()
    wrong_secret = "d3Jvbmcgc2VjcmV0IGZvciB0aGUgdGVzdCBvbmx5IQ=="
    front.key_file.write_text(good.replace(front.key.secret, wrong_secret))
    front.write_tenant(TENANT, tenant_yaml(604802))
    try:
        done = front.cli("--debug", "apply")
    finally:
        front.key_file.write_text(good)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "TSIG" in done.stderr
    no_secret(front, done.stdout, done.stderr)
    assert wrong_secret not in done.stdout + done.stderr
    assert front.cli("apply").returncode == 0


MARKER_SECRET = "TWFya2VyU2VjcmV0Rm9yVGhlVGVzdHM="  # base64 of "MarkerSecretForTheTests"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(
            'key "k" { algorithm hmac-sha256; secret "%%MarkerSecret!!"; };\n',
            "the secret is not base64",
            id="not-base64",
        ),
        pytest.param(
            f'key "k" {{ algorithm hmac-md5; secret "{MARKER_SECRET}"; }};\n',
            "is not one of",
            id="md5",
        ),
        pytest.param(
            f'key "a" {{ secret "{MARKER_SECRET}"; }};\nkey "b" {{ secret "{MARKER_SECRET}"; }};\n',
            "expected one key",
            id="two-keys",
        ),
        pytest.param(
            f'key "k" {{ algorithm hmac-sha256; secret "{MARKER_SECRET}é"; }};\n',
            "not ASCII text",
            id="not-ascii",
        ),
        pytest.param(f"{MARKER_SECRET}\n", "expected one key", id="bare-secret"),
        pytest.param(
            f'key "k" {{ algorithm hmac-sha256; secret {MARKER_SECRET}; }};\n',
            "has no secret",
            id="unquoted",
        ),
    ],
)
def test_a_malformed_key_file_is_refused_without_showing_its_secret(
    front: Front, content: str, message: str
) -> None:
    good = front.key_file.read_text()
    state = (front.state_dir / "state.sqlite3").read_bytes()
    front.key_file.write_text(content, encoding="utf-8")
    try:
        for args in (("--debug", "apply"),):
            done = front.cli(*args)
            assert done.returncode == 2, done.stdout + done.stderr
            assert message in done.stderr, done.stderr
            for secret in (MARKER_SECRET, "MarkerSecret", front.key.secret):
                assert secret not in done.stdout + done.stderr, (args, done.stderr)
    finally:
        front.key_file.write_text(good)
    assert (front.state_dir / "state.sqlite3").read_bytes() == state


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o601])
def test_a_key_file_others_may_read_is_refused_and_nothing_changes(front: Front, mode: int) -> None:
    state = (front.state_dir / "state.sqlite3").read_bytes()
    front.write_tenant(TENANT, tenant_yaml(604803 + mode))
    front.key_file.chmod(mode)
    try:
        for args in (("apply",),):
            done = front.cli(*args)
            assert done.returncode == 2, done.stdout + done.stderr
            assert f"accessible by group or others (mode {mode:04o})" in done.stderr
            no_secret(front, done.stdout, done.stderr)
    finally:
        front.key_file.chmod(0o600)
    assert (front.state_dir / "state.sqlite3").read_bytes() == state


def test_a_symlink_does_not_hide_a_loose_key_file(front: Front, tmp_path: Path) -> None:
    loose = tmp_path / "loose.key"
    shutil.copyfile(front.key_file, loose)
    loose.chmod(0o644)
    saved = front.key_file.read_bytes()
    front.key_file.unlink()
    front.key_file.symlink_to(loose)
    try:
        done = front.cli("apply", "--dry-run")
    finally:
        front.key_file.unlink()
        front.key_file.write_bytes(saved)
        front.key_file.chmod(0o600)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "accessible by group or others (mode 0644)" in done.stderr


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_a_key_file_only_its_owner_reads_is_accepted(front: Front, mode: int) -> None:
    front.key_file.chmod(mode)
    try:
        done = front.cli("apply", "--dry-run")
    finally:
        front.key_file.chmod(0o600)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_secret_is_in_no_file_but_its_key_file(front: Front) -> None:
    """Logs (gunicorn, nginx), the state, the snapshot, the served files,
    the generated nginx config: everything the test's tree holds."""
    assert front.cli("apply").returncode == 0
    secret = front.key.secret.encode()
    found = []
    for path in front.root.rglob("*"):
        if path == front.key_file or path.is_symlink() or not path.is_file():
            continue
        if secret in path.read_bytes():
            found.append(str(path))
    assert found == []


# -- 2. the server reads no path built from a request ----------------------------------


def test_the_server_never_touches_a_path_built_from_a_request(tmp_path: Path) -> None:
    request_marker = "zq" + secrets.token_hex(6)
    dir_marker = "dm" + secrets.token_hex(6)
    site = tmp_path / "site"
    shutil.copytree(EXAMPLES, site, ignore=shutil.ignore_patterns("var"))
    config = site / "config.yaml"
    text = re.sub(r"(?m)^state_dir:.*$", f"state_dir: state-{dir_marker}", config.read_text())
    config.write_text(text if "state_dir:" in text else text + f"state_dir: state-{dir_marker}\n")
    log = tmp_path / "audit.log"
    port = free_port("tcp")
    argv = [sys.executable, str(AUDITED), str(log), "--config", str(config), "serve",
            "--bind", f"{LOOPBACK}:{port}", "--workers", "2"]  # fmt: skip
    with Daemon(argv, name="audited", workdir=tmp_path / "run", ready_timeout=20,
                ready=lambda: port_open(LOOPBACK, port)) as daemon:  # fmt: skip
        # Both workers booted and served once: everything after this is
        # the requests' doing (or the snapshot watcher's, the control).
        for _ in range(20):
            fetch(port, request_bytes("/.well-known/mta-sts.txt", "mta-sts.example.com"))
        start = log.stat().st_size
        m = request_marker
        hostile = [
            request_bytes(f"/.well-known/{m}", "mta-sts.example.com"),
            request_bytes(f"/../../{m}/etc/passwd", "mta-sts.example.com"),
            request_bytes(f"/.well-known/mta-sts.txt?file=../../{m}", "mta-sts.example.com"),
            request_bytes("/.well-known/mta-sts.txt", f"mta-sts.{m}.example"),
            request_bytes("/.well-known/mta-sts.txt", f"../{m}"),
            request_bytes("/.well-known/mta-sts.txt", f"mta-sts.example.com/../{m}"),
            request_bytes(f"http://mta-sts.{m}.example/.well-known/mta-sts.txt", "x"),
            request_bytes(f"/%2e%2e/{m}", "mta-sts.example.com"),
            request_bytes(f"/{m}.yaml", f"mta-sts.{m}"),
            request_bytes(
                "/.well-known/mta-sts.txt",
                "mta-sts.example.com",
                extra=[f"Cookie: f=../{m}".encode(), f"X-File: /{m}".encode()],
            ),
            request_bytes("/.well-known/mta-sts.txt", f"mta-sts.{m}", method="HEAD"),
            request_bytes(
                f"/{m}", "mta-sts.example.com", method="POST", extra=[b"Content-Length: 0"]
            ),
        ]
        for _ in range(5):
            for request in hostile:
                fetch(port, request)
        # Control: a change to the snapshot makes every worker open it
        # (under state-<dir marker>), so workers' opens are in the log.
        snapshot = site / f"state-{dir_marker}" / "served.json"
        snapshot.write_bytes(snapshot.read_bytes())
        wait_until(
            lambda: log.read_bytes()[start:].count(f"state-{dir_marker}/served.json".encode()) >= 2,
            10.0,
            what="both workers to reload the snapshot",
        )
        daemon.check_alive()
    after = log.read_bytes()[start:].decode("utf-8", "replace")
    touched = [line for line in after.splitlines() if request_marker in line]
    assert touched == [], touched[:5]
    started = [
        line for line in after.splitlines() if line.split(" ")[1:2] and line.split(" ")[1] in
        ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn")
    ]  # fmt: skip
    assert started == [], started[:5]


def fetch(port: int, request: bytes) -> None:
    with connect(port) as sock:
        reply = exchange(sock, request)
    assert reply.status < 500


# -- 3. the shipped units and nginx config --------------------------------------------


def unit(name: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, delimiters=("="))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(DEPLOY / name)
    return parser


SERVICES = sorted(p.name for p in DEPLOY.glob("*.service"))
EVERY_SERVICE = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "RestrictNamespaces": "yes",
    "LockPersonality": "yes",
    "SystemCallArchitectures": "native",
}
# Units that run as the unprivileged service user.
UNPRIVILEGED = {
    "User": "policy-host",
    "CapabilityBoundingSet": "",
    "SystemCallFilter": "@system-service",
    "UMask": "0027",
}
# systemd-analyze security --offline exposure, at most (lower is better).
EXPOSURE = {
    "policy-host.service": 2.0,
    "policy-host-watch.service": 2.0,
    "policy-host-apply.service": 3.0,
    "policy-host-check.service": 3.0,
    "policy-host-promote.service": 3.0,
    "policy-host-reports-prune.service": 2.0,
    "policy-host-reports-metrics.service": 2.0,
    # Runs as root: certbot's files and nginx's reload are root's.
    "policy-host-certs.service": 6.5,
}


@pytest.mark.parametrize("name", SERVICES)
def test_every_service_unit_is_sandboxed(name: str) -> None:
    service = unit(name)["Service"]
    for key, value in EVERY_SERVICE.items():
        assert service.get(key) == value, (name, key)
    families = set((service.get("RestrictAddressFamilies") or "").split())
    assert families and families <= {"AF_UNIX", "AF_INET", "AF_INET6"}, name
    if service.get("User"):
        for key, value in UNPRIVILEGED.items():
            assert service.get(key) == value, (name, key)
        # Writable: its own state (and runtime) folder only, and for the
        # metrics unit node_exporter's textfile folder (if there is one),
        # for promote and the guard (check) the tenant files they edit.
        extra = {
            "policy-host-reports-metrics.service": "-/var/lib/prometheus/node-exporter",
            "policy-host-check.service": "/etc/policy-host/tenants",
            "policy-host-promote.service": "/etc/policy-host/tenants",
        }
        if name in extra:
            assert service.get("ReadWritePaths") == extra[name], name
        else:
            assert "ReadWritePaths" not in service, name
    else:
        assert name == "policy-host-certs.service", f"{name} runs as root"
        raw = (DEPLOY / name).read_text()
        paths = {p for line in re.findall(r"(?m)^ReadWritePaths=(.*)$", raw) for p in line.split()}
        assert paths == {
            "/etc/letsencrypt",
            "/var/lib/letsencrypt",
            "/var/log/letsencrypt",
            "/var/www/policy-host-acme",
            "/etc/nginx/policy-host",
            "/var/log/nginx",
            "/var/lib/policy-host",
        }, paths


def test_the_server_unit_is_the_most_confined() -> None:
    service = unit("policy-host.service")["Service"]
    for key, value in {
        "MemoryDenyWriteExecute": "yes",
        "RestrictSUIDSGID": "yes",
        "RestrictRealtime": "yes",
        "ProtectProc": "invisible",
        "ProtectClock": "yes",
        "ProtectHostname": "yes",
        "ProtectKernelLogs": "yes",
        "AmbientCapabilities": "",
        "RuntimeDirectoryMode": "0750",
        "StateDirectoryMode": "0750",
    }.items():
        assert service.get(key) == value, key


@pytest.mark.parametrize("name", SERVICES)
def test_systemd_rates_every_unit_exposure_within_bounds(name: str) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if in_ci():
            pytest.fail("systemd-analyze is not installed; CI=true, so this is a failure")
        pytest.skip("systemd-analyze is not installed")
    done = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(DEPLOY / name)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", done.stdout)
    assert match, done.stdout + done.stderr
    assert float(match.group(1)) <= EXPOSURE[name], done.stdout.splitlines()[-1]


def nginx_directives(text: str) -> list[tuple[str, list[str]]]:
    """(name, arguments) of every simple directive, comments dropped."""
    text = re.sub(r"#[^\n]*", "", text)
    found = []
    for statement in re.split(r"[;{}]", text):
        words = statement.split()
        if words:
            found.append((words[0], words[1:]))
    return found


def seconds(value: str) -> float:
    number, unit_ = re.fullmatch(r"([0-9]+)(ms|s|m)?", value).groups()  # type: ignore[union-attr]
    return float(number) * {"ms": 0.001, "s": 1, "m": 60, None: 1}[unit_]


def size(value: str) -> int:
    number, unit_ = re.fullmatch(r"([0-9]+)([kKmM]?)", value).groups()  # type: ignore[union-attr]
    return int(number) * {"": 1, "k": 1024, "K": 1024, "m": 1 << 20, "M": 1 << 20}[unit_]


def test_the_nginx_config_keeps_its_limits() -> None:
    site = (NGINX / "policy-host.conf").read_text()
    snippet = (NGINX / "policy-host-tenant.conf").read_text()
    every = nginx_directives(site + "\n" + snippet)
    tenant = dict((name, args) for name, args in nginx_directives(snippet))
    # Per-client limits exist and are applied to every tenant's server.
    zones = {args[1] for name, args in every if name == "limit_req_zone"}
    rates = [a for name, args in every if name == "limit_req_zone" for a in args if "r/s" in a]
    assert zones and rates and all(int(r.split("=")[1].removesuffix("r/s")) <= 100 for r in rates)
    assert any(name == "limit_conn_zone" for name, _ in every)
    assert "limit_req" in tenant and "limit_conn" in tenant
    assert int(tenant["limit_conn"][1]) <= 100
    burst = [a for a in tenant["limit_req"] if a.startswith("burst=")]
    assert burst and int(burst[0].split("=")[1]) <= 100
    # Small requests only, and no slow client holds a connection for long.
    assert size(tenant["client_max_body_size"][0]) <= 64 * 1024
    assert size(tenant["client_header_buffer_size"][0]) <= 8 * 1024
    count, each = tenant["large_client_header_buffers"]
    assert int(count) * size(each) <= 64 * 1024
    for name in ("client_header_timeout", "client_body_timeout", "send_timeout"):
        assert seconds(tenant[name][0]) <= 30, name
    assert seconds(tenant["keepalive_timeout"][0]) <= 75
    # TLS 1.2 and 1.3 only, no version banner, no compression.
    assert set(tenant["ssl_protocols"]) <= {"TLSv1.2", "TLSv1.3"}
    assert tenant["server_tokens"] == ["off"]
    assert tenant["gzip"] == ["off"]
    # No redirects and no rewriting where senders fetch.
    assert not [a for n, a in nginx_directives(snippet) if n == "return" and a[0].startswith("3")]
    assert not [a for n, a in nginx_directives(snippet) if n == "rewrite"]
    assert tenant.get("proxy_redirect") == ["off"]
    # Unknown SNI names are refused at the handshake by the default server.
    default_443 = re.search(r"server\s*\{[^}]*listen 443 ssl default_server;[^}]*\}", site)
    assert default_443 and "ssl_reject_handshake on;" in default_443.group(0)
    # The loopback verification listener is loopback only.
    listens = [args for name, args in nginx_directives(site) if name == "listen"]
    plain = [args[0] for args in listens if "ssl" not in args and not args[0].endswith("80")]
    assert plain and all(address.startswith("127.0.0.1:") for address in plain), plain


def test_the_gunicorn_limits_refuse_large_requests_early() -> None:
    from policy_host.read.config import load_config
    from policy_host.serve.server import PolicyServer

    config = load_config(EXAMPLES / "config.yaml")
    options = PolicyServer(config, bind="127.0.0.1:1", workers=1, threads=1).options
    assert options["limit_request_line"] <= 4096
    assert options["limit_request_fields"] <= 100
    assert options["limit_request_field_size"] <= 8190
    assert options["timeout"] <= 60


def test_docs_security_md_covers_the_threat_model() -> None:
    text = (ROOT / "docs" / "security.md").read_text()
    for heading in ("Threat model", "What each layer defends", "Reporting a problem"):
        assert f"## {heading}" in text, heading
    for word in ("SNI", "Host", "TSIG", "nginx", "gunicorn", "systemd", "tenant file"):
        assert word in text, word
