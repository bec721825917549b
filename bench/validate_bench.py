"""Benchmark `policy-host validate` against the bare C-loader parse.

    .venv/bin/python bench/validate_bench.py [--tenants 100000] [--repeat 5]
                                             [--workdir DIR]

Target (issue 17): `validate` of every file, with no parse cache, takes at
most 1.3 times the bare C-loader parse of the same files, both using every
core. The reference reads each file and hands it to
``yaml.load(..., CSafeLoader)``, nothing else, in one process per core
(each a contiguous part of the sorted list). Both are whole commands
(interpreter start and imports included), run in turn (reference first,
then validate first, ...) so that a slow spell of the machine hits both
alike. Prints each side's median, the median of the pair-by-pair ratios,
and the verdict; exits 1 when the target is not met.

The files are those of bench/scale_bench.py (``benchlib.write_provider``);
``--workdir`` keeps them for the next run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from benchlib import CLI, load_average, median, say, workdir, write_provider

VALIDATE_TARGET = 1.3

# One process per core, as `validate` uses: the parent forks one child per
# further core and parses the first part itself.
BARE_PARSE = """\
import os, sys, yaml
folder = sys.argv[1]
names = sorted(os.listdir(folder))
jobs = os.cpu_count() or 1
children = []
for job in range(1, jobs):
    pid = os.fork()
    if pid == 0:
        part = names[job * len(names) // jobs : (job + 1) * len(names) // jobs]
        for name in part:
            with open(os.path.join(folder, name), "rb") as handle:
                yaml.load(handle.read(), Loader=yaml.CSafeLoader)
        os._exit(0)
    children.append(pid)
for name in names[: len(names) // jobs]:
    with open(os.path.join(folder, name), "rb") as handle:
        yaml.load(handle.read(), Loader=yaml.CSafeLoader)
for pid in children:
    if os.waitpid(pid, 0)[1] != 0:
        sys.exit("a child failed")
"""


def timed(argv: Sequence[str]) -> float:
    """Seconds from starting ``argv`` until it exited (successfully)."""
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=3600, check=False)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(
            f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
        )
    return seconds


def validate_against_reference(
    fig: dict[str, float], config: Path, tenants: Path, repeat: int
) -> None:
    """`validate` with no parse cache against the C loader's bare parse,
    both on every core: each side's median and the median pair ratio."""
    say(f"reference: the C loader over the same files, {os.cpu_count()} processes")
    bare = [sys.executable, "-c", BARE_PARSE, str(tenants)]
    validate = [*CLI, "--config", str(config), "validate", "-q"]
    runs: dict[str, list[float]] = {"bare": [], "validate": []}
    for r in range(repeat):
        for name in ("bare", "validate") if r % 2 == 0 else ("validate", "bare"):
            runs[name].append(timed(bare if name == "bare" else validate))
        say(f"  round {r + 1}: reference {runs['bare'][-1]:.2f} s, "
            f"validate {runs['validate'][-1]:.2f} s")  # fmt: skip
    fig["bare parse s"] = median(runs["bare"])
    fig["validate cold s"] = median(runs["validate"])
    fig["validate x C-loader"] = median(
        [v / b for v, b in zip(runs["validate"], runs["bare"], strict=True)]
    )


def verdict(ratio: float) -> tuple[str, bool]:
    met = ratio <= VALIDATE_TARGET
    what = "validate (no cache, all cores) x C-loader parse (all cores)"
    return (
        f"{what:<62} {ratio:6.2f}x  target <= {VALIDATE_TARGET:g}x {'met' if met else 'NOT MET'}",
        met,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=100_000, metavar="N")
    parser.add_argument("--repeat", type=int, default=5, metavar="R", help="runs of each")
    parser.add_argument("--workdir", type=Path, help="work here (kept), reusing its tenant files")
    args = parser.parse_args(argv)
    if args.tenants < 1 or args.repeat < 1:
        parser.error("--tenants and --repeat must be at least 1")
    say(f"load average before: {load_average()}; cores: {os.cpu_count()}")
    fig: dict[str, float] = {}
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        run(args.tenants, args.workdir, args.repeat, fig)
    else:
        with workdir("validate-bench-") as root:
            run(args.tenants, root, args.repeat, fig)
    say(f"load average after: {load_average()}")
    print(f"reference (C loader, all cores) s   {fig['bare parse s']:8.2f}")
    print(f"validate (no cache, all cores) s    {fig['validate cold s']:8.2f}")
    line, met = verdict(fig["validate x C-loader"])
    print(f"targets at {args.tenants:,} tenants ({os.cpu_count()} cores):")
    print(line)
    return 0 if met else 1


def run(count: int, root: Path, repeat: int, fig: dict[str, float]) -> None:
    tenants = root / "provider" / "tenants"
    config = root / "provider" / "config.yaml"
    if tenants.is_dir() and config.exists() and len(os.listdir(tenants)) == count:
        say(f"using the {count:,} tenant files already in {tenants}")
    else:
        started = time.monotonic()
        config = write_provider(root / "provider", count)
        say(f"generated {count:,} tenant files in {time.monotonic() - started:.1f} s")
    # No parse cache: every file is read (a compile of an earlier run may
    # have left one).
    (root / "provider" / "var" / "parse-cache.json").unlink(missing_ok=True)
    validate_against_reference(fig, config, tenants, repeat)


if __name__ == "__main__":
    sys.exit(main())
