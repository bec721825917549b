"""Forked workers (``reports.workers.in_turn``): chunks prepared in every
worker, finished one at a time in chunk order whatever worker holds them,
results back in list order, a worker's failure or death raised in the
parent, and no worker left behind however the parent stops reading."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import pytest

from policy_host.reports import workers
from policy_host.reports.schema import StoreError

T = TypeVar("T")


def slow_for_some(part: Sequence[int]) -> list[tuple[int, int]]:
    # Uneven work, so chunks are ready out of order.
    out = []
    for n in part:
        if n % 7 == 0:
            time.sleep(0.002)
        out.append((n * n, os.getpid()))
    return out


def as_is() -> Callable[[T, bool], T]:
    return lambda made, last: made


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
    chunks = list(workers.in_turn(items, slow_for_some, as_is, 3, 16))
    assert [len(c) for c in chunks] == [16] * 62 + [8]
    results = [r for c in chunks for r in c]
    assert [square for square, _ in results] == [n * n for n in items]
    pids = {pid for _, pid in results}
    assert len(pids) == 3
    assert os.getpid() not in pids
    assert children() == before


def test_chunks_are_finished_one_at_a_time_in_chunk_order(tmp_path: Path) -> None:
    """Each finish writes its chunk's first item, the worker's pid and
    "in"/"out" to one log: every worker's chunks must come in list order,
    none overlapping, the last one told it is the last."""
    log = tmp_path / "finished"

    def finisher() -> Callable[[list[tuple[int, int]], bool], str]:
        def finish(made: list[tuple[int, int]], last: bool) -> str:
            first = int(made[0][0] ** 0.5)
            with log.open("a") as handle:
                handle.write(f"in {first} {os.getpid()} {last}\n")
            time.sleep(0.001 if first % 3 else 0.004)  # uneven, so turns matter
            with log.open("a") as handle:
                handle.write(f"out {first} {os.getpid()}\n")
            return f"{first}"

        return finish

    results = list(workers.in_turn(list(range(400)), slow_for_some, finisher, 2, 10))
    assert results == [str(n) for n in range(0, 400, 10)]
    lines = [line.split() for line in log.read_text().splitlines()]
    assert [(w[0], int(w[1])) for w in lines] == [
        (step, n) for n in range(0, 400, 10) for step in ("in", "out")
    ]
    assert [w[3] for w in lines if w[0] == "in"] == ["False"] * 39 + ["True"]
    assert len({w[2] for w in lines}) == 2  # both workers finished chunks


def fails_at_500(part: Sequence[int]) -> list[int]:
    if 500 in part:
        raise ValueError("no 500 here")
    return list(part)


def test_a_failing_worker_is_raised_in_the_parent() -> None:
    before = children()
    with pytest.raises(workers.WorkerFailed, match="ValueError: no 500 here"):
        for _ in workers.in_turn(list(range(1000)), fails_at_500, as_is, 2, 10):
            pass
    assert children() == before


def cannot_store() -> Callable[[list[int], bool], list[int]]:
    def finish(made: list[int], last: bool) -> list[int]:
        if 500 in made:
            raise StoreError("/var/lib/x/reports.sqlite3: cannot write the report store: full")
        return made

    return finish


def test_a_store_error_in_a_worker_keeps_its_message_and_exit_status() -> None:
    """A worker that cannot store hands the parent the error's message and
    status, so ``reports ingest`` answers 75 (try again later) with it."""
    before = children()
    with pytest.raises(workers.WorkerFailed) as raised:
        for _ in workers.in_turn(list(range(1000)), list, cannot_store, 2, 10):
            pass
    assert str(raised.value) == "/var/lib/x/reports.sqlite3: cannot write the report store: full"
    assert raised.value.exit_status == 75
    assert children() == before


def test_a_finish_under_way_is_not_cut_short_when_another_worker_fails(
    tmp_path: Path,
) -> None:
    """The parent stops every worker when one fails; a worker in the middle
    of finishing a chunk (a commit, then moving its Maildir messages) ends
    it first."""
    marker = tmp_path / "finished-0"

    def prepare(part: Sequence[int]) -> list[int]:
        if 10 in part:  # the second chunk: fails at once
            raise ValueError("chunk 1 cannot be read")
        return list(part)

    def finisher() -> Callable[[list[int], bool], list[int]]:
        def finish(made: list[int], last: bool) -> list[int]:
            time.sleep(0.5)  # the other worker fails meanwhile
            marker.write_text(str(made[0]))
            return made

        return finish

    before = children()
    with pytest.raises(workers.WorkerFailed, match="chunk 1 cannot be read"):
        for _ in workers.in_turn(list(range(40)), prepare, finisher, 2, 10):
            pass
    assert marker.read_text() == "0"
    assert children() == before


def dies_at_500(part: Sequence[int]) -> list[int]:
    if 500 in part:
        os.kill(os.getpid(), signal.SIGKILL)
    return list(part)


def test_a_worker_that_dies_is_raised_in_the_parent() -> None:
    """Killed (by the OOM killer, say), a worker says nothing: its pipe
    closing before it said it was done is a failure, not the end."""
    before = children()
    with pytest.raises(workers.WorkerFailed, match="ended before its work was done"):
        for _ in workers.in_turn(list(range(1000)), dies_at_500, as_is, 2, 10):
            pass
    assert children() == before


def test_stopping_early_stops_the_workers() -> None:
    before = children()
    chunks = workers.in_turn(list(range(100_000)), slow_for_some, as_is, 2, 10)
    assert [square for square, _ in next(chunks)] == [n * n for n in range(10)]
    chunks.close()
    assert children() == before


def test_an_empty_list_makes_no_chunks() -> None:
    assert list(workers.in_turn([], slow_for_some, as_is, 2, 10)) == []
