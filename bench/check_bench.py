"""Benchmark `policy-host check` against one sequential resolver loop.

    .venv/bin/python bench/check_bench.py [--tenants N] [--concurrency N] [--jobs N]
                                          [--upstream-delay-ms MS] [--sequential N]

Generates N tenants (default 10,000), each with its own zone set up
correctly, and the provider zone holding their TXT records; starts knotd
and an unbound in front of it (on 127.0.0.1, caching off, as in the tests,
but with limits raised for many queries in flight); then, in one run:

1. `check` (the real ``check.parallel.run_checks``, as the command runs it: one
   process per core unless ``--jobs`` says otherwise, all of them in a
   child process of the benchmark so that their memory is their own) over
   every tenant;
2. one sequential loop with a plain ``dns.resolver.Resolver`` doing the
   same queries for the same domains (all of them, or the first
   ``--sequential`` ones).

It prints tenants checked per second for both, the ratio, and the check
process's peak memory (max RSS).

On loopback a query costs CPU and almost no waiting, and the checker,
unbound and knotd share this machine's cores, so the ratio mostly measures
how much CPU the checker spends per query. Real resolvers wait on the
network; ``--upstream-delay-ms`` puts a small UDP relay between unbound and
knotd that holds every answer that long, which is what concurrency is for.

Nothing here is part of the test suite, except a tiny smoke run
(``tests/test_check_bench.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import dns.exception  # noqa: E402
import dns.resolver  # noqa: E402
from benchlib import cpu_ticks, say  # noqa: E402
from support.dnsservers import KnotServer, UnboundResolver, Zone  # noqa: E402
from support.procs import LOOPBACK, Daemon, free_port, port_open  # noqa: E402

TARGET_RATIO = 20.0
PROVIDER = "provider.example"
POLICY_HOST = f"mta-sts.{PROVIDER}"
ID_ZONE = f"_mta-sts.{PROVIDER}"
POLICY_ID = "20260101T000000"


def domain(n: int) -> str:
    return f"customer{n:05d}.example"


# -- the world --------------------------------------------------------------


def write_provider(root: Path, count: int, resolver_port: int, concurrency: int) -> Path:
    tenants = root / "tenants"
    tenants.mkdir(parents=True)
    for n in range(count):
        d = domain(n)
        (tenants / f"{d}.yaml").write_text(
            f"mode: enforce\nmx: [mx1.{d}, mx2.{d}]\nmax_age: 604800\ntlsrpt_rua: mailto:tls@{d}\n"
        )
    config = root / "config.yaml"
    config.write_text(
        f"tenants_dir: tenants\nstate_dir: var\npolicy_host: {POLICY_HOST}\nid_zone: {ID_ZONE}\n"
        f"dns:\n  resolver: {LOOPBACK}:{resolver_port}\n  timeout: 10\n"
        f"check:\n  concurrency: {concurrency}\n"
    )
    (root / "ids.json").write_text(json.dumps({domain(n): POLICY_ID for n in range(count)}))
    return config


def zones(count: int) -> list[Zone]:
    found = [
        Zone(
            domain(n),
            [
                f"mta-sts CNAME {POLICY_HOST}.",
                f"_mta-sts CNAME {domain(n)}.{ID_ZONE}.",
                "@ MX 10 mx1",
                "@ MX 20 mx2",
                f'_smtp._tls TXT "v=TLSRPTv1; rua=mailto:tls@{domain(n)}"',
            ],
        )
        for n in range(count)
    ]
    provider = ["mta-sts A 127.0.0.1"]
    provider += [f'{domain(n)}._mta-sts TXT "v=STSv1; id={POLICY_ID};"' for n in range(count)]
    found.append(Zone(PROVIDER, provider))
    return found


class BenchUnbound(UnboundResolver):
    """The harness's unbound, with room for many queries in flight, asking
    ``upstream_port`` (the delay relay) instead of knotd when given."""

    def __init__(self, knot: KnotServer, upstream_port: int | None) -> None:
        super().__init__(knot)
        self.upstream_port = upstream_port

    def _write_config(self) -> None:
        super()._write_config()
        text = self.conf_path.read_text()
        text = re.sub(r"num-queries-per-thread: \d+", "num-queries-per-thread: 4096", text)
        text = re.sub(r"outgoing-range: \d+", "outgoing-range: 8192", text)
        if self.upstream_port is not None:
            text = text.replace(
                f"stub-addr: {self.knot.address}@{self.knot.port}",
                f"stub-addr: {LOOPBACK}@{self.upstream_port}",
            )
        self.conf_path.write_text(text)

    def _ready(self) -> bool:
        # Probing every one of thousands of zones would take long; two will do.
        return port_open(self.address, self.port) and all(
            self._answers(name) for name in (f"mta-sts.{domain(0)}", POLICY_HOST)
        )

    def _answers(self, name: str) -> bool:
        try:
            return bool(self.query(name, "A").answer)
        except (dns.exception.DNSException, OSError):
            return False


# -- the delay relay (run as a child process: --relay) -------------------------


def question_end(packet: bytes) -> int:
    """Offset just after the question section's first entry (no compression)."""
    offset = 12
    while offset < len(packet) and packet[offset] != 0:
        offset += packet[offset] + 1
    return offset + 5


