"""Install the way a provider does, then serve a first customer to a real sender.

In a network namespace of the test's own: knot (the provider's DNS primary,
TSIG dynamic updates, and the customer's zone), unbound on port 53, pebble
(the ACME server, with a private CA for its own HTTPS). A fresh server in a
mount namespace (``support.machine``: this machine's Debian packages,
copy-on-write /etc, /var, /opt, /run, /usr/local; nothing real is touched)
gets a copy of this tree at /opt/policy-host, and then exactly what
docs/install.md has the provider type:

1. ``deploy/install`` with the provider's names (the Python dependencies
   come from a local wheel folder: the namespace has no internet), from a
   shell whose first ``python3`` on PATH is a private one; a second run
   changes nothing;
2. the server started as its unit would (as ``policy-host``, / read-only
   but the unit's writable paths, /root hidden), nginx with Debian's own
   nginx.conf and the installed site;
3. a customer onboarded: ``show``, its two CNAMEs (taken from ``show``'s
   output) in its zone, ``certs`` (certificate from pebble), ``apply``;
   ``postfix-mta-sts-resolver`` fetches the policy through DNS and HTTPS;
4. ``apply`` run as root is refused with a message and changes nothing;
   the service user's ``reload`` and ``apply`` still work, and the app
   itself (not only nginx's files) serves the edited policy;
5. TLS reports by HTTPS (docs/install.md section 11): with an https:
   destination in ``tlsrpt.rua`` the install puts the reports snippet in
   place, and the report name's server block once its certificate is
   there; nginx then passes a POST to the app; without the destination
   the server block goes.

Needs root and Debian's knot, unbound, pebble, certbot, nginx, iproute2,
util-linux: without them skipped, except under CI=true, where it fails.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.CNAME
import pytest
from support.dnsservers import KnotServer, TsigKey, UnboundResolver, Zone
from support.layout import ROOT
from support.machine import Machine, UnitSandbox, owners, uid_of
from support.netns import NetNamespace, private_resolv_conf
from support.pebble import Pebble
from support.procs import LOOPBACK, Daemon, port_open, wait_until
from support.tls import make_ca
from test_stack_certs import require_stack

SENDER = ROOT / "tests" / "support" / "sts_sender.py"
PROVIDER = "provider.example"
POLICY_HOST = f"mta-sts.{PROVIDER}"
ID_ZONE = f"_mta-sts.{PROVIDER}"
CUSTOMER = "customer.example"
USER = "policy-host"
CLI = "/opt/policy-host/.venv/bin/policy-host"
AS_SERVICE_USER = ("runuser", "-u", USER, "--")
# Installed paths whose owner, mode and bytes a second install must not change.
INSTALLED = (
    "/etc/policy-host",
    "/etc/nginx/sites-enabled",
    "/etc/nginx/snippets",
    "/etc/systemd/system",
    "/etc/letsencrypt/renewal-hooks",
    "/var/lib/policy-host",
    "/opt/policy-host/.venv/bin",
)
# The whole scenario must stay well inside this (seconds).
BUDGET = 120
REPORT_NAME = f"tlsrpt.{PROVIDER}"
REPORTS_SITE = "/etc/nginx/policy-host/reports.conf"
REPORTS_SNIPPET = "/etc/nginx/snippets/policy-host-reports.conf"


def run(
    argv: list[str], timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def wheelhouse(folder: Path) -> Path:
    """The runtime dependencies (and the build backend) as wheels, fetched
    from the package index before the test enters its namespace."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wanted = [*project["project"]["dependencies"], *project["build-system"]["requires"]]
    done = run([sys.executable, "-m", "pip", "download", "-q", "-d", str(folder), *wanted], 300)
    assert done.returncode == 0, done.stdout + done.stderr
    return folder


