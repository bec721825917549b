"""``reports ingest PATH...``: many files and Maildir messages at once.

Inputs go in chunks of ``BATCH``. Reading, decompressing, parsing and
DKIM-checking a chunk's inputs (``prepare_chunk``) needs no store, so forked
worker processes, one per core, do it at once; each then stores its chunk
in one transaction with a connection of its own (``store_chunk``), in turn
and in chunk order (``workers.in_turn``), so the store ends as one process
going through the inputs in order would leave it. Committed Maildir
messages move from new/ to cur/. With one core, or few inputs, everything
runs in one process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import os
import time
from collections import Counter
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from policy_host.read.tlsrpt import TlsrptSettings
from policy_host.reports import workers
from policy_host.reports.decode import CHUNK, TooLarge, read_file
from policy_host.reports.dkimcheck import resolver_lookup
from policy_host.reports.ingest import Ingester, Outcome, Prepared, prepare_body, prepare_message
from policy_host.reports.model import MAIL, Envelope
from policy_host.reports.parse import Memo
from policy_host.reports.schema import HEAD_BYTES, REFUSED, STORED
from policy_host.reports.sources import file_input, is_maildir
from policy_host.reports.store import Received, Store

# Inputs per transaction: few fsyncs, little to redo after a crash.
BATCH = 500
# SQLite's page cache while a batch is stored.
CACHE_KIB = 65536
# Below this many inputs forking workers costs more than it saves.
POOL_FROM = 200


class Source(NamedTuple):
    """One input to read. Plain strings: a worker gets tens of thousands
    of them, and ``Path`` objects cost more to make and send than reading
    a small report (docs/performance.md)."""

    path: str
    # The Maildir folder when ``path`` is a message in its new/.
    maildir: str | None = None


@dataclass(frozen=True)
class Job:
    """What a worker needs to prepare an input (sent to it once)."""

    settings: TlsrptSettings
    dns_server: tuple[str, int] | None
    dns_timeout: float
    cap: int
    # Each worker's own after the fork: date-times and domains read once.
    memo: Memo = field(default_factory=Memo, compare=False, repr=False)


class Done(NamedTuple):
    name: str
    prepared: Prepared | None
    reason: str = ""  # why ``name`` could not be read
    maildir_new: Path | None = None


def sources(paths: list[Path]) -> Iterator[Source | Done]:
    """Every input under ``paths``, in a stable order; a ``Done`` with a
    reason for a path that cannot be listed."""
    for path in paths:
        try:
            if is_maildir(path):
                new = os.path.join(path, "new", "")
                for name in sorted(os.listdir(new)):
                    if not name.startswith("."):
                        yield Source(new + name, str(path))
            elif path.is_dir():
                # Names sorted and joined as strings: Path objects cost more
                # than reading a small report (docs/performance.md).
                folder = os.path.join(path, "")
                for name in sorted(os.listdir(path)):
                    if not name.startswith("."):
                        yield Source(folder + name)
            else:
                yield Source(str(path))
        except OSError as exc:
            yield Done(str(path), None, f"cannot read: {exc.strerror or exc}")


def prepare(job: Job, source: Source | Done) -> Done:
    """Read and judge one input (in a worker process)."""
    if isinstance(source, Done):
        return source
    name = source.path
    path = None
    try:
        if source.maildir is not None:
            path = Path(name)
            envelope = Envelope(MAIL, origin=f"maildir:{source.maildir}")
            try:
                data = read_file(name, job.cap)
            except (TooLarge, OSError) as exc:
                return _kept_aside(path, envelope, exc)
            is_message = True
        else:
            loaded = file_input(name, job.cap)
            data, envelope, is_message = loaded.data, loaded.envelope, loaded.is_message
    except TooLarge as exc:
        return Done(name, None, str(exc))
    except IsADirectoryError:
        return Done(name, None, "a folder inside a folder of reports (not read)")
    except OSError as exc:
        return Done(name, None, f"cannot read: {exc.strerror or exc}")
    item = Received(envelope, data, time.time(), None, hashlib.sha256(data).hexdigest())
    if not is_message:
        labelled = name.lower().endswith((".gz", ".gzip"))
        prepared = prepare_body(item, job.settings, labelled_gzip=labelled, memo=job.memo)
    elif not data:
        prepared = Prepared(item, outcome=REFUSED, reason="message too large or empty")
    else:
        lookup = resolver_lookup(job.dns_server, job.dns_timeout)
        prepared = prepare_message(item, job.settings, lookup, job.memo)
    return Done(name, prepared, maildir_new=path)


def _kept_aside(message: Path, envelope: Envelope, exc: Exception) -> Done:
    """A Maildir message too large or unreadable: refused, with its size,
    SHA-256 and first bytes when it can be read, so it is stored and moved
    out of new/ like the pipe's (never read again and again)."""
    if isinstance(exc, TooLarge):
        reason = "message too large"
        try:
            head, size, sha256 = _head_and_digest(message)
        except OSError as again:
            reason, head, size, sha256 = f"cannot read: {again.strerror or again}", b"", 0, ""
    else:
        reason = f"cannot read: {getattr(exc, 'strerror', None) or exc}"
        head, size, sha256 = b"", 0, ""
    item = Received(envelope, head, time.time(), size if sha256 else None, sha256)
    prepared = Prepared(item, outcome=REFUSED, reason=reason)
    return Done(str(message), prepared, maildir_new=message)


