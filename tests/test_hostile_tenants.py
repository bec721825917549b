"""The hostile tenant corpus (``tests/hostile/``): each file gets the clear
``path:line: message`` recorded for it in ``tests/hostile/expected.txt``,
in bounded time and memory, and none of them takes another tenant down:
not in ``validate``, not in the real server's master when it recompiles,
and a tenant whose file turns hostile keeps its last good policy.

Files too odd for git are made here: a sparse 50 MB file, a file one byte
over the limit, a FIFO (which would block a plain ``open()`` forever), a
symlink to a device, and a folder named like a tenant file.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.layout import ROOT
from support.procs import LOOPBACK, Daemon, free_port, port_open, wait_until
from test_server_gunicorn import exchange, http_request

from policy_host.model import Policy
from policy_host.read.config import load_config
from policy_host.read.tenantfile import MAX_TENANT_BYTES
from policy_host.read.tenants import load_tenants
from policy_host.render import render

CORPUS = ROOT / "tests" / "hostile"
EXPECTED = CORPUS / "expected.txt"
_SCRIPT = Path(sys.executable).with_name("policy-host")
CLI = (str(_SCRIPT),) if _SCRIPT.exists() else (sys.executable, "-m", "policy_host.cli.main")
# Bounds for reading the whole corpus (it takes well under a second).
TIME_LIMIT = 10.0
MEMORY_LIMIT_MIB = 200
GOOD = render(Policy("enforce", ("mx1.good.example",), 604800))


@dataclass(frozen=True)
class Expectation:
    line: int | None  # None: no problem at all
    message: str

    @property
    def served(self) -> bool:
        return self.line is None or self.message.startswith("warning: ")


def corpus_expectations() -> dict[str, Expectation]:
    table: dict[str, Expectation] = {}
    for raw in EXPECTED.read_text(encoding="ascii").splitlines():
        if not raw or raw.startswith("#"):
            continue
        line = raw.encode("ascii").decode("unicode_escape")
        name, _, rest = line.partition(" ")
        if rest == "ok":
            table[name] = Expectation(None, "")
        else:
            number, _, message = rest.partition(": ")
            table[name] = Expectation(int(number), message)
    return table


EXPECTATIONS = corpus_expectations()
# Made by the test: (how, the first problem).
GENERATED = {
    "huge.example.yaml": Expectation(0, "file is 52428800 bytes; the limit is 262144"),
    "over-by-one.example.yaml": Expectation(0, f"file is {MAX_TENANT_BYTES + 1} bytes; the limit"),
    "fifo.example.yaml": Expectation(0, "not a regular file"),
    "device.example.yaml": Expectation(0, "not a regular file"),
    "folder.example.yaml": Expectation(0, "cannot read: Is a directory"),
}


def make_generated(tenants: Path) -> None:
    with open(tenants / "huge.example.yaml", "wb") as handle:
        handle.truncate(50 * 1024 * 1024)  # sparse: 50 MB that cost no disk
    (tenants / "over-by-one.example.yaml").write_bytes(b"#" * (MAX_TENANT_BYTES + 1))
    os.mkfifo(tenants / "fifo.example.yaml")
    (tenants / "device.example.yaml").symlink_to("/dev/zero")
    (tenants / "folder.example.yaml").mkdir()


def make_tree(root: Path) -> Path:
    """A provider tree whose tenants folder is the corpus plus the generated
    files; returns the config path."""
    tenants = root / "tenants"
    shutil.copytree(CORPUS, tenants, ignore=shutil.ignore_patterns("expected.txt"))
    make_generated(tenants)
    config = root / "config.yaml"
    config.write_text(
        "tenants_dir: tenants\nstate_dir: var\npolicy_host: mta-sts.provider.example\n"
        "id_zone: _mta-sts.provider.example\n"
        f"serve:\n  bind: {LOOPBACK}:8080\n  workers: 1\n  threads: 2\n"
    )
    return config


def shown(path: Path, expectation: Expectation) -> str:
    where = f"{path}:{expectation.line}" if expectation.line else str(path)
    return f"{where}: {expectation.message}"


def test_the_table_covers_every_corpus_file() -> None:
    files = {p.name for p in CORPUS.iterdir() if p.name != EXPECTED.name}
    assert files == set(EXPECTATIONS)
    # What the issue asks the corpus to hold, at least once each.
    needed = (
        "tabs duplicate-keys billion-laughs binary latin1 bom list mx-double-wildcard "
        "mx-wildcard-glued mx-empty-label mx-trailing-dot mx-254-bytes mx-bad-punycode "
        "mx-zero-width"
    )
    for name in needed.split():
        assert f"{name}.example.yaml" in files


def test_every_hostile_file_gets_its_recorded_first_problem(tmp_path: Path) -> None:
    config = load_config(make_tree(tmp_path))
    started = time.monotonic()
    result = load_tenants(config)
    elapsed = time.monotonic() - started

    first: dict[str, str] = {}
    for problem in result.problems:
        first.setdefault(problem.path, str(problem))
    wrong = []
    for name, expectation in {**EXPECTATIONS, **GENERATED}.items():
        path = config.tenants_dir / name
        got = first.get(str(path))
        if expectation.line is None:
            if got is not None:
                wrong.append(f"{name}: expected no problem, got {got}")
        elif got is None or not got.startswith(shown(path, expectation)):
            wrong.append(f"{name}: expected {shown(path, expectation)!r}, got {got!r}")
    assert not wrong, "\n".join(wrong)
    served = {f"{name.removesuffix('.yaml')}" for name, e in EXPECTATIONS.items() if e.served}
    assert set(result.tenants) == served
    assert render(result.tenants["good.example"].policy) == GOOD
    assert elapsed < TIME_LIMIT


# ru_maxrss survives exec: a command forked straight from this (large) test
# process would report the test process's size. A small launcher forks the
# command instead and writes the command's own peak RSS (KiB) to a pipe.
_LAUNCHER = """
import os, sys
report, argv = int(sys.argv[1]), sys.argv[2:]
pid = os.fork()
if pid == 0:
    os.close(report)
    os.execvp(argv[0], argv)