def relay(listen_port: int, upstream_port: int, delay: float) -> None:
    """Forward UDP queries to knotd and hold each answer ``delay`` seconds."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        waiting: dict[bytes, collections.deque[tuple[str, int]]] = collections.defaultdict(
            collections.deque
        )

        class Down(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport: Any = transport

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                waiting[data[:2] + data[12 : question_end(data)]].append(addr)
                up.transport.sendto(data)

        class Up(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport: Any = transport

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                queue = waiting.get(data[:2] + data[12 : question_end(data)])
                if queue:
                    client = queue.popleft()
                    loop.call_later(delay, down.transport.sendto, data, client)

        _, up = await loop.create_datagram_endpoint(Up, remote_addr=(LOOPBACK, upstream_port))
        _, down = await loop.create_datagram_endpoint(Down, local_addr=(LOOPBACK, listen_port))
        await asyncio.Event().wait()

    asyncio.run(main())


# -- the two measured runs --------------------------------------------------


def check_worker(config_path: Path, jobs: int) -> None:
    """Run `check` over every tenant, as the command does; print one JSON line
    of figures."""
    from policy_host.check.context import CheckContext
    from policy_host.check.dnsclient import DnsClient
    from policy_host.check.parallel import run_checks
    from policy_host.read.config import load_config
    from policy_host.read.tenants import load_tenants

    config = load_config(config_path)
    started = time.perf_counter()
    tenants = load_tenants(config).tenants
    loaded = time.perf_counter() - started
    assert config.dns.resolver is not None
    client = DnsClient(
        [config.dns.resolver], timeout=config.dns.timeout, concurrency=config.check.concurrency
    )
    expected = json.loads((config_path.parent / "ids.json").read_text())
    ctx = CheckContext(config=config, lookup=client, expected_ids=expected)
    cpu_before = cpu_seconds()
    started = time.perf_counter()
    reports = run_checks(
        ctx, list(tenants.values()), workers=config.check.concurrency, processes=jobs
    )
    elapsed = time.perf_counter() - started
    cpu = cpu_seconds() - cpu_before
    statuses = collections.Counter(r.status for r in reports)
    codes = collections.Counter(code for r in reports for code in r.codes)
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(
        json.dumps(
            {
                "tenants": len(reports),
                "load_seconds": loaded,
                "check_seconds": elapsed,
                "check_cpu_seconds": cpu,
                "queries": client.queries,
                "statuses": statuses,
                "codes": codes.most_common(5),
                "max_rss_kib": own,
                "child_max_rss_kib": children,
            }
        )
    )


def cpu_seconds() -> float:
    """User and system CPU of this process and its ended children."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def queries_for(d: str) -> list[tuple[str, str]]:
    """What `check` asks for a correctly set-up tenant."""
    caa = [".".join(f"mta-sts.{d}".split(".")[i:]) for i in range(len(d.split(".")) + 1)]
    return [
        (f"mta-sts.{d}", "A"),
        (f"_mta-sts.{d}", "TXT"),
        (d, "MX"),
        (f"_smtp._tls.{d}", "TXT"),
        *((name, "CAA") for name in caa),
    ]


def sequential(port: int, domains: list[str]) -> tuple[float, int, int]:
    """One resolver, one query at a time; returns (seconds, queries, failures)."""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [LOOPBACK]
    resolver.port = port
    resolver.timeout = resolver.lifetime = 10.0
    resolver.cache = None
    queries = failures = 0
    started = time.perf_counter()
    for d in domains:
        for name, rdtype in queries_for(d):
            queries += 1
            try:
                resolver.resolve(name, rdtype, raise_on_no_answer=False)
            except dns.resolver.NXDOMAIN:
                pass  # CAA at the top-level domain: nothing there
            except dns.exception.DNSException:
                failures += 1
    return time.perf_counter() - started, queries, failures


