"""Benchmark the control plane at scale: 1,000, 10,000 and 100,000 tenants.

    .venv/bin/python bench/scale_bench.py [--tenants 1000,10000,100000] [--repeat R]
                                          [--skip apply]

For each tenant count, in a fresh temporary folder on 127.0.0.1 (nginx with
the shipped site config on free ports, as in bench/serve_bench.py; gunicorn
on a unix socket; knotd taking TSIG-signed updates for `apply`):

- the reference: parsing the same files with PyYAML's C loader, one process
  (``yaml.load(..., CSafeLoader)`` per file, nothing else);
- `policy-host validate` with no parse cache (every file read, one process
  per core; its runs interleaved with the reference's) and with a warm one;
- the first compile (every policy file written) and a compile with
  nothing changed;
- `policy-host serve`, started with the snapshot of an earlier run: the
  seconds until it answers the last tenant correctly; each worker's memory
  (VmRSS) after it has loaded, then swapped in, the snapshot, and at most
  during the run;
- a one-tenant change: from starting `policy-host reload` until nginx (the
  policy file) and gunicorn (its in-memory table) answer with the new bytes;
- `policy-host apply` publishing every tenant once (not a target), then,
  for one changed tenant, from starting the command until it exits, having
  verified the new policy through nginx and confirmed the TXT at knotd.

It prints one table (the growth from one count to the next) and, for the
largest count, each target of issue 6 with the measured figure.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchlib import (
    CLI,
    LOOPBACK,
    POLICY_PATH,
    children,
    domain,
    ensure_tools,
    load_average,
    median,
    rss_mib,
    say,
    tenant_yaml,
    workdir,
    write_provider,
)
from serve_bench import gunicorn_daemon, prepare_nginx, stack_config
from support.dnsservers import KnotServer, TsigKey, Zone

from policy_host.read.parsecache import RACY_SECONDS
from policy_host.serve.web import WATCH_INTERVAL

START_TARGET = 2.0
LIVE_TARGET = 2.0
MEMORY_TARGET = 150.0
VALIDATE_TARGET = 1.3
APPLY_TARGET = 5.0
PROVIDER = "provider.example"

BARE_PARSE = """\
import os, sys, time, yaml
folder = sys.argv[1]
started = time.perf_counter()
for name in sorted(os.listdir(folder)):
    with open(os.path.join(folder, name), "rb") as handle:
        yaml.load(handle.read(), Loader=yaml.CSafeLoader)
print(time.perf_counter() - started)
"""


@dataclass
class Row:
    tenants: int
    figures: dict[str, float] = field(default_factory=dict)


def timed(argv: Sequence[str], *, env: dict[str, str] | None = None) -> float:
    """Seconds from starting ``argv`` until it exited (successfully)."""
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=3600, env=env, check=False)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(
            f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
        )
    return seconds


def http_get(host: str, *, port: int | None = None, unix: Path | None = None) -> bytes:
    """The body of one GET (to 127.0.0.1:port or a unix socket); b'' if none."""
    try:
        if unix is not None:
            sock = socket.socket(socket.AF_UNIX)
            sock.settimeout(5)
            sock.connect(str(unix))
        else:
            sock = socket.create_connection((LOOPBACK, port or 0), timeout=5)
        with sock:
            sock.sendall(
                f"GET {POLICY_PATH} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
            )
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
    except OSError:
        return b""
    head, _, body = data.partition(b"\r\n\r\n")
    return body if head.startswith(b"HTTP/1.1 200") else b""


def background_compile(log: Path, timeout: float = 600) -> float:
    """Seconds until the compile the master started beside its workers is
    done (its process gone), counted from now."""
    started = time.monotonic()
    while True:
        found = re.search(r"in the background \(pid (\d+)\)", log.read_text(errors="replace"))
        if found and not Path(f"/proc/{found.group(1)}").exists():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise SystemExit("the background compile did not finish")
        time.sleep(0.01)


class MemoryWatch(threading.Thread):
    """Samples the gunicorn workers' VmRSS every 50 ms; keeps the maximum.

    Workers are the master's children that gunicorn logged as booted (the
    master's other child, the compile it runs beside them, is not one)."""

    def __init__(self, master: int, log: Path) -> None:
        super().__init__(daemon=True)
        self.master = master
        self.log = log
        self.peak = 0.0
        self.stopping = threading.Event()

    def current(self) -> list[float]:
        booted = set(re.findall(r"Booting worker with pid: (\d+)", self.log.read_text("latin-1")))
        return [rss_mib(pid) for pid in children(self.master) if str(pid) in booted]

    def run(self) -> None:
        while not self.stopping.wait(0.05):
            for value in self.current():
                if value == value:  # not NaN
                    self.peak = max(self.peak, value)

    def stop(self) -> None:
        self.stopping.set()
        self.join(5)


