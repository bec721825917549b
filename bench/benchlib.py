"""What the benchmark scripts share: tenants, processes, nginx, wrk, figures.

Everything runs on 127.0.0.1, on free ports, in a temporary folder; every
process started is stopped by its own PID (``support.procs.Daemon``, from
the test harness), never by name. Nothing here is part of the test suite.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support.procs import LOOPBACK, Daemon, free_port, require_binary  # noqa: E402

__all__ = [
    "LOOPBACK",
    "ROOT",
    "Daemon",
    "Figures",
    "WrkResult",
    "compile_bytecode",
    "domain",
    "ensure_tools",
    "free_port",
    "median",
    "run_wrk",
    "say",
    "write_provider",
]

POLICY_PATH = "/.well-known/mta-sts.txt"
PROVIDER = "provider.example"
_SCRIPT = Path(sys.executable).with_name("policy-host")
# The installed script: `reload` and `apply` recognise the server by a
# command line naming policy-host (server.running_pid).
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "policy_host.cli.main"]


def compile_bytecode() -> None:
    """Write the package's bytecode, as pip does when it installs: a command
    timed from a tree without it (PYTHONDONTWRITEBYTECODE set, a fresh
    checkout) compiles every module it imports from source on each run,
    about a third of a one-tenant `reports` summary (docs/performance.md)."""
    import compileall

    if not compileall.compile_dir(ROOT / "policy_host", quiet=1):
        raise SystemExit("policy_host: bytecode could not be written")


def say(text: str) -> None:
    print(f"# {text}", file=sys.stderr, flush=True)


def domain(n: int) -> str:
    return f"customer{n:06d}.example"


def tenant_yaml(n: int) -> str:
    d = domain(n)
    return f"mode: enforce\nmx:\n  - mx1.{d}\n  - mx2.{d}\nmax_age: 604800\n"


def write_provider(root: Path, count: int, extra: str = "") -> Path:
    """A provider config and ``count`` tenant files under ``root``; returns
    the config path. ``extra`` is appended to the config."""
    tenants = root / "tenants"
    tenants.mkdir(parents=True, exist_ok=True)
    for n in range(count):
        (tenants / f"{domain(n)}.yaml").write_text(tenant_yaml(n))
    config = root / "config.yaml"
    config.write_text(
        f"tenants_dir: tenants\nstate_dir: var\npolicy_host: mta-sts.{PROVIDER}\n"
        f"id_zone: _mta-sts.{PROVIDER}\n{extra}"
    )
    return config


def ensure_tools(*names: str) -> None:
    """Install what is missing through ``scripts/setup --test`` (Debian
    packages, as root), or say what to install."""
    missing = [n for n in names if shutil.which(n, path=_path()) is None]
    if not missing:
        return
    say(f"missing {', '.join(missing)}: running scripts/setup --test")
    subprocess.run([str(ROOT / "scripts" / "setup"), "--test"], check=False, timeout=1800)
    still = [n for n in names if shutil.which(n, path=_path()) is None]
    if still:
        raise SystemExit(f"bench: needs {', '.join(still)} (apt-get install nginx wrk)")


def _path() -> str:
    return os.pathsep.join([os.environ.get("PATH", os.defpath), "/usr/sbin", "/sbin"])


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


# -- wrk ----------------------------------------------------------------------

# Requests rotate over the hosts listed in a file (one per line), each
# prepared once per thread so that the Lua side costs the same for every
# server measured; every thread starts at its own place in the list.
ROTATE_LUA = r"""
local reqs = {}
local n = 0
local threads = 0
setup = function(thread)
  thread:set("offset", threads * 7919)
  threads = threads + 1
