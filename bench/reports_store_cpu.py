"""CPU time per report of each side of ``reports ingest``, measured apart.

``reports_ingest_cpu.py`` runs the two sides together, so on a shared
machine each one's CPU time moves with the other's and with everyone
else's load. Here each side runs alone in this process, several rounds,
and the least CPU time counts: the preparing part (``batch.prepare_chunk``,
chunk by chunk, as a worker prepares them) and the storing part
(``batch.store_chunk`` over those chunks, into a fresh store each round).
A worker does both, one chunk after the other.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from benchlib import ROOT, workdir, write_provider
from reports_bench import DAY, write_day

sys.path.insert(0, str(ROOT))

from policy_host.read.config import load_config
from policy_host.reports import batch
from policy_host.reports.sources import make_ingester, message_cap
from policy_host.reports.store import Store


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=10_000)
    parser.add_argument("--reports", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    n = args.reports
    with workdir("reports-store-cpu-") as root:
        config_path = write_provider(
            root, args.tenants, "tlsrpt:\n  rua: [https://tlsrpt.provider.example/v1/report]\n"
        )
        config = load_config(config_path)
        write_day(root / "day", args.tenants, n, int(time.time()) // DAY * DAY - DAY)
        listed = list(batch.sources([root / "day"]))
        step = batch.BATCH
        preparing, storing, walls = [], [], []
        chunks: list[list[batch.Done]] = []
        for _ in range(args.rounds):
            # A fresh job each round: its memo is a worker's, which starts empty.
            job = batch.Job(
                config.tlsrpt, config.dns.resolver, config.dns.timeout, message_cap(config)
            )
            began = time.process_time()
            chunks = [batch.prepare_chunk(job, listed[i : i + step]) for i in range(0, n, step)]
            preparing.append(time.process_time() - began)
        for round_ in range(args.rounds):
            with Store(root / f"store-{round_}.sqlite3") as store:
                ingester = make_ingester(config, store)
                began, wall = time.process_time(), time.perf_counter()
                heard = [
                    batch.store_chunk(ingester, chunk, i == len(chunks) - 1)
                    for i, chunk in enumerate(chunks)
                ]
                storing.append(time.process_time() - began)
                walls.append(time.perf_counter() - wall)
            stored = sum(new for new, _ in heard)
            others = [outcome for _, rest in heard for outcome in rest]
            assert stored == n and not others, others[:3]
    print(f"per report, least of {args.rounds} rounds: preparing "
          f"{min(preparing) / n * 1e6:.1f} us, storing {min(storing) / n * 1e6:.1f} us "
          f"(storing wall {min(walls):.2f}-{max(walls):.2f} s); "
          f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