def _head_and_digest(path: Path) -> tuple[bytes, int, str]:
    """The first ``HEAD_BYTES``, size and SHA-256 of a file, read a piece at
    a time."""
    digest = hashlib.sha256()
    size = 0
    head = b""
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            if len(head) < HEAD_BYTES:
                head += chunk[: HEAD_BYTES - len(head)]
            digest.update(chunk)
            size += len(chunk)
    return head, size, digest.hexdigest()


def mark_seen(message: Path) -> None:
    """Move a committed Maildir message from new/ to cur/ (flag S, seen)."""
    target = message.parent.parent / "cur" / (message.name + ":2,S")
    with contextlib.suppress(FileNotFoundError):
        message.rename(target)


def run(
    ingester: Ingester,
    paths: list[Path],
    job: Job,
    jobs: int,
    report: Callable[[str, Outcome], None],
) -> Counter[str]:
    """Ingest everything under ``paths``; ``report`` hears what became of
    every input not stored as a new report (a copy, refused, unreadable...),
    in order. Returns counts by outcome."""
    listed = list(sources(paths))
    prepare = functools.partial(prepare_chunk, job)
    heard: Iterator[Heard]
    if jobs > 1 and len(listed) >= POOL_FROM:
        # Forked workers, each storing with a connection of its own, in
        # turn (``workers.in_turn``); they need nothing but ``job``,
        # ``listed`` and the store's path.
        path = ingester.store.path

        def finisher() -> Callable[[list[Done], bool], Heard]:
            own = dataclasses.replace(ingester, store=Store(path))
            return functools.partial(store_chunk, own)

        heard = workers.in_turn(listed, prepare, finisher, jobs, BATCH)
    else:
        heard = (
            store_chunk(ingester, prepare(listed[i : i + BATCH]), i + BATCH >= len(listed))
            for i in range(0, len(listed), BATCH)
        )
    counts: Counter[str] = Counter()
    try:
        for stored, others in heard:
            counts[STORED] += stored
            for name, outcome in others:
                counts[outcome.outcome] += 1
                report(name, outcome)
    finally:
        if isinstance(heard, Generator):
            heard.close()
    return counts


# What became of a chunk's inputs, as a worker sends it back: how many
# were stored as new reports, and the name and ``Outcome`` of each other
# one (a day's batch is mostly new reports: sending those only as a count
# leaves the parent, which shares the cores with the workers, idle).
Heard = tuple[int, list[tuple[str, Outcome]]]


def prepare_chunk(job: Job, chunk: Sequence[Source | Done]) -> list[Done]:
    """``prepare`` of each input of a chunk (in a worker process)."""
    return [prepare(job, source) for source in chunk]


def store_chunk(ingester: Ingester, chunk: list[Done], last: bool) -> Heard:
    """Store a chunk of prepared inputs in one transaction, asking once
    which of its reports are stored already; Maildir messages stored move
    to cur/. ``last``: the run's final chunk."""
    store = ingester.store
    # A day's reports make indexes larger than SQLite's default 2 MiB cache.
    store.conn.execute(f"PRAGMA cache_size={-CACHE_KIB}")
    moves = [d.maildir_new for d in chunk if d.maildir_new is not None and d.prepared]
    # Only the last transaction, and one after which Maildir messages
    # leave new/, must be on disk when it commits: its sync takes every
    # earlier commit of the run with it (``Store.transaction``).
    durable = last or bool(moves)
    changes = store.conn.total_changes
    with store.transaction(durable=durable) as conn:
        keys = {
            (d.prepared.rows.organization, d.prepared.rows.report_id)
            for d in chunk
            if d.prepared is not None and d.prepared.rows is not None
        }
        known = store.known(conn, keys)
        commit = ingester.commit
        stored = 0
        others = []
        for done in chunk:
            if done.prepared is None:
                others.append((done.name, Outcome("unreadable", done.reason)))
                continue
            outcome = commit(conn, done.prepared, known)
            if outcome.outcome == STORED:
                stored += 1
            else:
                others.append((done.name, outcome))
    if durable and store.conn.total_changes == changes:
        # Nothing written (every input unreadable): SQLite syncs nothing,
        # and earlier commits of the run may still be only in memory.
        store.sync()
    for message in moves:
        mark_seen(message)
    return stored, others
