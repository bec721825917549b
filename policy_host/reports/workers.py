"""Work over a list in forked processes, results taken back in list order.

``multiprocessing.Pool`` pickles every task to its workers and runs two
threads in the parent to feed them and to read what they send back; for
reports that take tens of microseconds each, those threads cost the parent,
which also stores every report, about as much CPU as the storing
(docs/performance.md). Here each worker is forked with the list already in
its memory, takes the next chunk not taken yet, and writes its results
down a pipe of its own; the parent puts them back in list order, and holds
at most ``AHEAD`` chunks per worker: then a full pipe holds a worker back
until the parent catches up.
"""

from __future__ import annotations

import contextlib
import fcntl
import multiprocessing
import os
import signal
import traceback
from collections.abc import Callable, Generator, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any, TypeVar, cast

from policy_host.errors import PolicyHostError

T = TypeVar("T")
R = TypeVar("R")


class WorkerFailed(PolicyHostError):
    """A worker process failed or ended before sending all its results."""


# Chunks a worker may be ahead of the parent, beyond what its pipe holds.
AHEAD = 16
# What a pipe may hold: Linux lets anyone ask for up to 1 MiB.
PIPE_BYTES = 1 << 20


def in_order(
    items: Sequence[T], work: Callable[[T], R], jobs: int, chunk: int
) -> Generator[list[R], None, None]:
    """``[work(x) for x in c]`` for each chunk ``c`` of ``items``, in order,
    done by ``jobs`` forked processes. Closing the generator early (or an
    error) stops the workers."""
    total = (len(items) + chunk - 1) // chunk
    # The next chunk to take: a worker that the machine's load holds back
    # takes fewer, instead of holding the others up.
    taken = multiprocessing.Value("q", 0)
    readers: list[Connection] = []
    pids: list[int] = []
    try:
        for _ in range(jobs):
            reader, writer = multiprocessing.Pipe(duplex=False)
            _widen(writer)
            pid = os.fork()
            if pid == 0:  # the worker: never returns
                reader.close()
                _work(items, work, writer, taken, total, chunk)
            writer.close()
            readers.append(reader)
            pids.append(pid)
        done: dict[int, list[R]] = {}
        for wanted in range(total):
            # Take what is ready without waiting (a worker blocks on a full
            # pipe), and wait only for the chunk that comes next.
            while True:
                have = wanted in done
                if not have and not readers:
                    raise WorkerFailed("the worker processes ended before their work was done")
                if have and (len(done) >= AHEAD * jobs or not readers):
                    break
                ready = wait(readers, 0 if have else None)
                if not ready:
                    break
                for one in ready:
                    _receive(cast(Connection, one), readers, done)
            yield done.pop(wanted)
    finally:
        for reader in readers:
            reader.close()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)


def _widen(pipe: Connection) -> None:
    """Let the pipe hold several chunks (Linux; 64 KiB, about one chunk of
    reports, by default), so a worker goes on while the parent stores."""
    with contextlib.suppress(OSError, AttributeError):
        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)


def _receive(reader: Connection, readers: list[Connection], done: dict[int, Any]) -> None:
    try:
        index, ok, results = reader.recv()
    except EOFError:  # that worker has finished (or died: see the caller)
        readers.remove(reader)
        reader.close()
        return
    if not ok:
        raise WorkerFailed(f"a worker process failed:\n{results}")
    done[index] = results


def _work(
    items: Sequence[T],
    work: Callable[[T], R],
    writer: Connection,
    taken: Any,
    total: int,
    chunk: int,
) -> None:
    status = 0
    try:
        while True:
            with taken.get_lock():
                index = taken.value
                taken.value += 1
            if index >= total:
                break
            start = index * chunk
            writer.send((index, True, [work(x) for x in items[start : start + chunk]]))
    except BaseException:
        status = 1
        with contextlib.suppress(BaseException):
            writer.send((-1, False, traceback.format_exc()))
    finally:
        # Leave at once: no atexit handlers, no flushing of buffers the
        # parent also holds, no closing of its database connection.
        os._exit(status)