_, status, usage = os.wait4(pid, 0)
os.write(report, str(usage.ru_maxrss).encode())
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_measured(argv: list[str], out: Path, err: Path) -> tuple[int, float, float]:
    """Run ``argv`` (at most TIME_LIMIT seconds); (exit status, seconds, peak
    RSS of the command itself in MiB)."""
    started = time.monotonic()
    read_end, write_end = os.pipe()
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER, str(write_end), *argv],
            stdout=stdout,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            pass_fds=(write_end,),
            start_new_session=True,
        )
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        try:
            proc.wait(timeout=TIME_LIMIT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher and the command
            proc.wait()
            pytest.fail(f"{argv} did not finish in {TIME_LIMIT} s")
        reported = reader.read()
    return proc.returncode, time.monotonic() - started, int(reported or b"0") / 1024


def test_validate_reports_every_file_in_bounded_time_and_memory(tmp_path: Path) -> None:
    config = make_tree(tmp_path)
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    status, elapsed, peak_mib = run_measured([*CLI, "--config", str(config), "validate"], out, err)
    stdout_text, stderr_text = out.read_text(), err.read_text()
    assert status == 1, stdout_text + stderr_text
    lines = stdout_text.splitlines()
    tenants = config.parent / "tenants"
    for name, expectation in {**EXPECTATIONS, **GENERATED}.items():
        if expectation.line is None:
            continue
        prefix = shown(tenants / name, expectation)
        assert any(line.startswith(prefix) for line in lines), prefix
    assert "Traceback" not in stdout_text + stderr_text
    assert "2 valid" in stderr_text
    assert elapsed < TIME_LIMIT
    assert 0 < peak_mib < MEMORY_LIMIT_MIB, f"validate peaked at {peak_mib:.0f} MiB"


# -- the real server ------------------------------------------------------------


@dataclass(frozen=True)
class Served:
    port: int
    daemon: Daemon

    def get(self, host: str) -> tuple[int, bytes]:
        reply = exchange(self.port, http_request(host))
        return reply.status, reply.body


@pytest.fixture
def served_corpus(tmp_path: Path) -> Iterator[tuple[Served, Path]]:
    """`policy-host serve` over the corpus, with four valid tenants that will
    turn hostile (``victim-N.example``)."""
    config = make_tree(tmp_path)
    for n in range(4):
        (config.parent / "tenants" / f"victim-{n}.example.yaml").write_text(
            f"mode: testing\nmx: [mx.victim-{n}.example]\nmax_age: 86400\n"
        )
    port = free_port("tcp")
    argv = [*CLI, "--config", str(config), "serve", "--bind", f"{LOOPBACK}:{port}"]
    with Daemon(
        argv,
        name="policy-host-serve",
        workdir=tmp_path / "logs",
        ready=lambda: port_open(LOOPBACK, port),
        ready_timeout=15.0,
    ) as daemon:
        yield Served(port, daemon), config


def victim(n: int) -> bytes:
    return render(Policy("testing", (f"mx.victim-{n}.example",), 86400))


def test_hostile_files_never_take_the_server_or_other_tenants_down(
    served_corpus: tuple[Served, Path],
) -> None:
    server, config = served_corpus
    tenants = config.parent / "tenants"
    assert server.get("mta-sts.good.example") == (200, GOOD)
    for n in range(4):
        assert server.get(f"mta-sts.victim-{n}.example") == (200, victim(n))
    assert server.get("mta-sts.billion-laughs.example")[0] == 404

    # The victims' files turn hostile: the worst of the corpus.
    for n, source in enumerate(
        ["deep-flow.example.yaml", "billion-laughs.example.yaml", "huge-int.example.yaml"]
    ):
        shutil.copyfile(CORPUS / source, tenants / f"victim-{n}.example.yaml")
    (tenants / "victim-3.example.yaml").unlink()
    with open(tenants / "victim-3.example.yaml", "wb") as handle:
        handle.truncate(50 * 1024 * 1024)

    # `reload` compiles in its own process; SIGHUP makes the gunicorn
    # master itself compile the same folder (a crash there stops everything).
    done = subprocess.run(
        [*CLI, "--config", str(config), "reload"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    for n in range(4):
        assert f"victim-{n}.example: not changed: its last good policy stays served" in done.stderr
    os.kill(server.daemon.pid, signal.SIGHUP)
    time.sleep(1.5)  # the master recompiles, then replaces its worker
    wait_until(lambda: server.get("mta-sts.good.example") == (200, GOOD), 10.0, what="a new worker")
    server.daemon.check_alive()
    for n in range(4):
        assert server.get(f"mta-sts.victim-{n}.example") == (200, victim(n))
    assert server.get("mta-sts.good.example") == (200, GOOD)
    server.daemon.check_alive()
