"""nginx's policy files at scale: one folder against a hashed layout.

    python bench/layout_bench.py [--files 1000000] [--lookups 200000] [--rounds 5]

nginx answers a policy request by opening ``<www>/<host>`` (``try_files``),
reading it and closing it; at 1,000,000 tenants the question is whether one
folder of a million names costs more per lookup than a layout that spreads
them (``<www>/<h0h1>/<h2h3>/<host>`` by a hash of the name, 65,536 folders
of about 15 files). This makes both with the same files, then times the
same system calls nginx makes (open, fstat, read, close) for random names,
the two layouts' rounds interleaved; and the time to make them, and the
kernel's dentry and inode memory after touching every file (from
/proc/slabinfo where readable).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

BODY = b"version: STSv1\r\nmode: enforce\r\nmx: mx.customer.example\r\nmax_age: 604800\r\n"


def host(n: int) -> str:
    return f"mta-sts.customer{n:07d}.example"


def flat(root: Path, name: str) -> str:
    return f"{root}/{name}"


def hashed(root: Path, name: str) -> str:
    digest = hashlib.blake2b(name.encode(), digest_size=2).hexdigest()
    return f"{root}/{digest[:2]}/{digest[2:]}/{name}"


def make(root: Path, count: int, where: Callable[[Path, str], str]) -> float:
    started = time.monotonic()
    made: set[str] = set()
    for n in range(count):
        path = where(root, host(n))
        folder = os.path.dirname(path)
        if folder not in made:
            os.makedirs(folder, exist_ok=True)
            made.add(folder)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, BODY)
        os.close(fd)
    return time.monotonic() - started


def lookups(paths: Sequence[str]) -> float:
    """Microseconds per open + fstat + read + close, as nginx does."""
    started = time.perf_counter()
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        os.fstat(fd)
        os.read(fd, 4096)
        os.close(fd)
    return (time.perf_counter() - started) / len(paths) * 1e6


def slab_mib() -> str:
    try:
        lines = Path("/proc/slabinfo").read_text().splitlines()
    except OSError:
        return "slabinfo not readable"
    sizes = {}
    for line in lines[2:]:
        parts = line.split()
        if parts[0] in ("dentry", "ext4_inode_cache"):
            sizes[parts[0]] = int(parts[2]) * int(parts[3]) / 2**20
    return ", ".join(f"{k} {v:.0f} MiB" for k, v in sorted(sizes.items()))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--lookups", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="where to make them (a temp dir)")
    args = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="layout-bench-", dir=args.dir))
    try:
        layouts = {"one folder": (base / "flat", flat), "hashed": (base / "hashed", hashed)}
        for name, (root, where) in layouts.items():
            root.mkdir()
            print(f"# {name}: made {args.files:,} files in {make(root, args.files, where):.1f} s")
            print(f"# after making them: {slab_mib()}", flush=True)
        rng = random.Random(8461)
        picks = [host(rng.randrange(args.files)) for _ in range(args.lookups)]
        results: dict[str, list[float]] = {name: [] for name in layouts}
        for r in range(args.rounds):
            order = list(layouts) if r % 2 == 0 else list(reversed(layouts))
            for name in order:
                root, where = layouts[name]
                results[name].append(lookups([where(root, p) for p in picks]))
        for name, values in results.items():
            print(
                f"{name:<11} {statistics.median(values):6.2f} us per lookup "
                f"(rounds: {', '.join(f'{v:.2f}' for v in values)})"
            )
        print(f"# after the lookups: {slab_mib()}")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