@dataclass
class World:
    root: Path
    machine: Machine
    knot: KnotServer
    pebble: Pebble
    wheels: Path
    key_file: Path
    resolv_conf: Path

    def sh(self, *argv: str, user: bool = False) -> tuple[int, str]:
        """A command on the server (as root, or as the service user)."""
        done = self.machine.run([*AS_SERVICE_USER, *argv] if user else argv)
        return done.returncode, done.stdout + done.stderr

    def ok(self, *argv: str, user: bool = False) -> str:
        status, output = self.sh(*argv, user=user)
        assert status == 0, f"{argv}: exit {status}\n{output}"
        return output


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    require_stack()
    root = tmp_path_factory.mktemp("install")
    wheels = wheelhouse(root / "wheels")
    key = TsigKey.generate()
    key_file = root / "policy-host.key"
    key_file.write_text(
        f'key "{key.name}" {{ algorithm {key.algorithm}; secret "{key.secret}"; }};\n'
    )
    resolv_conf = root / "resolv.conf"
    resolv_conf.write_text("nameserver 127.0.0.1\noptions timeout:2 attempts:1\n")
    zones = [
        Zone(PROVIDER, ["mta-sts A 127.0.0.1", "ns A 127.0.0.1"], dynamic=True),
        Zone(CUSTOMER, ["@ MX 10 mx.customer.example.", "mx A 127.0.0.1"], dynamic=True),
    ]
    netns = NetNamespace("ph-install")
    with contextlib.ExitStack() as stack:
        stack.enter_context(netns)
        stack.enter_context(netns.entered())
        knot = stack.enter_context(KnotServer(zones, key))
        stack.enter_context(UnboundResolver(knot, port=53))
        pebble = stack.enter_context(Pebble(dns_server=f"{LOOPBACK}:53", workdir=root / "pebble"))
        machine = stack.enter_context(Machine(root / "machine"))
        yield World(root, machine, knot, pebble, wheels, key_file, resolv_conf)


def fingerprint(world: World) -> dict[str, tuple[int, int, bytes]]:
    found = {}
    for top in INSTALLED:
        base = world.machine.path(top)
        for path in sorted(base.rglob("*")):
            st = path.lstat()
            data = path.read_bytes() if path.is_file() and not path.is_symlink() else b""
            found[f"{top}/{path.relative_to(base)}"] = (st.st_uid, st.st_mode, data)
    return found