def measure(count: int, args: argparse.Namespace, root: Path) -> Row:
    row = Row(count)
    fig = row.figures
    key = TsigKey.generate()
    zone = Zone(PROVIDER, ["mta-sts A 127.0.0.1"], dynamic=True)
    say(f"{count:,} tenants: generating in {root}")
    config = write_provider(root / "provider", count, stack_config(root))
    tenants = root / "provider" / "tenants"
    state = root / "provider" / "var"
    # Files written in the last RACY_SECONDS are never cached (parsecache).
    time.sleep(RACY_SECONDS + 0.2)

    say("reference: the C loader over the same files")
    bare = [sys.executable, "-c", BARE_PARSE, str(tenants)]
    validate = [*CLI, "--config", str(config), "validate", "-q"]
    # Whole commands on both sides: interpreter start and imports included.
    # Interleaved (reference first, then validate first, ...), so that a
    # slow spell of the machine hits both alike; medians compared.
    runs: dict[str, list[float]] = {"bare": [], "validate": []}
    for r in range(args.repeat):
        for name in ("bare", "validate") if r % 2 == 0 else ("validate", "bare"):
            runs[name].append(timed(bare if name == "bare" else validate))
    fig["bare parse s"] = median(runs["bare"])
    fig["validate cold s"] = median(runs["validate"])
    compile_code = (
        "import sys; from pathlib import Path\n"
        "from policy_host.read.config import load_config\n"
        "from policy_host.serve.compiler import compile_snapshot\n"
        "from policy_host.read.tenants import default_jobs\n"
        "compile_snapshot(load_config(Path(sys.argv[1])), jobs=default_jobs())\n"
    )
    compile_argv = [sys.executable, "-c", compile_code, str(config)]
    fig["compile first s"] = timed(compile_argv)
    fig["validate warm s"] = median([timed(validate) for _ in range(args.repeat)])
    fig["compile unchanged s"] = median([timed(compile_argv) for _ in range(args.repeat)])
    fig["parse cache MiB"] = (state / "parse-cache.json").stat().st_size / 2**20
    fig["snapshot MiB"] = (state / "served.json").stat().st_size / 2**20

    with contextlib.ExitStack() as stack:
        ports, nginx = prepare_nginx(root, config, [])
        if "apply" not in args.skip:
            knot = stack.enter_context(KnotServer([zone], key))
            (root / "provider" / "tsig.key").write_text(
                f'key "{key.name}" {{ algorithm {key.algorithm}; secret "{key.secret}"; }};\n'
            )
            (root / "provider" / "tsig.key").chmod(0o600)
            with config.open("a") as handle:
                handle.write(
                    f"dns:\n  primary: {LOOPBACK}:{knot.port}\n  tsig_key_file: tsig.key\n"
                    f"  tsig_algorithm: {key.algorithm}\n  timeout: 30\n"
                    f"apply:\n  upstreams: http://{LOOPBACK}:{ports.verify}\n"
                    "  verify_timeout: 60\n"
                )
        last = f"mta-sts.{domain(count - 1)}"
        expected = (state / "www" / last).read_bytes()
        socket_path = root / "gunicorn.sock"

        say("starting policy-host serve with the snapshot of an earlier run")
        gunicorn = gunicorn_daemon(root, config)
        gunicorn.ready = None
        started = time.monotonic()
        gunicorn.start()
        try:
            while http_get(last, unix=socket_path) != expected:
                if time.monotonic() - started > 300:
                    raise SystemExit("the server did not answer in 300 s")
                gunicorn.check_alive()
                time.sleep(0.005)
            fig["start to answer s"] = time.monotonic() - started
            watch = MemoryWatch(gunicorn.pid, gunicorn.log_path)
            watch.start()
            # The compile the master runs beside the workers, then the swap.
            fig["background compile s"] = background_compile(gunicorn.log_path)
            time.sleep(2 * WATCH_INTERVAL + count / 100_000)
            fig["worker RSS MiB"] = max(watch.current())
            nginx.start()
            try:
                live_nginx, live_app, reload_s = [], [], []
                for r in range(args.repeat):
                    n = (count // 2 + r) % count
                    host = f"mta-sts.{domain(n)}"
                    path = tenants / f"{domain(n)}.yaml"
                    path.write_text(tenant_yaml(n).replace("604800", str(1209600 + r)))
                    want = f"max_age: {1209600 + r}".encode()
                    t0 = time.monotonic()
                    proc = subprocess.Popen(
                        [*CLI, "--config", str(config), "reload"],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE,
                    )
                    seen_nginx = seen_app = None
                    while seen_nginx is None or seen_app is None:
                        now = time.monotonic() - t0
                        if now > 60:
                            raise SystemExit("the change did not go live within 60 s")
                        if seen_nginx is None and want in http_get(host, port=ports.verify):
                            seen_nginx = time.monotonic() - t0
                        if seen_app is None and want in http_get(host, unix=socket_path):
                            seen_app = time.monotonic() - t0
                        time.sleep(0.005)
                    proc.wait(120)
                    reload_s.append(time.monotonic() - t0)
                    live_nginx.append(seen_nginx)
                    live_app.append(seen_app)
                fig["reload live nginx s"] = median(live_nginx)
                fig["reload live gunicorn s"] = median(live_app)
                fig["reload command s"] = median(reload_s)
                time.sleep(1.0)
                if "apply" not in args.skip:
                    apply_argv = [*CLI, "--config", str(config), "apply"]
                    say(f"apply: publishing all {count:,} tenants (setup)")
                    fig["apply all (setup) s"] = timed(apply_argv)
                    times = []
                    for r in range(args.repeat):
                        n = (count // 3 + r) % count
                        path = tenants / f"{domain(n)}.yaml"
                        path.write_text(tenant_yaml(n).replace("604800", str(2419200 + r)))
                        times.append(timed(apply_argv))
                    fig["apply one s"] = median(times)
                watch.stop()
                fig["worker RSS peak MiB"] = watch.peak
            finally:
                nginx.cleanup()
        finally:
            gunicorn.cleanup()
    return row


COLUMNS = [
    ("bare parse s", "C-loader parse s"),
    ("validate cold s", "validate (no cache) s"),
    ("validate warm s", "validate (cache) s"),
    ("compile first s", "first compile s"),
    ("compile unchanged s", "compile, no change s"),
    ("start to answer s", "start -> answer s"),
    ("background compile s", "then compile beside s"),
    ("reload live nginx s", "reload -> live, nginx s"),
    ("reload live gunicorn s", "reload -> live, gunicorn s"),
    ("reload command s", "reload command s"),
    ("apply all (setup) s", "apply, all tenants s"),
    ("apply one s", "apply, one change s"),
    ("worker RSS MiB", "worker RSS MiB"),
    ("worker RSS peak MiB", "worker RSS peak MiB"),
    ("parse cache MiB", "parse cache MiB"),
    ("snapshot MiB", "snapshot MiB"),
]


def table(rows: list[Row]) -> str:
    lines = ["| measure | " + " | ".join(f"{r.tenants:,}" for r in rows) + " |"]
    lines.append("| --- |" + " ---: |" * len(rows))
    for key, label in COLUMNS:
        if not any(key in r.figures for r in rows):
            continue
        values = [f"{r.figures[key]:.2f}" if key in r.figures else "-" for r in rows]
        lines.append(f"| {label} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def verdicts(row: Row) -> tuple[list[str], bool]:
    f = row.figures
    ratio = f["validate cold s"] / f["bare parse s"]
    checks = [
        ("3. start -> first correct answer (s)", f["start to answer s"], START_TARGET, "<="),
        (
            "3. one change live via nginx, reload included (s)",
            f["reload live nginx s"],
            LIVE_TARGET,
            "<=",
        ),
        (
            "3. one change live via gunicorn, reload included (s)",
            f["reload live gunicorn s"],
            LIVE_TARGET,
            "<=",
        ),
        ("3. memory per worker, peak (MiB)", f["worker RSS peak MiB"], MEMORY_TARGET, "<="),
        ("3. validate (no cache, all cores) x C-loader parse", ratio, VALIDATE_TARGET, "<="),
    ]
    if "apply one s" in f:
        checks.append(("5. apply, one changed tenant (s)", f["apply one s"], APPLY_TARGET, "<="))
    lines, ok = [], True
    for what, value, target, op in checks:
        met = value <= target
        ok = ok and met
        lines.append(
            f"{what:<58} {value:7.2f}  target {op} {target:<5g} {'met' if met else 'NOT MET'}"
        )
    return lines, ok


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", default="1000,10000,100000", metavar="N,N,...")
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        metavar="R",
        help="runs of each timed step (medians reported)",
    )
    parser.add_argument("--skip", default="", help="'apply' to leave apply out")
    parser.add_argument("--keep", action="store_true", help="keep the work folders")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.tenants.split(",")]
    if min(counts) < 1 or args.repeat < 1:
        parser.error("counts and --repeat must be at least 1")
    ensure_tools("nginx", "openssl", *(() if "apply" in args.skip else ("knotd",)))
    say(f"load average before: {load_average()}; cores: {os.cpu_count()}")
    rows = []
    for count in counts:
        with workdir(f"scale-bench-{count}-", keep=args.keep) as root:
            rows.append(measure(count, args, root))
        print(table(rows), flush=True)
        print(flush=True)
    say(f"load average after: {load_average()}")
    lines, ok = verdicts(rows[-1])
    print(f"targets at {rows[-1].tenants:,} tenants ({os.cpu_count()} cores):")
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
