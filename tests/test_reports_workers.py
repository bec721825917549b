"""Forked workers (``reports.workers.in_order``): results in list order
whatever worker made them, a worker's failure raised in the parent, and no
worker left behind however the parent stops reading."""

from __future__ import annotations

import os
import time

import pytest

from policy_host.reports import workers


def slow_for_some(n: int) -> tuple[int, int]:
    # Uneven work, so chunks finish out of order.
    if n % 7 == 0:
        time.sleep(0.002)
    return n * n, os.getpid()


def children() -> set[int]:
    """Children of this process, zombies included."""
    me = str(os.getpid())
    found = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[1] == me:
                found.add(int(pid))
    return found


def test_results_come_back_in_order_from_every_worker() -> None:
    before = children()
    items = list(range(1000))
    chunks = list(workers.in_order(items, slow_for_some, 3, 16))
    assert [len(c) for c in chunks] == [16] * 62 + [8]
    results = [r for c in chunks for r in c]
    assert [square for square, _ in results] == [n * n for n in items]
    pids = {pid for _, pid in results}
    assert len(pids) == 3
    assert os.getpid() not in pids
    assert children() == before


def fails_at_500(n: int) -> int:
    if n == 500:
        raise ValueError("no 500 here")
    return n


def test_a_failing_worker_is_raised_in_the_parent() -> None:
    before = children()
    with pytest.raises(workers.WorkerFailed, match="ValueError: no 500 here"):
        for _ in workers.in_order(list(range(1000)), fails_at_500, 2, 10):
            pass
    assert children() == before


def test_stopping_early_stops_the_workers() -> None:
    before = children()
    chunks = workers.in_order(list(range(100_000)), slow_for_some, 2, 10)
    assert [square for square, _ in next(chunks)] == [n * n for n in range(10)]
    chunks.close()
    assert children() == before


def test_an_empty_list_makes_no_chunks() -> None:
    assert list(workers.in_order([], slow_for_some, 2, 10)) == []
