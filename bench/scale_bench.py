"""Benchmark the control plane at scale: 1,000, 10,000 and 100,000 tenants.

    .venv/bin/python bench/scale_bench.py [--tenants 1000,10000,100000] [--repeat R]
                                          [--skip apply]

For each tenant count, in a fresh temporary folder on 127.0.0.1 (nginx with
the shipped site config on free ports, as in bench/serve_bench.py; gunicorn
on a unix socket; knotd taking TSIG-signed updates for `apply`):

- the reference: parsing the same files with PyYAML's C loader
  (``yaml.load(..., CSafeLoader)`` per file, nothing else), one process per
  core (bench/validate_bench.py, which also runs this pair alone);
- `policy-host validate` with no parse cache (every file read, one process
  per core; its runs interleaved with the reference's, the ratio the median
  of the pairs') and with a warm one;
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
from validate_bench import VALIDATE_TARGET, validate_against_reference

from policy_host.publish.environment import settle_time
from policy_host.read.parsecache import RACY_SECONDS
from policy_host.serve.web import WATCH_INTERVAL

START_TARGET = 2.0
LIVE_TARGET = 2.0
# Issue 17: a change costs what changed.
CHANGE_TARGET = 0.2
APPLY_CHANGED_TARGET = 1.0
MEMORY_TARGET = 150.0
APPLY_TARGET = 5.0
# The configured worker wait `apply` sleeps before it publishes (excluded
# from its target).
SETTLE = settle_time(WATCH_INTERVAL)
PROVIDER = "provider.example"


class Figures(dict[str, float]):
    """Figures that are printed as they are measured: a run at 1,000,000
    tenants that is stopped part way still says what it found."""

    def __setitem__(self, key: str, value: float) -> None:
        say(f"  {key}: {value:.3f}")
        super().__setitem__(key, value)


@dataclass
class Row:
    tenants: int
    figures: dict[str, float] = field(default_factory=Figures)


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


class Live:
    """Times one tenant change until nginx and gunicorn serve it."""

    def __init__(self, nginx_port: int, socket_path: Path) -> None:
        self.nginx_port = nginx_port
        self.socket_path = socket_path

    def change(
        self, path: Path, n: int, age: int, argv: Sequence[str] | None
    ) -> tuple[float, float, float]:
        """Write tenant ``n``'s file at ``path`` with ``max_age: age``, then
        run ``argv`` (None: a watcher acts by itself); the seconds from the
        write (or the command's start) until nginx, then gunicorn, serve
        it, and until the command exits (the write itself: 0)."""
        host = f"mta-sts.{domain(n)}"
        want = f"max_age: {age}".encode()
        text = tenant_yaml(n).replace("604800", str(age))
        t0 = time.monotonic()
        if argv is None:
            path.write_text(text)
            proc = None
        else:
            path.write_text(text)
            t0 = time.monotonic()
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        seen_nginx = seen_app = None
        while seen_nginx is None or seen_app is None:
            if time.monotonic() - t0 > 120:
                raise SystemExit("the change did not go live within 120 s")
            if seen_nginx is None and want in http_get(host, port=self.nginx_port):
                seen_nginx = time.monotonic() - t0
            if seen_app is None and want in http_get(host, unix=self.socket_path):
                seen_app = time.monotonic() - t0
            time.sleep(0.002)
        command = 0.0
        if proc is not None:
            proc.wait(300)
            command = time.monotonic() - t0
        return seen_nginx, seen_app, command


def start_watch(config: Path, root: Path) -> subprocess.Popen[bytes]:
    """`policy-host watch` beside the server, once its first full compile
    (which finds nothing new) is done."""
    log = root / "watch.log"
    proc = subprocess.Popen(
        [*CLI, "--config", str(config), "--debug", "watch", "--full-every", "86400"],
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )
    started = time.monotonic()
    while "watching" not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() - started > 3600:
            raise SystemExit(f"policy-host watch did not start: {log.read_text()[-2000:]}")
        time.sleep(0.05)
    say(f"watch: first full compile in {time.monotonic() - started:.1f} s")
    return proc


def disk_bytes(where: Path) -> float:
    """Bytes on disk (allocated blocks) of a file, a folder or a glob."""
    paths = sorted(where.parent.glob(where.name)) if "*" in where.name else [where]
    out = subprocess.run(
        ["du", "-s", "--block-size=1", *map(str, paths)], capture_output=True, text=True
    )
    return float(sum(int(line.split()[0]) for line in out.stdout.splitlines()))


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
    tenants = root / "provider" / "tenants"
    state = root / "provider" / "var"
    # No `acme` section: apply would hold every new tenant until it has a
    # certificate (publish.apply), and this bench makes none.
    sections = stack_config(root).replace(f"acme:\n  config_dir: {root / 'le'}\n", "")
    if args.workdir is not None and tenants.is_dir() and len(os.listdir(tenants)) == count:
        # The files of an earlier run (--workdir): a million take minutes to make.
        say(f"using the {count:,} tenant files already in {tenants}")
        config = root / "provider" / "config.yaml"
        config.write_text(config.read_text().split("serve:")[0] + sections)
    else:
        generated = time.monotonic()
        config = write_provider(root / "provider", count, sections)
        fig["generate s"] = time.monotonic() - generated
        say(f"generated {count:,} tenant files in {fig['generate s']:.1f} s")
    # Files written in the last RACY_SECONDS are never cached (parsecache).
    time.sleep(RACY_SECONDS + 0.2)

    if "validate" not in args.skip:
        validate_against_reference(fig, config, tenants, args.repeat)
    compile_code = (
        "import sys; from pathlib import Path\n"
        "from policy_host.read.config import load_config\n"
        "from policy_host.serve.compiler import compile_snapshot\n"
        "from policy_host.read.tenants import default_jobs\n"
        "compile_snapshot(load_config(Path(sys.argv[1])), jobs=default_jobs())\n"
    )
    compile_argv = [sys.executable, "-c", compile_code, str(config)]
    fig["compile first s"] = timed(compile_argv)
    if "validate" not in args.skip:
        validate = [*CLI, "--config", str(config), "validate", "-q"]
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
        # A --workdir run's log from before would name a compile long done.
        gunicorn.log_path.unlink(missing_ok=True)
        gunicorn.ready = None
        started = time.monotonic()
        gunicorn.start()
        try:
            while http_get(last, unix=socket_path) != expected:
                if time.monotonic() - started > max(300.0, count / 2000):
                    raise SystemExit("the server did not answer in time")
                gunicorn.check_alive()
                time.sleep(0.005)
            fig["start to answer s"] = time.monotonic() - started
            watch = MemoryWatch(gunicorn.pid, gunicorn.log_path)
            watch.start()
            # The compile the master runs beside the workers, then the swap.
            fig["background compile s"] = background_compile(
                gunicorn.log_path, timeout=max(600.0, count / 500)
            )
            time.sleep(2 * WATCH_INTERVAL + count / 100_000)
            fig["worker RSS MiB"] = max(watch.current())
            nginx.start()
            try:
                live = Live(ports.verify, socket_path)
                changes: dict[str, list[float]] = {}
                for mode in ("reload", "reload --changed", "watch"):
                    if mode in args.skip:
                        continue
                    watcher = start_watch(config, root) if mode == "watch" else None
                    try:
                        for r in range(args.repeat):
                            n = (count // 2 + r + 10 * len(mode)) % count
                            age = 1209600 + r + 10 * len(mode)
                            path = tenants / f"{domain(n)}.yaml"
                            argv = [*CLI, "--config", str(config), "reload"]
                            if mode != "watch":
                                argv += ["--changed", str(path)] if "changed" in mode else []
                            seen = live.change(path, n, age, argv if watcher is None else None)
                            for side, value in zip(
                                ("nginx", "gunicorn", "command"), seen, strict=True
                            ):
                                changes.setdefault(f"{mode} {side} s", []).append(value)
                    finally:
                        if watcher is not None:
                            watcher.terminate()
                            watcher.wait(30)
                for name, values in changes.items():
                    fig[name] = median(values)
                time.sleep(1.0)
                if "apply" not in args.skip:
                    apply_argv = [*CLI, "--config", str(config), "apply"]
                    if "apply-all" not in args.skip:
                        say(f"apply: publishing all {count:,} tenants (setup)")
                        fig["apply all (setup) s"] = timed(apply_argv)
                        times = []
                        for r in range(args.repeat):
                            n = (count // 3 + r) % count
                            path = tenants / f"{domain(n)}.yaml"
                            path.write_text(tenant_yaml(n).replace("604800", str(2419200 + r)))
                            times.append(timed(apply_argv))
                        fig["apply one s"] = median(times)
                    # The watcher is stopped: the command serves the change itself.
                    times = []
                    for r in range(args.repeat):
                        n = (count // 4 + r) % count
                        path = tenants / f"{domain(n)}.yaml"
                        path.write_text(tenant_yaml(n).replace("604800", str(4838400 + r)))
                        times.append(timed([*apply_argv, "--changed", str(path)]) - SETTLE)
                    fig["apply changed s"] = median(times)
                watch.stop()
                fig["worker RSS peak MiB"] = watch.peak
                for name, where in (
                    ("tenant files", tenants),
                    ("policy files", state / "www"),
                    ("snapshot + journal", state / "served*"),
                    ("parse cache", state / "parse-cache.json"),
                    ("apply state", state / "state.sqlite3*"),
                ):
                    fig[f"disk {name} B/tenant"] = disk_bytes(where) / count
            finally:
                nginx.cleanup()
        finally:
            gunicorn.cleanup()
    return row


COLUMNS = [
    ("generate s", "generating the files s"),
    ("bare parse s", "C-loader parse s"),
    ("validate cold s", "validate (no cache) s"),
    ("validate x C-loader", "validate / C-loader parse, pairs' median x"),
    ("validate warm s", "validate (cache) s"),
    ("compile first s", "first compile s"),
    ("compile unchanged s", "compile, no change s"),
    ("start to answer s", "start -> answer s"),
    ("background compile s", "then compile beside s"),
    ("reload nginx s", "reload -> live, nginx s"),
    ("reload gunicorn s", "reload -> live, gunicorn s"),
    ("reload command s", "reload command s"),
    ("reload --changed nginx s", "reload --changed -> live, nginx s"),
    ("reload --changed gunicorn s", "reload --changed -> live, gunicorn s"),
    ("reload --changed command s", "reload --changed command s"),
    ("watch nginx s", "watch: written -> live, nginx s"),
    ("watch gunicorn s", "watch: written -> live, gunicorn s"),
    ("apply all (setup) s", "apply, all tenants s"),
    ("apply one s", "apply, one change s"),
    ("apply changed s", "apply --changed, one change, less the worker wait s"),
    ("worker RSS MiB", "worker RSS MiB"),
    ("worker RSS peak MiB", "worker RSS peak MiB"),
    ("parse cache MiB", "parse cache MiB"),
    ("snapshot MiB", "snapshot MiB"),
    ("disk tenant files B/tenant", "disk: tenant files B/tenant"),
    ("disk policy files B/tenant", "disk: policy files B/tenant"),
    ("disk snapshot + journal B/tenant", "disk: snapshot + journal B/tenant"),
    ("disk parse cache B/tenant", "disk: parse cache B/tenant"),
    ("disk apply state B/tenant", "disk: apply state B/tenant"),
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
    checks = [("start -> last tenant answered (s)", f["start to answer s"], START_TARGET)]
    for mode in ("watch", "reload --changed", "reload"):
        target = LIVE_TARGET if mode == "reload" else CHANGE_TARGET
        for side in ("nginx", "gunicorn"):
            key = f"{mode} {side} s"
            if key in f:
                checks.append((f"one change live via {side}, {mode} (s)", f[key], target))
    checks += [
        ("memory per worker, peak (MiB)", f["worker RSS peak MiB"], MEMORY_TARGET),
    ]
    if "validate x C-loader" in f:
        checks.append(
            ("validate (no cache) x C-loader parse, all cores", f["validate x C-loader"],
             VALIDATE_TARGET)
        )  # fmt: skip
    if "apply one s" in f:
        checks.append(("apply, one changed tenant (s)", f["apply one s"], APPLY_TARGET))
    if "apply changed s" in f:
        checks.append(
            ("apply --changed, one tenant, less the wait (s)", f["apply changed s"],
             APPLY_CHANGED_TARGET)
        )  # fmt: skip
    lines, ok = [], True
    for what, value, target in checks:
        met = value <= target
        ok = ok and met
        lines.append(
            f"{what:<58} {value:7.2f}  target <= {target:<5g} {'met' if met else 'NOT MET'}"
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
    parser.add_argument(
        "--skip",
        default="",
        help="comma-separated: 'validate' (no reference parse, no validate, no compile with "
        "nothing changed), 'apply' (leave apply out), 'apply-all' (no apply publishing "
        "every tenant: only 'apply --changed' of tenants new to the state), 'reload', "
        "'reload --changed', 'watch'",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folders")
    parser.add_argument(
        "--workdir",
        type=Path,
        help="work here (kept), reusing the tenant files an earlier run left in it",
    )
    args = parser.parse_args(argv)
    args.skip = {part.strip() for part in args.skip.split(",") if part.strip()}
    counts = [int(n) for n in args.tenants.split(",")]
    if min(counts) < 1 or args.repeat < 1:
        parser.error("counts and --repeat must be at least 1")
    ensure_tools("nginx", "openssl", *(() if "apply" in args.skip else ("knotd",)))
    say(f"load average before: {load_average()}; cores: {os.cpu_count()}")
    rows = []
    for count in counts:
        if args.workdir is not None:
            args.workdir.mkdir(parents=True, exist_ok=True)
            rows.append(measure(count, args, args.workdir))
        else:
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