end
init = function(args)
  local f = assert(io.open(args[1], "r"))
  for host in f:lines() do
    reqs[#reqs + 1] = wrk.format("GET", "/.well-known/mta-sts.txt", {["Host"] = host})
  end
  f:close()
  n = (offset or 0) % #reqs
end
request = function()
  n = n + 1
  if n > #reqs then n = 1 end
  return reqs[n]
end
"""

# A flood of requests for random host names that nobody hosts.
RANDOM_HOST_LUA = r"""
init = function(args)
  math.randomseed(os.time() + (tonumber(tostring({}):sub(8)) or 0))
end
request = function()
  local host = string.format("mta-sts.x%08d.flood.example", math.random(0, 99999999))
  return wrk.format("GET", "/.well-known/mta-sts.txt", {["Host"] = host})
end
"""

DONE_LUA = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\nWRK-JSON {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, ' ..
    '"write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    socket_errors: int
    status_errors: int
    p50_ms: float
    p99_ms: float
    max_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def errors(self) -> int:
        return self.socket_errors + self.status_errors


def lua_script(folder: Path, name: str, body: str) -> Path:
    path = folder / name
    path.write_text(body + DONE_LUA)
    return path


def run_wrk(
    url: str,
    script: Path,
    *,
    args: Sequence[str] = (),
    connections: int = 64,
    threads: int = 2,
    duration: float = 5.0,
    prefix: Sequence[str] = (),
) -> WrkResult:
    """One wrk run; ``prefix`` runs it under another command (``unshare``)."""
    argv = [
        *prefix,
        require_binary("wrk"),
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration:g}s",
        "--timeout",
        "5s",
        "-s",
        str(script),
        url,
        *(["--", *args] if args else []),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 120, check=False)
    return parse_wrk(done.stdout + done.stderr, shlex.join(argv))


def parse_wrk(output: str, what: str) -> WrkResult:
    for line in output.splitlines():
        if line.startswith("WRK-JSON "):
            raw = json.loads(line.removeprefix("WRK-JSON "))
            return WrkResult(
                requests=raw["requests"],
                seconds=raw["duration_us"] / 1e6,
                socket_errors=raw["connect"] + raw["read"] + raw["write"] + raw["timeout"],
                status_errors=raw["status"],
                p50_ms=raw["p50_us"] / 1000,
                p99_ms=raw["p99_us"] / 1000,
                max_ms=raw["max_us"] / 1000,
            )
    raise RuntimeError(f"wrk gave no figures ({what}):\n{output}")


def run_wrk_parallel(
    jobs: Sequence[tuple[str, Sequence[str]]],
    script: Path,
    *,
    connections: int,
    duration: float,
    prefix: Sequence[str] = (),
) -> WrkResult:
    """One wrk process (one thread, ``connections``) per (url, script args)
    at once; requests added up, the worst p99 of them kept. Over HTTPS each
    process sends its own URL's name as SNI: several processes give
    several names, as many senders would."""
    procs = []
    for url, args in jobs:
        tail = ["--", *args] if args else []
        argv = [*prefix, require_binary("wrk"), "-t1", f"-c{connections}", f"-d{duration:g}s",
                "--timeout", "5s", "-s", str(script), url, *tail]  # fmt: skip
        procs.append(
            (
                argv,
                subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
            )
        )
    results = []
    for argv, proc in procs:
        out, _ = proc.communicate(timeout=duration + 120)
        results.append(parse_wrk(out, shlex.join(argv)))
    seconds = max(r.seconds for r in results)
    return WrkResult(
        requests=sum(r.requests for r in results),
        seconds=seconds,
        socket_errors=sum(r.socket_errors for r in results),
        status_errors=sum(r.status_errors for r in results),
        p50_ms=median([r.p50_ms for r in results]),
        p99_ms=max(r.p99_ms for r in results),
        max_ms=max(r.max_ms for r in results),
    )


def with_hosts_file(hosts: Path, argv: Sequence[str]) -> list[str]:
    """``argv`` run with ``hosts`` bind-mounted on /etc/hosts in a private
    mount namespace (root only; the machine's file is not touched): wrk
    takes the TLS server name (SNI) from the URL, so the names must resolve."""
    script = f'mount --bind {shlex.quote(str(hosts))} /etc/hosts && exec "$@"'
    return [
        require_binary("unshare"),
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        "sh",
        *argv,
    ]


# -- figures -------------------------------------------------------------------


@dataclass
class Figures:
    """Results of several rounds per name; medians reported."""

    runs: dict[str, list[WrkResult]] = field(default_factory=dict)

    def add(self, name: str, result: WrkResult) -> None:
        self.runs.setdefault(name, []).append(result)

    def rps(self, name: str) -> float:
        return median([r.rps for r in self.runs[name]])

    def p99(self, name: str) -> float:
        return median([r.p99_ms for r in self.runs[name]])

    def errors(self, name: str) -> int:
        return sum(r.errors for r in self.runs[name])

    def requests(self, name: str) -> int:
        return sum(r.requests for r in self.runs[name])

    def line(self, name: str, reference: str | None = None) -> str:
        rps, p99 = self.rps(name), self.p99(name)
        rounds = " ".join(f"{r.rps:,.0f}" for r in self.runs[name])
        ratio = f"{rps / self.rps(reference):5.2f}x" if reference else "     "
        return (
            f"{name:<44} {rps:>10,.0f} req/s {ratio}  p99 {p99:7.2f} ms  "
            f"errors {self.errors(name)}  (rounds: {rounds})"
        )


def interleaved(
    rounds: int, names: Sequence[str], measure: Callable[[str], WrkResult], figures: Figures
) -> None:
    """``rounds`` rounds; in each, every name once, starting one further on
    each round, so that slow drifts of the machine hit all alike."""
    for r in range(rounds):
        order = list(names[r % len(names) :]) + list(names[: r % len(names)])
        for name in order:
            result = measure(name)
            figures.add(name, result)
            say(
                f"round {r + 1}/{rounds} {name}: {result.rps:,.0f} req/s, "
                f"p99 {result.p99_ms:.2f} ms, errors {result.errors}"
            )


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def cpu_ticks(pids: Sequence[int]) -> int:
    """utime + stime of processes, in clock ticks (0 for gone ones)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


@contextmanager
def workdir(prefix: str, keep: bool = False) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        if keep:
            say(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until ``check()`` is true (TimeoutError after ``timeout``)."""
    started = time.monotonic()
    while True:
        try:
            if check():
                return time.monotonic() - started
        except OSError:
            pass
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.01)


def compile_tenants(config: Path) -> None:
    """The control plane's compile (snapshot, policy files, parse cache)."""
    code = (
        "import sys; from pathlib import Path\n"
        "from policy_host.read.config import load_config\n"
        "from policy_host.serve.compiler import compile_snapshot\n"
        "from policy_host.read.tenants import default_jobs\n"
        "compile_snapshot(load_config(Path(sys.argv[1])), jobs=default_jobs())\n"
    )
    subprocess.run([sys.executable, "-c", code, str(config)], check=True, timeout=3600)
