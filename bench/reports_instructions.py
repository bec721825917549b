"""Instructions per report of each side of ``reports ingest``, counted by
valgrind's callgrind: the same count on every run, whatever the machine's
load, so two trees can be compared where CPU seconds move by a third from
run to run (docs/performance.md).

Writes a day of the bench's reports (``reports_bench.write_day``), then
runs this script under callgrind three times in one worker's shoes (the
day listed, what the worker was forked with frozen out of the
collector's sight): with no report, preparing ``--reports`` reports
(``batch.prepare_chunk``), and preparing and storing them
(``batch.store_chunk``); the differences, divided by the count, are the
two sides' instructions a report. ``PYTHONHASHSEED`` is fixed so that
sets and dicts come out the same. To compare two trees, run each tree's
own copy of this script.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from benchlib import ROOT, workdir, write_provider
from reports_bench import DAY, write_day
from support.procs import require_binary

sys.path.insert(0, str(ROOT))

from policy_host.read.config import load_config
from policy_host.reports import batch
from policy_host.reports.sources import make_ingester, message_cap
from policy_host.reports.store import Store

STEPS = ("none", "prepare", "store")


def inner(root: Path, count: int, step: str) -> None:
    """One counted run: ``step`` over the first ``count`` reports."""
    config = load_config(root / "config.yaml")
    listed = list(batch.sources([root / "day"]))
    job = batch.Job(config.tlsrpt, config.dns.resolver, config.dns.timeout, message_cap(config))
    with Store(root / f"store-{step}.sqlite3") as store:
        ingester = make_ingester(config, store)
        gc.freeze()  # as a worker does after the fork (reports/workers.py)
        if step == "none":
            return
        chunks = [
            batch.prepare_chunk(job, listed[i : min(i + batch.BATCH, count)])
            for i in range(0, count, batch.BATCH)
        ]
        if step == "store":
            for i, chunk in enumerate(chunks):
                batch.store_chunk(ingester, chunk, i == len(chunks) - 1)


def counted(root: Path, count: int, step: str) -> int:
    done = subprocess.run(
        [
            "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
            sys.executable, __file__, "--inner", str(root), "--reports", str(count), step,
        ],
        env={**os.environ, "PYTHONHASHSEED": "0"},
        capture_output=True,
        text=True,
        timeout=1800,
        check=True,
    )  # fmt: skip
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise SystemExit(f"no count from callgrind:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=10_000)
    parser.add_argument("--reports", type=int, default=1000)
    parser.add_argument("--inner", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("step", nargs="?", choices=STEPS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        inner(args.inner, args.reports, args.step)
        return 0
    require_binary("valgrind")
    with workdir("reports-instructions-") as root:
        write_provider(
            root, args.tenants, "tlsrpt:\n  rua: [https://tlsrpt.provider.example/v1/report]\n"
        )
        # The whole day is listed, as a worker has it, whatever is counted.
        write_day(root / "day", args.tenants, 50_000, int(time.time()) // DAY * DAY - DAY)
        none, prepare, store = (counted(root, args.reports, step) for step in STEPS)
    n = args.reports
    print(f"instructions per report ({n} reports): preparing {(prepare - none) / n:,.0f}, "
          f"storing {(store - prepare) / n:,.0f}, both {(store - none) / n:,.0f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
