"""Benchmark serving: the shipped nginx + gunicorn stack against references,
in one run, on 127.0.0.1.

    .venv/bin/python bench/serve_bench.py [--tenants N] [--rounds R] [--duration S]
                                          [--tls-tenants N] [--skip serve,app,flood]

Generates N tenants (default 1,000), compiles them with policy-host (the
snapshot, and one policy file per host that nginx serves by itself), and
starts:

- nginx with this project's site config (``nginx/``), adapted as the test
  harness does (paths; free ports instead of 80, 443 and 8081) and with the
  per-client ``limit_req``/``limit_conn`` lines removed (every request here
  comes from 127.0.0.1; production keeps them), plus the generated server
  block (``policy-host nginx-conf``'s generator) and a certificate for the
  first ``--tls-tenants`` hosts, and two reference servers in the same
  nginx: one static file, over HTTP and HTTPS, no access log;
- ``policy-host serve`` (gunicorn, 2 gthread workers x 4 threads) behind it.

Then, each part in interleaved rounds (medians reported), with wrk
(64 connections, the Host header rotating over every tenant, the same Lua
request generator for product and reference):

1. serve: the stack vs nginx serving one static file: >= 0.8x the
   throughput, p99 <= 2x, no errors; over plain HTTP (the loopback
   listener) and over HTTPS (the tenant servers; needs root, for a private
   /etc/hosts so that wrk sends the tenant's name as SNI);
2. app: `policy-host serve` alone (no nginx) vs the minimal Flask app and
   a bare WSGI callable under the same gunicorn (``bench/refapps.py``);
3. flood: known tenants over HTTPS, alone and while a second generator
   floods unknown Host names (wrk) and unknown SNI names (TLS handshakes):
   >= 0.5x the undisturbed throughput, no errors, and no CPU spent in
   gunicorn (the unknown names are stopped in nginx).

It prints every figure with its ratio and whether the target is met; exit
status 0 when every target measured is met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import resource
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchlib import (
    CLI,
    LOOPBACK,
    POLICY_PATH,
    RANDOM_HOST_LUA,
    ROOT,
    ROTATE_LUA,
    Daemon,
    Figures,
    WrkResult,
    children,
    compile_tenants,
    cpu_ticks,
    domain,
    ensure_tools,
    free_port,
    interleaved,
    load_average,
    lua_script,
    median,
    run_wrk,
    run_wrk_parallel,
    say,
    with_hosts_file,
    workdir,
    write_provider,
)
from support.procs import require_binary
from support.tls import make_ca

SERVE_RATIO = 0.8
SERVE_P99_RATIO = 2.0
APP_RATIO = 1.0
FLOOD_RATIO = 0.5

REF_HTTP = "reference: nginx, one static file (HTTP)"
PRODUCT_HTTP = "product: nginx + gunicorn (HTTP listener)"
REF_TLS = "reference: nginx, one static file (HTTPS)"
PRODUCT_TLS = "product: nginx + gunicorn (HTTPS, SNI = Host)"
PRODUCT_TLS_SWITCH = "product: HTTPS, one SNI, Host rotating"
# Over HTTPS, this many wrk processes at once, each with its own tenant's
# name as SNI and Host (as senders do), sharing --connections.
SENDERS = 8
APP_FLASK = "reference: minimal Flask app, gunicorn"
APP_WSGI = "reference: bare WSGI callable, gunicorn"
APP_PRODUCT = "product: policy-host serve, gunicorn"
KNOWN = "known tenants (HTTPS), undisturbed"
FLOODED = "known tenants (HTTPS), under flood"
REF_NAME = "reference.bench.example"


@dataclass
class Ports:
    http80: int
    https: int
    verify: int
    ref_http: int
    ref_https: int


@dataclass
class Verdict:
    lines: list[str]
    ok: bool = True

    def check(self, what: str, value: float, target: str, met: bool) -> None:
        verdict = "met" if met else "NOT MET"
        self.lines.append(f"{what:<58} {value:6.2f}  target {target:<8} {verdict}")
        self.ok = self.ok and met


# -- nginx for the benchmark ----------------------------------------------------


def site_files(
    root: Path, ports: Ports, socket_path: Path, www: Path, tenants_dir: Path
) -> tuple[str, str]:
    """The shipped site config and snippet, adapted; every replaced text must
    be in the shipped files (so this breaks loudly when they change)."""
    site = (ROOT / "nginx" / "policy-host.conf").read_text()
    snippet = (ROOT / "nginx" / "policy-host-tenant.conf").read_text()
    site_changes = {
        "/run/policy-host/gunicorn.sock": str(socket_path),
        "/var/www/policy-host-acme": str(root / "acme"),
        "/etc/nginx/policy-host/": f"{tenants_dir}/",
        "/var/log/nginx/": f"{root / 'log'}/",
        "/var/lib/policy-host/www": str(www),
        "listen 80 default_server;": f"listen {LOOPBACK}:{ports.http80} default_server;",
        "listen [::]:80 default_server;": "",
        "listen 443 ssl default_server;": f"listen {LOOPBACK}:{ports.https} ssl default_server;",
        "listen [::]:443 ssl default_server;": "",
        "listen 127.0.0.1:8081;": f"listen {LOOPBACK}:{ports.verify};",
    }
    snippet_changes = {
        "/var/log/nginx/": f"{root / 'log'}/",
        "/var/lib/policy-host/www": str(www),
        "listen 443 ssl;": f"listen {LOOPBACK}:{ports.https} ssl;",
        "listen [::]:443 ssl;": "",
        # Benchmark only: every client here is 127.0.0.1.
        "limit_conn policy_host_conn 20;": "",
        "limit_req zone=policy_host_req burst=40 nodelay;": "",
    }
    for text, changes, name in (
        (site, site_changes, "policy-host.conf"),
        (snippet, snippet_changes, "policy-host-tenant.conf"),
    ):
        for old in changes:
            if old not in text:
                raise SystemExit(f"nginx/{name} no longer contains {old!r}: update the bench")
    for old, new in site_changes.items():
        site = site.replace(old, new)
    for old, new in snippet_changes.items():
        snippet = snippet.replace(old, new)
    return site, snippet


def main_conf(root: Path, site: Path, ports: Ports, policy: Path, cert: Path, key: Path) -> str:
    tmp = root / "tmp"
    user = "user root root;\n" if os.geteuid() == 0 else ""
    location = (
        "location = /.well-known/mta-sts.txt {\n"
        f"        alias {policy};\n"
        "        default_type text/plain;\n"
        "    }\n"
    )
    return (
        "daemon off;\n"
        "worker_processes auto;\n"
        "worker_rlimit_nofile 16384;\n"
        f"{user}"
        f"pid {root}/nginx.pid;\n"
        f"error_log {root}/log/error.log warn;\n"
        "events { worker_connections 4096; }\n"
        "http {\n"
        f"    client_body_temp_path {tmp}/body;\n"
        f"    proxy_temp_path {tmp}/proxy;\n"
        f"    fastcgi_temp_path {tmp}/fastcgi;\n"
        f"    uwsgi_temp_path {tmp}/uwsgi;\n"
        f"    scgi_temp_path {tmp}/scgi;\n"
        "    default_type application/octet-stream;\n"
        "    sendfile on;\n"
        "    server_names_hash_max_size 262144;\n"
        "    server_names_hash_bucket_size 128;\n"
        f"    include {site};\n"
        "    # The references: one static file, no access log.\n"
        "    server {\n"
        f"        listen {LOOPBACK}:{ports.ref_http};\n"
        "        access_log off;\n"
        f"        {location}"
        "    }\n"
        "    server {\n"
        f"        listen {LOOPBACK}:{ports.ref_https} ssl;\n"
        f"        server_name {REF_NAME};\n"
        f"        ssl_certificate {cert};\n"
        f"        ssl_certificate_key {key};\n"
        "        ssl_protocols TLSv1.2 TLSv1.3;\n"
        "        access_log off;\n"
        f"        {location}"
        "    }\n"
        "}\n"
    )


@dataclass
class Stack:
    root: Path
    config: Path
    ports: Ports
    hosts_file: Path  # every tenant's host name, for wrk
    tls_hosts: list[str]
    etc_hosts: Path
    gunicorn: Daemon
    nginx: Daemon


def stack_config(root: Path) -> str:
    """Provider config sections for a stack under ``root`` (gunicorn on a
    unix socket; nginx's generated file and snippet; certbot's folder)."""
    return (
        f"serve:\n  bind: unix:{root / 'gunicorn.sock'}\n  workers: 2\n  threads: 4\n"
        f"acme:\n  config_dir: {root / 'le'}\n"
        f"nginx:\n  tenants_conf: {root / 'nginx-tenants' / 'tenants.conf'}\n"
        f"  snippet: {root / 'policy-host-tenant.conf'}\n"
    )


def prepare_nginx(root: Path, config: Path, tls_hosts: Sequence[str]) -> tuple[Ports, Daemon]:
    """nginx's files for the provider at ``config`` (made with
    ``stack_config(root)``), with a server block and a certificate for each
    of ``tls_hosts``; the returned daemon is not started yet."""
    from policy_host.certs.nginxconf import cert_files, render_conf
    from policy_host.read.config import load_config

    provider = load_config(config)
    socket_path = root / "gunicorn.sock"
    for folder in ("log", "tmp", "acme", "nginx-tenants"):
        (root / folder).mkdir(exist_ok=True)
    ports = Ports(*(free_port("tcp") for _ in range(5)))
    site, snippet = site_files(root, ports, socket_path, provider.www_dir, root / "nginx-tenants")
    (root / "policy-host.conf").write_text(site)
    provider.nginx.snippet.write_text(snippet)
    ca = make_ca(root / "ca")
    cert, key = ca.issue("bench", [REF_NAME, "mta-sts.bench.example"])
    for host in tls_hosts:
        chain_path, key_path = cert_files(provider.acme, host)
        chain_path.parent.mkdir(parents=True)
        chain_path.symlink_to(cert)
        key_path.symlink_to(key)
    provider.nginx.tenants_conf.write_bytes(render_conf(provider, tls_hosts))
    policy = provider.www_dir / f"mta-sts.{domain(0)}"
    (root / "nginx.conf").write_text(
        main_conf(root, root / "policy-host.conf", ports, policy, cert, key)
    )
    nginx = Daemon(
        [
            require_binary("nginx"),
            "-p",
            str(root),
            "-c",
            str(root / "nginx.conf"),
            "-e",
            str(root / "log" / "error.log"),
        ],
        name="nginx",
        workdir=root / "nginx-run",
        ready=lambda: _tcp_ready(ports.verify) and _tcp_ready(ports.ref_http),
        ready_timeout=300,
    )
    return ports, nginx


def gunicorn_daemon(root: Path, config: Path) -> Daemon:
    socket_path = root / "gunicorn.sock"
    return Daemon(
        [*CLI, "--config", str(config), "serve"],
        name="gunicorn",
        workdir=root / "gunicorn",
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        ready=lambda: _unix_ready(socket_path),
        ready_timeout=300,
    )


def start_stack(root: Path, count: int, tls_count: int) -> Stack:
    say(f"generating {count:,} tenants in {root}")
    config = write_provider(root / "provider", count, stack_config(root))
    started = time.monotonic()
    compile_tenants(config)
    say(f"compiled in {time.monotonic() - started:.1f} s")
    tls_hosts = [f"mta-sts.{domain(n)}" for n in range(min(count, tls_count))]
    ports, nginx = prepare_nginx(root, config, tls_hosts)
    hosts_file = root / "hosts.txt"
    hosts_file.write_text("".join(f"mta-sts.{domain(n)}\n" for n in range(count)))
    etc_hosts = root / "etc-hosts"
    names = [REF_NAME, *tls_hosts[:SENDERS], "unknown.bench.example"]
    etc_hosts.write_text(f"127.0.0.1 localhost {' '.join(names)}\n")
    gunicorn = gunicorn_daemon(root, config)
    gunicorn.start()
    try:
        nginx.start()
    except BaseException:
        gunicorn.cleanup()
        raise
    return Stack(root, config, ports, hosts_file, tls_hosts, etc_hosts, gunicorn, nginx)


def _unix_ready(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(1)
        sock.connect(str(path))
    return True


def _tcp_ready(port: int) -> bool:
    with socket.create_connection((LOOPBACK, port), timeout=1):
        return True


def fetch(port: int, host: str, *, tls_name: str | None = None) -> tuple[int, bytes]:
    """One GET on 127.0.0.1:port (TLS with SNI ``tls_name`` if given)."""
    raw = socket.create_connection((LOOPBACK, port), timeout=5)
    sock: socket.socket = raw
    if tls_name is not None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        sock = context.wrap_socket(raw, server_hostname=tls_name)
    with sock:
        request = f"GET {POLICY_PATH} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        sock.sendall(request.encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def check_answers(stack: Stack) -> None:
    """Every server measured answers correctly before it is measured."""
    www = stack.root / "provider" / "var" / "www"
    for n in (0, len(stack.hosts_file.read_text().split()) - 1):
        host = f"mta-sts.{domain(n)}"
        expected = (www / host).read_bytes()
        got = fetch(stack.ports.verify, host)
        if got != (200, expected):
            raise SystemExit(f"the HTTP listener answers {got} for {host}")
        if stack.tls_hosts:
            got = fetch(stack.ports.https, stack.tls_hosts[0], tls_name=stack.tls_hosts[0])
            if got[0] != 200:
                raise SystemExit(f"the HTTPS tenant server answers {got}")
    if fetch(stack.ports.verify, "mta-sts.unknown.example")[0] != 404:
        raise SystemExit("an unknown host does not get 404")


# -- the parts ------------------------------------------------------------------


def part_serve(
    stack: Stack, args: argparse.Namespace, scripts: Path, verdict: Verdict, tls: bool
) -> Figures:
    rotate = lua_script(scripts, "rotate.lua", ROTATE_LUA)
    names = [REF_HTTP, PRODUCT_HTTP]
    senders: list[tuple[str, Path]] = []
    if tls:
        names += [REF_TLS, PRODUCT_TLS, PRODUCT_TLS_SWITCH]
        tls_list = stack.root / "tls-hosts.txt"
        tls_list.write_text("".join(h + "\n" for h in stack.tls_hosts))
        for host in stack.tls_hosts[:SENDERS]:
            one = stack.root / f"host-{host}.txt"
            one.write_text(host + "\n")
            senders.append((host, one))
    prefix = with_hosts_file(stack.etc_hosts, []) if tls else []
    figures = Figures()
    each = max(1, args.connections // SENDERS)

    def measure(name: str) -> WrkResult:
        if name in (REF_HTTP, PRODUCT_HTTP):
            port = stack.ports.ref_http if name == REF_HTTP else stack.ports.verify
            return run_wrk(
                f"http://{LOOPBACK}:{port}/",
                rotate,
                args=[str(stack.hosts_file)],
                connections=args.connections,
                threads=args.threads,
                duration=args.duration,
            )
        if name == PRODUCT_TLS_SWITCH:
            return run_wrk(
                f"https://{stack.tls_hosts[0]}:{stack.ports.https}/",
                rotate,
                args=[str(tls_list)],
                connections=args.connections,
                threads=args.threads,
                duration=args.duration,
                prefix=prefix,
            )
        if name == REF_TLS:
            jobs = [(f"https://{REF_NAME}:{stack.ports.ref_https}/", [str(f)]) for _, f in senders]
        else:
            jobs = [(f"https://{h}:{stack.ports.https}/", [str(f)]) for h, f in senders]
        return run_wrk_parallel(
            jobs, rotate, connections=each, duration=args.duration, prefix=prefix
        )

    # nginx's own CPU per request: unlike requests per second, it does not
    # depend on what else the machine is doing meanwhile.
    nginx_pids = [stack.nginx.pid, *children(stack.nginx.pid)]
    cpu: dict[str, list[float]] = {}

    def measured(name: str) -> WrkResult:
        before = cpu_ticks(nginx_pids)
        result = measure(name)
        used = (cpu_ticks(nginx_pids) - before) / os.sysconf("SC_CLK_TCK")
        cpu.setdefault(name, []).append(1e6 * used / max(result.requests, 1))
        return result

    def show(name: str, reference: str | None = None) -> None:
        us = median(cpu[name])
        ratio = f" ({us / median(cpu[reference]):.2f}x)" if reference else ""
        print(f"{figures.line(name, reference)}  [nginx {us:.1f} us CPU/request{ratio}]")

    interleaved(args.rounds, names, measured, figures)
    show(REF_HTTP)
    show(PRODUCT_HTTP, REF_HTTP)
    if tls:
        show(REF_TLS)
        show(PRODUCT_TLS, REF_TLS)
        show(PRODUCT_TLS_SWITCH, REF_TLS)
        print("(one SNI, Host rotating: not a target; see docs/performance.md)")
    pairs = [(REF_HTTP, PRODUCT_HTTP, f"HTTP, Host over {args.tenants:,} tenants")]
    if tls:
        pairs.append((REF_TLS, PRODUCT_TLS, f"HTTPS, {len(senders)} senders, SNI = Host"))
    for ref, product, what in pairs:
        ratio = figures.rps(product) / figures.rps(ref)
        p99 = figures.p99(product) / figures.p99(ref)
        verdict.check(
            f"1. serve ({what}): x static", ratio, f">= {SERVE_RATIO}", ratio >= SERVE_RATIO
        )
        verdict.check(
            f"1. serve ({what}): p99 x static", p99, f"<= {SERVE_P99_RATIO}", p99 <= SERVE_P99_RATIO
        )
        errors = figures.errors(product)
        verdict.check(f"1. serve ({what}): errors", errors, "0", errors == 0)
    return figures


def part_app(stack: Stack, args: argparse.Namespace, scripts: Path, verdict: Verdict) -> None:
    rotate = lua_script(scripts, "rotate.lua", ROTATE_LUA)
    snapshot = stack.root / "provider" / "var" / "served.json"
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'bench'}:{ROOT}", "BENCH_SNAPSHOT": str(snapshot)}
    ports = {name: free_port("tcp") for name in (APP_FLASK, APP_WSGI, APP_PRODUCT)}
    gunicorn_args = ["-w", "2", "-k", "gthread", "--threads", "4", "--keep-alive", "2"]
    commands = {
        APP_FLASK: [
            sys.executable,
            "-m",
            "gunicorn",
            *gunicorn_args,
            "--bind",
            f"{LOOPBACK}:{ports[APP_FLASK]}",
            "refapps:flask_app",
        ],
        APP_WSGI: [
            sys.executable,
            "-m",
            "gunicorn",
            *gunicorn_args,
            "--bind",
            f"{LOOPBACK}:{ports[APP_WSGI]}",
            "refapps:wsgi_app",
        ],
        APP_PRODUCT: [
            *CLI,
            "--config",
            str(stack.config),
            "serve",
            "--bind",
            f"{LOOPBACK}:{ports[APP_PRODUCT]}",
        ],
    }
    daemons = []
    try:
        for name, argv in commands.items():
            port = ports[name]
            daemon = Daemon(
                argv,
                name=f"app-{port}",
                workdir=stack.root / f"app-{port}",
                env=env,
                ready=lambda port=port: fetch(port, f"mta-sts.{domain(0)}")[0] == 200,  # type: ignore[misc]
                ready_timeout=120,
            )
            daemon.start()
            daemons.append(daemon)
        for name, port in ports.items():
            host = f"mta-sts.{domain(args.tenants - 1)}"
            status, body = fetch(port, host)
            if status != 200 or b"mx1." + domain(args.tenants - 1).encode() not in body:
                raise SystemExit(f"{name} answers {status} {body!r} for {host}")
        figures = Figures()

        def measure(name: str) -> WrkResult:
            return run_wrk(
                f"http://{LOOPBACK}:{ports[name]}/",
                rotate,
                args=[str(stack.hosts_file)],
                connections=args.connections,
                threads=args.threads,
                duration=args.duration,
            )

        interleaved(args.rounds, list(commands), measure, figures)
    finally:
        for daemon in daemons:
            daemon.cleanup()
    print(figures.line(APP_FLASK))
    print(figures.line(APP_WSGI))
    print(figures.line(APP_PRODUCT, APP_FLASK))
    ratio = figures.rps(APP_PRODUCT) / figures.rps(APP_FLASK)
    verdict.check("2. app alone vs minimal Flask app", ratio, f">= {APP_RATIO}", ratio >= APP_RATIO)
    wsgi = figures.rps(APP_PRODUCT) / figures.rps(APP_WSGI)
    verdict.lines.append(f"{'2. app alone vs bare WSGI callable (reported)':<58} {wsgi:6.2f}")
    errors = figures.errors(APP_PRODUCT)
    verdict.check("2. app alone: errors", errors, "0", errors == 0)


FLOOD_NAME = "mta-sts.x00000000.flood.example"


def client_hello(name: str) -> bytes:
    """The bytes of a TLS ClientHello naming ``name`` (SNI), made once by
    Python's ssl; the flood only changes the digits in the name."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=name)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def sni_flood(port: int, seconds: float) -> None:
    """Child process: TLS handshakes naming random unknown hosts (SNI).

    Each connection sends a ClientHello and reads until nginx answers with
    an alert and closes: all nginx does for a name it does not host. The
    ClientHello is made once and only the name's digits change, so the
    flood spends its CPU on connections, not on key exchanges that nginx
    never gets to."""
    hello = client_hello(FLOOD_NAME)
    at = hello.index(FLOOD_NAME.encode()) + len("mta-sts.x")
    refused = other = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        digits = b"%08d" % random.randrange(10**8)
        try:
            with socket.create_connection((LOOPBACK, port), timeout=5) as sock:
                sock.sendall(hello[:at] + digits + hello[at + 8 :])
                answer = sock.recv(4096)
                # A TLS alert record (content type 21): the handshake refused.
                if answer[:1] == b"\x15":
                    refused += 1
                else:
                    other += 1
        except OSError:
            other += 1
    print(f"{refused} {other}")