def install(world: World, *options: str) -> str:
    # A root shell whose first python3 is this test's interpreter (here it
    # may be private to root): the install must not build on it.
    private = str(Path(sys.executable).resolve().parent)
    done = world.machine.run(
        ["/opt/policy-host/deploy/install", "--wheels", str(world.wheels), *options],
        env={"PATH": f"{private}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stderr


@contextlib.contextmanager
def services(world: World) -> Iterator[None]:
    """The server as deploy/policy-host.service runs it, and nginx."""
    machine = world.machine
    unit = UnitSandbox(ROOT / "deploy" / "policy-host.service")
    socket_path = machine.path("/run/policy-host/gunicorn.sock")

    # The sandbox holds: the unit's paths are writable, the rest is not.
    probe = (
        "touch /var/lib/policy-host/.probe && rm /var/lib/policy-host/.probe"
        " && ! touch /etc/policy-host/.probe /opt/policy-host/.probe /usr/.probe 2>/dev/null"
        ' && [ -z "$(ls -A /root)" ] && id -un'
    )
    done = machine.run(unit.argv(["sh", "-c", probe]))
    assert (done.returncode, done.stdout) == (0, f"{USER}\n"), done.stdout + done.stderr

    def server_ready() -> bool:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(socket_path))
        return True

    with (
        Daemon(
            machine.argv(unit.argv()),
            name="gunicorn",
            workdir=world.root / "gunicorn",
            ready=server_ready,
            ready_timeout=30,
        ) as server,
        Daemon(
            machine.argv(["nginx", "-g", "daemon off;"]),
            name="nginx",
            workdir=world.root / "nginx",
            ready=lambda: all(port_open(LOOPBACK, p) for p in (80, 443, 8081)),
        ) as nginx,
    ):
        yield
        server.check_alive()
        nginx.check_alive()


def from_app(world: World, host: str) -> tuple[int, bytes]:
    """The policy from gunicorn itself (its socket), not from nginx's files."""
    conn = http.client.HTTPConnection("localhost", timeout=5)
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(5)
    sock.connect(str(world.machine.path("/run/policy-host/gunicorn.sock")))
    conn.sock = sock
    try:
        conn.request("GET", "/.well-known/mta-sts.txt", headers={"Host": host})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def on_port_80(host: str, path: str) -> tuple[int, str | None]:
    conn = http.client.HTTPConnection(LOOPBACK, 80, timeout=5)
    try:
        conn.request("GET", path, headers={"Host": host})
        response = conn.getresponse()
        response.read()
        return response.status, response.getheader("Location")
    finally:
        conn.close()


def sender(world: World, root_ca: Path, *domains: str) -> dict[str, dict[str, object]]:
    """What postfix-mta-sts-resolver finds for each ``DOMAIN[=KNOWN_ID]``."""
    argv = private_resolv_conf(world.resolv_conf, [sys.executable, str(SENDER), *domains])
    env = {k: v for k, v in os.environ.items() if k != "SSL_CERT_DIR"}
    done = run(argv, 60, env={**env, "SSL_CERT_FILE": str(root_ca)})
    assert done.returncode == 0, done.stdout + done.stderr
    return {line["domain"]: line for line in map(json.loads, done.stdout.splitlines())}


def add_customer_records(world: World, show_output: str) -> None:
    """The customer adds the two CNAMEs exactly as ``show`` printed them."""
    records = re.findall(r"^(\S+)\s+\d+\s+IN\s+CNAME\s+(\S+)$", show_output, re.MULTILINE)
    assert [name for name, _ in records] == [f"mta-sts.{CUSTOMER}.", f"_mta-sts.{CUSTOMER}."]
    update = world.knot.update(CUSTOMER)
    for name, target in records:
        rdata = dns.rdtypes.ANY.CNAME.CNAME(  # type: ignore[no-untyped-call]
            dns.rdataclass.IN, dns.rdatatype.CNAME, dns.name.from_text(target)
        )
        update.add(name, 60, rdata)
    assert world.knot.send_update(update).rcode() == 0


def tenant(mx: tuple[str, ...]) -> str:
    return "mode: testing\nmx:\n" + "".join(f"  - {m}\n" for m in mx) + "max_age: 604800\n"


def first_install(world: World) -> str:
    """This tree copied to /opt/policy-host, installed with the provider's
    answers; what the install said."""
    world.machine.copy_in(
        ROOT,
        "/opt/policy-host",
        [".git", ".venv", "__pycache__", "*.egg-info", ".*_cache", "var"],
    )
    return install(
        world,
        *("--policy-host", POLICY_HOST, "--id-zone", ID_ZONE),
        *("--dns-primary", f"127.0.0.1:{world.knot.port}", "--tsig-key", str(world.key_file)),
        *("--acme-directory", world.pebble.directory_url, "--acme-ca", str(world.pebble.tls_ca)),
        *("--acme-email", f"hostmaster@{PROVIDER}"),
    )


def test_a_provider_installs_and_serves_a_first_customer(world: World) -> None:
    started = time.monotonic()
    machine = world.machine
    assert not machine.path("/etc/policy-host").exists(), "the machine is not fresh"

    # 1. The install, and a second run that changes nothing.
    said = first_install(world)
    assert "changed: wrote /etc/letsencrypt/renewal-hooks/deploy/policy-host-nginx" in said
    venv = machine.path("/opt/policy-host/.venv/pyvenv.cfg").read_text()
    assert "home = /usr/bin\n" in venv, venv  # the system interpreter
    uid = uid_of(machine, USER)
    state = machine.path("/var/lib/policy-host").stat()
    assert (state.st_uid, state.st_mode & 0o777) == (uid, 0o750)  # before any unit ran
    before = fingerprint(world)
    assert install(world).splitlines()[-1] == "install: nothing to change"
    assert fingerprint(world) == before

    # The units that edit tenant files (promote, and check's guard) may
    # write there and in the state folder, as the service user, nothing else.
    for name in ("policy-host-promote.service", "policy-host-check.service"):
        assert (
            machine.path(f"/etc/systemd/system/{name}").read_bytes()
            == (ROOT / "deploy" / name).read_bytes()
        )
        probe = (
            "touch /etc/policy-host/tenants/.probe /var/lib/policy-host/.probe"
            " && rm /etc/policy-host/tenants/.probe /var/lib/policy-host/.probe"
            " && ! touch /etc/policy-host/.probe /opt/policy-host/.probe 2>/dev/null && id -un"
        )
        sandbox = UnitSandbox(ROOT / "deploy" / name)
        done = machine.run(sandbox.argv(["sh", "-c", probe]))
        assert (done.returncode, done.stdout) == (0, f"{USER}\n"), name + done.stderr

    with services(world):
        # 2. A customer: its tenant file, the records it adds, certs, apply.
        machine.path(f"/etc/policy-host/tenants/{CUSTOMER}.yaml").write_text(
            tenant(("mx.customer.example",))
        )
        world.ok("policy-host", "validate", user=True)
        add_customer_records(world, world.ok("policy-host", "show", CUSTOMER, user=True))
        # Before its certificate: served, its id held back (exit 4).
        status, output = world.sh("policy-host", "apply", user=True)
        assert status == 4, output
        assert f"{CUSTOMER}: new: served, not published: waiting for a certificate" in output
        # certbot trusts pebble's listener through acme.ca_bundle alone.
        done = machine.run(["policy-host", "certs"])
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"mta-sts.{CUSTOMER}: ordered:" in done.stdout
        world.ok("policy-host", "apply", user=True)
        root_ca = world.pebble.issuing_root()
        first = sender(world, root_ca, CUSTOMER)[CUSTOMER]
        assert first["result"] == "VALID", first
        assert first["policy"] == {
            "version": "STSv1",
            "mode": "testing",
            "mx": ["mx.customer.example"],
            "max_age": 604800,
        }
        ca_copy = machine.path("/etc/policy-host/sender-root.pem")
        ca_copy.write_bytes(root_ca.read_bytes())
        # check as its unit runs it (sandbox and all): it keeps its result
        # in the state folder for promote, the guard and the status page.
        check_unit = UnitSandbox(ROOT / "deploy" / "policy-host-check.service")
        ca = ("--ca-file", "/etc/policy-host/sender-root.pem")
        done = machine.run(check_unit.argv([*check_unit.exec_start, *ca, CUSTOMER]))
        assert done.returncode == 0, done.stdout + done.stderr
        assert machine.path("/var/lib/policy-host/results.sqlite3").stat().st_uid == uid
        # The promote unit's own command, in its sandbox: nobody opted in,
        # so nothing is edited or applied.
        promote = UnitSandbox(ROOT / "deploy" / "policy-host-promote.service")
        tenant_file = machine.path(f"/etc/policy-host/tenants/{CUSTOMER}.yaml").read_bytes()
        done = machine.run(promote.argv())
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"held   {CUSTOMER}" in done.stdout
        assert "running apply" not in done.stderr
        assert machine.path(f"/etc/policy-host/tenants/{CUSTOMER}.yaml").read_bytes() == tenant_file

        # Port 80 as README says: ACME challenges from the webroot, a 301 to
        # https for anything else.
        assert on_port_80(f"mta-sts.{CUSTOMER}", "/.well-known/acme-challenge/none") == (404, None)
        assert on_port_80(f"mta-sts.{CUSTOMER}", "/.well-known/mta-sts.txt") == (
            301,
            f"https://mta-sts.{CUSTOMER}/.well-known/mta-sts.txt",
        )

        # 3. apply as root: refused, with a message; nothing changed.
        files = owners(machine, "/var/lib/policy-host")
        status, output = world.sh("policy-host", "apply")
        assert status == 2, output
        assert f"apply must run as {USER}" in output
        assert owners(machine, "/var/lib/policy-host") == files
        # Only certs (root, as its unit) keeps files of its own there.
        others = {name for name, (owner, _) in files.items() if owner != uid}
        assert others <= {"certs.lock", "certs.sqlite3", "nginx-conf.lock"}, files
        assert {"served.json", "state.sqlite3", f"www/mta-sts.{CUSTOMER}"} <= set(files)

        # 4. The service user goes on: an edit, reload, apply; the app
        # itself serves the new policy, and the sender sees a new id.
        edited = ("mx.customer.example", "mx2.customer.example")
        machine.path(f"/etc/policy-host/tenants/{CUSTOMER}.yaml").write_text(tenant(edited))
        world.ok("policy-host", "reload", user=True)
        world.ok("policy-host", "apply", user=True)
        expected = (
            b"version: STSv1\r\nmode: testing\r\nmx: mx.customer.example\r\n"
            b"mx: mx2.customer.example\r\nmax_age: 604800\r\n"
        )
        wait_until(
            lambda: from_app(world, f"mta-sts.{CUSTOMER}") == (200, expected),
            5,
            what="the app to serve the edited policy",
        )
        second = sender(world, root_ca, f"{CUSTOMER}={first['id']}")[CUSTOMER]
        assert second["result"] == "VALID", second
        assert second["id"] != first["id"]
        assert second["policy"]["mx"] == list(edited)  # type: ignore[index]
    assert time.monotonic() - started < BUDGET


def post_report(ca: Path, method: str, body: bytes) -> tuple[int, bytes]:
    """A request to the report name on port 443, as a report sender makes it."""
    context = ssl.create_default_context(cafile=str(ca))
    conn = http.client.HTTPSConnection(REPORT_NAME, 443, context=context, timeout=10)
    conn.sock = context.wrap_socket(
        socket.create_connection((LOOPBACK, 443), timeout=10), server_hostname=REPORT_NAME
    )
    try:
        headers = {"Content-Type": "application/tlsrpt+json"}
        conn.request(method, "/v1/report", body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_reporting_by_https_installs_the_report_site(world: World) -> None:
    machine = world.machine
    if not machine.path("/etc/policy-host/install.answers").exists():
        first_install(world)  # (this test run alone)
    extra = world.root / "extra-config.yaml"
    extra.write_text(
        f"tlsrpt:\n  rua: [mailto:tlsrpt@{PROVIDER}, https://{REPORT_NAME}/v1/report]\n"
    )

    # Reporting configured, no certificate for the report name yet: the
    # snippet is in place, the server block waits, and the install says how.
    said = install(world, "--extra-config", str(extra))
    assert f"changed: wrote {REPORTS_SNIPPET}" in said
    assert f"TLS reports by HTTPS to {REPORT_NAME} wait for its certificate" in said
    assert f"-d {REPORT_NAME}" in said
    snippet = (ROOT / "nginx" / "policy-host-reports.conf").read_bytes()
    assert machine.path(REPORTS_SNIPPET).read_bytes() == snippet
    assert not machine.path(REPORTS_SITE).exists()

    # Its certificate arrives (as certbot certonly puts it): the server block.
    ca = make_ca(world.root / "report-ca")
    chain, key = ca.issue("tlsrpt", [REPORT_NAME])
    live = machine.path(f"/etc/letsencrypt/live/{REPORT_NAME}")
    live.mkdir(parents=True)
    (live / "fullchain.pem").write_bytes(chain.read_bytes())
    (live / "privkey.pem").write_bytes(key.read_bytes())
    said = install(world)
    assert f"changed: wrote {REPORTS_SITE}" in said
    assert f"TLS reports by HTTPS: {REPORTS_SITE} serves {REPORT_NAME}" in said
    site = machine.path(REPORTS_SITE).read_text()
    assert f"    server_name {REPORT_NAME};\n" in site
    assert f"    ssl_certificate /etc/letsencrypt/live/{REPORT_NAME}/fullchain.pem;\n" in site
    assert f"    include {REPORTS_SNIPPET};\n" in site
    assert install(world).splitlines()[-1] == "install: nothing to change"

    # nginx answers for the report name and passes a POST to the app.
    with services(world):
        assert post_report(ca.cert, "GET", b"")[0] == 403
        status, body = post_report(ca.cert, "POST", b"{not json")
        assert (status, body[:17]) == (400, b"refused: not JSON")

    # Reports by mail only: the server block goes.
    extra.write_text(f"tlsrpt:\n  rua: [mailto:tlsrpt@{PROVIDER}]\n")
    said = install(world)
    assert f"changed: removed {REPORTS_SITE}" in said
    assert not machine.path(REPORTS_SITE).exists()
    assert install(world).splitlines()[-1] == "install: nothing to change"