# -- main -------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=10_000, metavar="N")
    parser.add_argument("--concurrency", type=int, default=100, metavar="N")
    parser.add_argument(
        "--upstream-delay-ms",
        type=float,
        default=0.0,
        metavar="MS",
        help="hold every answer from knotd to unbound this long (default 0: plain loopback)",
    )
    parser.add_argument(
        "--sequential",
        type=int,
        metavar="N",
        help="time the sequential loop over the first N domains only (default: all)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=os.cpu_count() or 1,
        metavar="N",
        help="check processes, as `check --jobs` (default: one per core)",
    )
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--relay", nargs=3, type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        check_worker(args.worker, args.jobs)
        return 0
    if args.relay:
        relay(int(args.relay[0]), int(args.relay[1]), args.relay[2])
        return 0
    if args.tenants < 1 or args.concurrency < 1:
        parser.error("--tenants and --concurrency must be at least 1")

    with tempfile.TemporaryDirectory(prefix="check-bench-") as tmp:
        root = Path(tmp)
        count = args.tenants
        say(f"generating {count} tenants and zones in {root}")
        started = time.perf_counter()
        all_zones = zones(count)
        with KnotServer(all_zones) as knot:
            say(f"knotd serves {len(all_zones)} zones ({time.perf_counter() - started:.1f} s)")
            relay_daemon = None
            upstream = None
            if args.upstream_delay_ms > 0:
                upstream = free_port("udp")
                relay_daemon = Daemon(
                    [
                        sys.executable,
                        __file__,
                        "--relay",
                        str(upstream),
                        str(knot.port),
                        str(args.upstream_delay_ms / 1000),
                    ],
                    name="delay-relay",
                    ready=lambda: True,
                )
                relay_daemon.start()
                time.sleep(0.3)
            try:
                with BenchUnbound(knot, upstream) as unbound:
                    config = write_provider(
                        root / "provider", count, unbound.port, args.concurrency
                    )
                    servers = [unbound.daemon.pid, knot.daemon.pid]
                    if relay_daemon is not None:
                        servers.append(relay_daemon.pid)
                    return measure(args, config, unbound.port, count, servers)
            finally:
                if relay_daemon is not None:
                    relay_daemon.cleanup()


def measure(
    args: argparse.Namespace, config: Path, port: int, count: int, servers: list[int]
) -> int:
    delay = f", upstream delay {args.upstream_delay_ms:g} ms" if args.upstream_delay_ms else ""
    say(f"check: {count} tenants, concurrency {args.concurrency}, {args.jobs} processes{delay}")
    ticks = cpu_ticks(servers)
    done = subprocess.run(
        [sys.executable, __file__, "--worker", str(config), "--jobs", str(args.jobs)],
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    if done.returncode != 0:
        print(done.stdout + done.stderr, file=sys.stderr)
        return 2
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    servers_check = (cpu_ticks(servers) - ticks) / TICK
    domains = [domain(n) for n in range(min(count, args.sequential or count))]
    say(f"sequential loop: {len(domains)} domains, same queries")
    ticks = cpu_ticks(servers)
    own = resource.getrusage(resource.RUSAGE_SELF)
    seq_seconds, seq_queries, seq_failures = sequential(port, domains)
    after = resource.getrusage(resource.RUSAGE_SELF)
    seq_cpu = after.ru_utime + after.ru_stime - own.ru_utime - own.ru_stime
    servers_seq = (cpu_ticks(servers) - ticks) / TICK

    check_rate = figures["tenants"] / figures["check_seconds"]
    seq_rate = len(domains) / seq_seconds
    ratio = check_rate / seq_rate
    ok = figures["statuses"].get("ok", 0)
    print(f"tenants:                {figures['tenants']} ({ok} ok; other: {figures['codes']})")
    print(f"loading tenant files:   {figures['load_seconds']:.2f} s")
    print(
        f"check (concurrent):     {figures['check_seconds']:.2f} s, {check_rate:,.0f} tenants/s, "
        f"{figures['queries']:,} queries"
    )
    cpu_ms = 1000 * figures["check_cpu_seconds"] / figures["tenants"]
    print(
        f"check CPU:              {figures['check_cpu_seconds']:.2f} s ({cpu_ms:.2f} ms per "
        f"tenant: at most {1000 / cpu_ms:,.0f} tenants/s per core)"
    )
    print(
        f"sequential loop:        {seq_seconds:.2f} s, {seq_rate:,.1f} tenants/s, "
        f"{seq_queries:,} queries ({seq_failures} failed)"
    )
    print(f"ratio:                  {ratio:.1f}x (target >= {TARGET_RATIO:g}x: "
          f"{'met' if ratio >= TARGET_RATIO else 'not met'})")  # fmt: skip
    per = 1000 / figures["tenants"]
    print(
        f"DNS servers' CPU:       {servers_check * per:.2f} ms per tenant during check, "
        f"{servers_seq * 1000 / len(domains):.2f} during the loop (unbound, knotd"
        f"{', relay' if args.upstream_delay_ms else ''})"
    )
    seq_wall = 1000 * seq_seconds / len(domains)
    print(
        f"loop's own CPU:         {1000 * seq_cpu / len(domains):.2f} ms of its {seq_wall:.2f} ms "
        "per tenant"
    )
    # However well check overlaps its queries, every tenant costs its own
    # CPU and the servers' on the same cores: that bounds the ratio.
    total = figures["check_cpu_seconds"] * per + servers_check * per
    cores = os.cpu_count() or 1
    print(
        f"ceiling here:           {cores} cores x {seq_wall:.2f} ms / {total:.2f} ms CPU per "
        f"tenant = {cores * seq_wall / total:.1f}x"
    )
    print(
        f"check peak memory:      {figures['max_rss_kib'] / 1024:.0f} MiB (max RSS; the "
        f"largest check process it forked: {figures['child_max_rss_kib'] / 1024:.0f} MiB)"
    )
    print(f"cores:                  {cores} (shared by check, unbound and knotd)")
    return 0 if ok == figures["tenants"] and seq_failures == 0 else 1


TICK = os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    sys.exit(main())
