"""``check_all`` over several forked processes, for many tenants.

One event loop spends a core on building and parsing DNS messages long
before the resolver is busy, so the command splits the tenants over
processes, each with its own event loop and its share of the queries in
flight.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.connection
import threading
import time
import traceback
from collections.abc import Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from policy_host.check import dnsclient
from policy_host.check.checks import Progress, check_all
from policy_host.check.context import CheckContext
from policy_host.check.reasons import TenantReport
from policy_host.model import Tenant


def run_checks(
    ctx: CheckContext,
    tenants: Sequence[Tenant],
    *,
    workers: int,
    progress: Progress | None = None,
    processes: int = 1,
) -> list[TenantReport]:
    """``check_all`` in a fresh event loop (for the CLI).

    With ``processes`` above 1 and many tenants, the tenants are split over
    that many forked processes, each with its own event loop and
    ``workers / processes`` tenants at a time: one event loop spends a core
    on building and parsing DNS messages long before the resolver is busy.
    Only call it so where no other thread runs (the CLI).
    """
    if processes <= 1 or len(tenants) < PARALLEL_MIN_TENANTS or threading.active_count() > 1:
        return asyncio.run(check_all(ctx, tenants, workers=workers, progress=progress))
    return _run_forked(ctx, tenants, workers, progress, processes)


# Fewer tenants than this are checked in one process: forking costs more.
PARALLEL_MIN_TENANTS = 200
# How often a child process says how far it got.
PROGRESS_EVERY = 0.2


def _check_share(
    ctx: CheckContext,
    tenants: Sequence[Tenant],
    workers: int,
    parts: int,
    conn: Connection,
) -> None:
    """A child's part: check ``tenants``, send progress, then the reports."""
    last = 0.0

    def tell(done: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= PROGRESS_EVERY:
            last = now
            conn.send(("progress", done))

    client = ctx.lookup if isinstance(ctx.lookup, dnsclient.DnsClient) else None
    before = client.queries if client is not None else 0
    if client is not None:
        client.take_share(parts)
    try:
        reports = asyncio.run(check_all(ctx, tenants, workers=workers, progress=tell))
        queries = client.queries - before if client is not None else 0
        conn.send(("done", reports, queries))
    except BaseException:  # the parent raises it: nothing may be lost silently
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def _run_forked(
    ctx: CheckContext,
    tenants: Sequence[Tenant],
    workers: int,
    progress: Progress | None,
    processes: int,
) -> list[TenantReport]:
    shares = [list(range(n, len(tenants), processes)) for n in range(processes)]
    share_workers = max(1, -(-workers // processes))
    children: dict[Connection, int] = {}
    running: list[BaseProcess] = []
    try:
        for n, indexes in enumerate(shares):
            share = [tenants[i] for i in indexes]
            conn, child = _start(ctx, share, share_workers, processes, n)
            children[conn] = n
            running.append(child)
        return _collect(ctx, children, shares, len(tenants), progress)
    finally:
        for child in running:
            if child.is_alive():
                child.terminate()
            child.join()


def _start(
    ctx: CheckContext, share: list[Tenant], workers: int, processes: int, n: int
) -> tuple[Connection, BaseProcess]:
    """Fork child ``n`` to check ``share``; the end of its pipe we read."""
    context = multiprocessing.get_context("fork")
    parent_end, child_end = context.Pipe(duplex=False)
    child = context.Process(
        target=_check_share,
        args=(ctx, share, workers, processes, child_end),
        name=f"policy-host-check-{n}",
        daemon=True,
    )
    child.start()
    child_end.close()
    return parent_end, child


def _collect(
    ctx: CheckContext,
    children: dict[Connection, int],
    shares: list[list[int]],
    total: int,
    progress: Progress | None,
) -> list[TenantReport]:
    """Every child's reports, put back in input order, with progress."""
    results: list[TenantReport | None] = [None] * total
    done = [0] * len(shares)
    while children:
        for conn in multiprocessing.connection.wait(list(children)):
            assert isinstance(conn, Connection)
            n = children[conn]
            message = _receive(conn, n)
            if message[0] == "progress":
                done[n] = message[1]
            else:
                for index, report in zip(shares[n], message[1], strict=True):
                    results[index] = report
                if isinstance(ctx.lookup, dnsclient.DnsClient):
                    ctx.lookup.queries += message[2]
                done[n] = len(shares[n])
                del children[conn]
                conn.close()
            if progress is not None:
                progress(sum(done), total)
    return [r for r in results if r is not None]


def _receive(conn: Connection, n: int) -> tuple[Any, ...]:
    """Child ``n``'s next message; its failure raised here."""
    try:
        message: tuple[Any, ...] = conn.recv()
    except EOFError:
        raise RuntimeError(f"check process {n} ended without its reports") from None
    if message[0] == "error":
        raise RuntimeError(f"check process {n} failed:\n{message[1]}")
    return message
