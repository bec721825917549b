"""Work over a list in forked processes: each chunk prepared in parallel,
then finished one at a time, in list order.

Reports take tens of microseconds each, so handing them from process to
process costs about as much as the work itself (docs/performance.md). Here
each worker is forked with the list already in its memory, takes the next
chunk not taken yet, prepares it (``prepare``: reading and parsing, which
needs nothing shared), then waits for its turn and finishes it
(``finish``: storing, with a database connection of its own). Turns go in
chunk order, so whatever is finished (ids given out, the first copy of a
report kept) is what one process going through the list would have done.
A worker whose turn has not come prepares its next chunk meanwhile.
Only what ``finish`` returns goes down a pipe to the parent, which hands
it on in order.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import multiprocessing
import os
import signal
import traceback
from collections.abc import Callable, Generator, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any, TypeVar, cast

from policy_host.errors import PolicyHostError

T = TypeVar("T")
P = TypeVar("P")
R = TypeVar("R")

# A worker waiting for its turn looks this often whether its parent is gone.
PATIENCE = 1.0
# Chunks a worker prepares ahead of its turn instead of waiting for it.
HELD = 2
# What a worker sends when it has finished all its chunks.
_ALL_DONE = -1


class WorkerFailed(PolicyHostError):
    """A worker process failed or ended before sending all its results."""


def in_turn(
    items: Sequence[T],
    prepare: Callable[[Sequence[T]], P],
    finisher: Callable[[], Callable[[P, bool], R]],
    jobs: int,
    chunk: int,
) -> Generator[R, None, None]:
    """``finish(prepare(c), last)`` for each chunk ``c`` of ``items``, in
    order, by ``jobs`` forked processes: ``prepare`` runs in all of them at
    once; ``finish`` runs in one at a time, in chunk order (``last``: the
    final chunk of the list). ``finisher`` is called once in each worker,
    after the fork, to make its ``finish`` (to open what must not cross a
    fork). Closing the generator early (or an error) stops the workers."""
    total = (len(items) + chunk - 1) // chunk
    # The next chunk to take: a worker that the machine's load holds back
    # takes fewer, instead of holding the others up.
    taken = multiprocessing.Value("q", 0, lock=True)
    # The next chunk to finish, and the condition its finisher waits on.
    turn = multiprocessing.Value("q", 0, lock=False)
    turns = multiprocessing.Condition()
    readers: list[Connection] = []
    pids: list[int] = []
    parent = os.getpid()
    try:
        for _ in range(jobs):
            reader, writer = multiprocessing.Pipe(duplex=False)
            pid = os.fork()
            if pid == 0:  # the worker: never returns
                reader.close()
                shared = _Shared(taken, turn, turns, total, chunk, parent)
                _work(items, prepare, finisher, writer, shared)
            writer.close()
            readers.append(reader)
            pids.append(pid)
        done: dict[int, R] = {}
        for wanted in range(total):
            while wanted not in done:
                if not readers:
                    raise WorkerFailed("the worker processes ended before their work was done")
                for one in wait(readers):
                    _receive(cast(Connection, one), readers, done)
            yield done.pop(wanted)
    finally:
        for reader in readers:
            reader.close()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)


def _receive(reader: Connection, readers: list[Connection], done: dict[int, Any]) -> None:
    try:
        index, ok, results = reader.recv()
    except EOFError:
        # A worker says when it has finished; a pipe that closes before
        # that is a worker that died (killed, out of memory).
        raise WorkerFailed("a worker process ended before its work was done") from None
    if not ok:
        if isinstance(results, tuple):  # one of ours: its message and exit status
            failed = WorkerFailed(results[0])
            failed.exit_status = results[1]
            raise failed
        raise WorkerFailed(f"a worker process failed:\n{results}")
    if index == _ALL_DONE:
        readers.remove(reader)
        reader.close()
        return
    done[index] = results


class _Shared:
    """What the workers share: the chunk counter, whose turn it is, and
    the condition a worker waits on for its turn."""

    def __init__(
        self, taken: Any, turn: Any, turns: Any, total: int, chunk: int, parent: int
    ) -> None:
        self.taken, self.turn, self.turns = taken, turn, turns
        self.total, self.chunk, self.parent = total, chunk, parent

    def take(self) -> int:
        with self.taken.get_lock():
            index = int(self.taken.value)
            self.taken.value = index + 1
        return index

    def is_turn(self, index: int) -> bool:
        """Whether ``index`` may be finished now (a glance: no lock)."""
        return bool(self.turn.value == index)

    def wait_turn(self, index: int) -> None:
        with self.turns:
            while self.turn.value != index:
                if not self.turns.wait(PATIENCE) and os.getppid() != self.parent:
                    raise WorkerFailed("the parent process is gone")

    def pass_turn(self) -> None:
        with self.turns:
            self.turn.value += 1
            self.turns.notify_all()


def _work(
    items: Sequence[T],
    prepare: Callable[[Sequence[T]], P],
    finisher: Callable[[], Callable[[P, bool], R]],
    writer: Connection,
    shared: _Shared,
) -> None:
    status = 0
    # What the worker was forked with (the list, the modules) lives as long
    # as it does: out of the collector's sight, its collections walk only
    # what the work makes (about a tenth of a report's instructions with
    # 50,000 inputs listed, docs/performance.md), and leave those pages
    # shared with the parent instead of copying them on write.
    gc.freeze()
    try:
        finish = finisher()
        # Chunks prepared and not finished yet, oldest first.
        held: collections.deque[tuple[int, P]] = collections.deque()
        more = True
        while held or more:
            # Rather than wait for the turn of the oldest chunk held,
            # prepare another (up to HELD). The chunk whose turn it is is
            # always the oldest held by some worker, which finishes it
            # next: the turns keep going.
            if more and (not held or (len(held) < HELD and not shared.is_turn(held[0][0]))):
                index = shared.take()
                if index < shared.total:
                    start = index * shared.chunk
                    held.append((index, prepare(items[start : start + shared.chunk])))
                else:
                    more = False
                continue
            index, made = held.popleft()
            shared.wait_turn(index)
            # A chunk that fails to finish keeps the turn: no later chunk
            # is finished out of order; the parent stops everyone.
            # The parent stops every worker when one fails: a commit and the
            # Maildir messages it moves out of new/ go together or not at
            # all, so SIGTERM waits until they are done.
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
            result = finish(made, index == shared.total - 1)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
            shared.pass_turn()
            writer.send((index, True, result))
        writer.send((_ALL_DONE, True, None))
    except PolicyHostError as exc:
        # One of ours (a StoreError: disk full, say): its message and the
        # exit status it stands for go to the parent (not the object: not
        # every error's constructor takes its message back from a pickle).
        status = 1
        with contextlib.suppress(BaseException):
            writer.send((-2, False, (str(exc), exc.exit_status)))
    except BaseException:
        status = 1
        with contextlib.suppress(BaseException):
            writer.send((-2, False, traceback.format_exc()))
    finally:
        # Leave at once: no atexit handlers, no flushing of buffers the
        # parent also holds, no closing of its database connection.
        os._exit(status)