def part_flood(stack: Stack, args: argparse.Namespace, scripts: Path, verdict: Verdict) -> None:
    rotate = lua_script(scripts, "rotate.lua", ROTATE_LUA)
    flood_lua = lua_script(scripts, "flood.lua", RANDOM_HOST_LUA)
    prefix = with_hosts_file(stack.etc_hosts, [])
    known_url = f"https://{stack.tls_hosts[0]}:{stack.ports.https}/"
    tls_list = stack.root / "tls-hosts.txt"
    tls_list.write_text("".join(h + "\n" for h in stack.tls_hosts))
    app_pids = [stack.gunicorn.pid, *children(stack.gunicorn.pid)]
    figures = Figures()
    flood_requests: list[int] = []
    refused: list[int] = []
    app_ticks: list[int] = []
    nginx_pids = [stack.nginx.pid, *children(stack.nginx.pid)]
    split: dict[str, list[str]] = {KNOWN: [], FLOODED: []}

    def known() -> WrkResult:
        return run_wrk(
            known_url,
            rotate,
            args=[str(tls_list)],
            connections=args.connections // 2,
            threads=1,
            duration=args.duration,
            prefix=prefix,
        )

    def measure(name: str) -> WrkResult:
        nginx_before = cpu_ticks(nginx_pids)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.monotonic()
        result = flooded() if name == FLOODED else known()
        wall = time.monotonic() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        nginx = (cpu_ticks(nginx_pids) - nginx_before) / os.sysconf("SC_CLK_TCK")
        generators = after.ru_utime + after.ru_stime - kids.ru_utime - kids.ru_stime
        split[name].append(
            f"nginx {nginx / wall:.2f} cores, load generators {generators / wall:.2f}"
        )
        return result

    def flooded() -> WrkResult:
        before = cpu_ticks(app_pids)
        seconds = args.duration + 2
        flood = subprocess.Popen(
            [
                *prefix,
                require_binary("wrk"),
                "-t1",
                f"-c{args.flood_connections or args.connections // 2}",
                f"-d{seconds:g}s",
                "-s",
                str(flood_lua),
                known_url,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        sni = [
            subprocess.Popen(
                [sys.executable, __file__, "--sni-flood", str(stack.ports.https), str(seconds)],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            for _ in range(args.sni_flooders)
        ]
        try:
            time.sleep(1.0)  # let the flood get going
            result = known()
        finally:
            out, _ = flood.communicate(timeout=seconds + 60)
            sni_out = "".join(proc.communicate(timeout=seconds + 60)[0] for proc in sni)
        for line in out.splitlines():
            if line.startswith("WRK-JSON "):
                flood_requests.append(int(line.split('"requests": ')[1].split(",")[0]))
        refused.append(sum(int(line.split()[0]) for line in sni_out.splitlines() if line))
        app_ticks.append(cpu_ticks(app_pids) - before)
        return result

    interleaved(args.rounds, [KNOWN, FLOODED], measure, figures)
    print(figures.line(KNOWN) + f"  [{split[KNOWN][-1]}]")
    print(figures.line(FLOODED, KNOWN) + f"  [{split[FLOODED][-1]}]")
    print(
        f"{'flood: unknown Host requests answered by nginx (per round)':<44} "
        f"{median(flood_requests):>10,.0f}; unknown SNI handshakes refused: "
        f"{median(refused):,.0f}; gunicorn CPU during the flood: "
        f"{max(app_ticks) * 1000 // os.sysconf('SC_CLK_TCK')} ms at most per round"
    )
    ratio = figures.rps(FLOODED) / figures.rps(KNOWN)
    verdict.check(
        "6. flood: known tenants vs undisturbed", ratio, f">= {FLOOD_RATIO}", ratio >= FLOOD_RATIO
    )
    errors = figures.errors(FLOODED)
    verdict.check("6. flood: errors for known tenants", errors, "0", errors == 0)
    # Nothing unknown reached Python: gunicorn used (next to) no CPU.
    ms = max(app_ticks) * 1000 / os.sysconf("SC_CLK_TCK")
    verdict.check("6. flood: gunicorn CPU ms per round (stopped in nginx)", ms, "<= 100", ms <= 100)


# -- main -----------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=1000, metavar="N")
    parser.add_argument(
        "--tls-tenants",
        type=int,
        default=1000,
        metavar="N",
        help="tenants with a server block and certificate",
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5.0, metavar="S")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--flood-connections",
        type=int,
        default=0,
        metavar="N",
        help="connections of the unknown-Host flood (default: as many as the known load)",
    )
    parser.add_argument(
        "--sni-flooders", type=int, default=1, metavar="N", help="processes making handshakes"
    )
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: serve,app,flood")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--sni-flood", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sni_flood:
        sni_flood(int(args.sni_flood[0]), float(args.sni_flood[1]))
        return 0
    if args.tenants < 1 or args.rounds < 1:
        parser.error("--tenants and --rounds must be at least 1")
    skip = {s for s in args.skip.split(",") if s}
    ensure_tools("nginx", "wrk", "openssl")
    tls = os.geteuid() == 0 and args.tls_tenants > 0 and shutil_which("unshare")
    if not tls:
        say("not root (or no unshare): HTTPS parts skipped; they need a private /etc/hosts")
    verdict = Verdict([])
    say(f"load average before: {load_average()}; cores: {os.cpu_count()}")
    with workdir("serve-bench-", keep=args.keep) as root:
        stack = start_stack(root, args.tenants, args.tls_tenants if tls else 0)
        try:
            check_answers(stack)
            scripts = root / "lua"
            scripts.mkdir()
            print(
                f"tenants: {args.tenants:,}; wrk: {args.connections} connections, "
                f"{args.threads} threads, {args.duration:g} s x {args.rounds} rounds "
                f"(medians); cores: {os.cpu_count()}"
            )
            if "serve" not in skip:
                part_serve(stack, args, scripts, verdict, bool(tls))
            if "flood" not in skip and tls:
                part_flood(stack, args, scripts, verdict)
        finally:
            stack.nginx.cleanup()
            stack.gunicorn.cleanup()
        if "app" not in skip:
            part_app(stack, args, root / "lua", verdict)
    say(f"load average after: {load_average()}")
    print()
    print("\n".join(verdict.lines))
    return 0 if verdict.ok else 1


def shutil_which(name: str) -> bool:
    try:
        require_binary(name)
    except Exception:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
