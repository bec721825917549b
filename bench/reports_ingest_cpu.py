"""CPU time of ``reports ingest`` in the parent (listing the inputs,
forking, hearing the outcomes) and in its workers (reading, parsing and
storing).

On a shared machine the wall time of ``reports_bench.py`` moves with
everyone else's load; CPU seconds per report move much less, so two trees
can be compared by running this with each one's ``PYTHONPATH`` in turn.
``--profile`` adds the parent's cProfile (its main thread, in CPU time of
that thread, so waits for the GIL or the disk are left out) by own time.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import resource
import sys
import time

from benchlib import ROOT, workdir, write_provider
from reports_bench import DAY, write_day

sys.path.insert(0, str(ROOT))

from policy_host.read.config import load_config
from policy_host.reports import batch
from policy_host.reports.sources import make_ingester, message_cap
from policy_host.reports.store import Store


def children_cpu() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=10_000)
    parser.add_argument("--reports", type=int, default=10_000)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    with workdir("reports-cpu-") as root:
        config_path = write_provider(
            root, args.tenants, "tlsrpt:\n  rua: [https://tlsrpt.provider.example/v1/report]\n"
        )
        config = load_config(config_path)
        write_day(root / "day", args.tenants, args.reports, int(time.time()) // DAY * DAY - DAY)
        job = batch.Job(config.tlsrpt, config.dns.resolver, config.dns.timeout, message_cap(config))
        profile = cProfile.Profile(time.thread_time)
        # A forked worker would go on profiling (and take several times
        # the CPU); only the parent is profiled.
        os.register_at_fork(after_in_child=profile.disable)
        with Store(config.reports_db) as store:
            ingester = make_ingester(config, store)
            before = children_cpu()
            began, cpu, main_cpu = time.perf_counter(), time.process_time(), time.thread_time()
            if args.profile:
                profile.enable()
            counts = batch.run(ingester, [root / "day"], job, args.jobs, lambda *_: None)
            profile.disable()
            wall, cpu = time.perf_counter() - began, time.process_time() - cpu
            main_cpu = time.thread_time() - main_cpu
            workers = children_cpu() - before
    n = args.reports
    print(f"{dict(counts)}: {wall:.2f} s; CPU per report: parent {cpu / n * 1e6:.0f} us "
          f"(its main thread {main_cpu / n * 1e6:.0f} us), "
          f"workers {workers / n * 1e6:.0f} us")  # fmt: skip
    if args.profile:
        pstats.Stats(profile).sort_stats("tottime").print_stats(15)
    return 0


if __name__ == "__main__":
    sys.exit(main())
