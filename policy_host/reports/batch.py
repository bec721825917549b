"""``reports ingest PATH...``: many files and Maildir messages at once.

Reading, decompressing, parsing and DKIM-checking each input (``prepare``)
needs no store, so forked worker processes do it, one per core
(``workers``), and make each report into the rows the store inserts; the
parent stores what they made in order, in transactions of ``BATCH`` inputs, and
moves committed Maildir messages from new/ to cur/. With one core, or few
inputs, everything runs in the parent.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from policy_host.read.tlsrpt import TlsrptSettings
from policy_host.reports import workers
from policy_host.reports.decode import CHUNK, TooLarge, read_capped
from policy_host.reports.dkimcheck import resolver_lookup
from policy_host.reports.ingest import Ingester, Outcome, Prepared, prepare_body, prepare_message
from policy_host.reports.model import MAIL, Envelope
from policy_host.reports.parse import Memo
from policy_host.reports.schema import HEAD_BYTES, REFUSED
from policy_host.reports.sources import file_input, is_maildir
from policy_host.reports.store import Arrival, Received

# Inputs per transaction: few fsyncs, little to redo after a crash.
BATCH = 500
# Below this many inputs forking workers costs more than it saves.
POOL_FROM = 200
# Inputs per message between a worker and the parent.
INPUTS_PER_MESSAGE = 64


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


@dataclass(frozen=True)
class Done:
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
                with path.open("rb") as handle:
                    data = read_capped(handle, job.cap, name)
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


# A ``Done`` as a worker sends it: nested tuples of str, int, float and
# bytes, the report already as the rows the store inserts, which pickle and
# unpickle several times faster than the frozen dataclasses they stand for,
# and leave the storing process nothing to build (docs/performance.md).
Packed = tuple[Any, ...]


def prepare_packed(job: Job, source: Source | Done) -> Packed:
    """``prepare`` in a worker process, its result packed for the parent."""
    done = prepare(job, source)
    new = None if done.maildir_new is None else str(done.maildir_new)
    p = done.prepared
    if p is None:
        return (done.name, done.reason, new, None)
    e = p.item.envelope
    envelope = (e.channel, e.origin, e.verified, e.auth, e.domain, e.submitter)
    item = (envelope, p.item.body, p.item.received, p.item.size, p.item.sha256)
    return (done.name, done.reason, new, (item, p.rows, p.outcome, p.reason))


def unpack(packed: Packed) -> Done:
    """The ``Done`` a worker packed, whole."""
    name, reason, new, prepared = packed
    maildir_new = None if new is None else Path(new)
    if prepared is None:
        return Done(name, None, reason, maildir_new)
    (envelope, body, received, size, sha256), rows, outcome, why = prepared
    item = Received(Envelope(*envelope), body, received, size, sha256)
    return Done(name, Prepared(item, rows, outcome, why), reason, maildir_new)


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
    """Ingest everything under ``paths``; ``report`` hears of every input
    that was not stored (or a duplicate). Returns counts by outcome."""
    listed = list(sources(paths))
    chunks = None
    packed: Iterator[Packed]
    try:
        if jobs > 1 and len(listed) >= POOL_FROM:
            # Forked workers: they need nothing but ``job`` and ``listed``;
            # the store stays here.
            work = functools.partial(prepare_packed, job)
            chunks = workers.in_order(listed, work, jobs, INPUTS_PER_MESSAGE)
            packed = itertools.chain.from_iterable(chunks)
        else:
            packed = (prepare_packed(job, source) for source in listed)
        return store_packed(ingester, packed, report)
    finally:
        if chunks is not None:
            chunks.close()


def store_packed(
    ingester: Ingester, packed: Iterator[Packed], report: Callable[[str, Outcome], None]
) -> Counter[str]:
    """Store inputs as ``prepare_packed`` made them, in order, ``BATCH``
    per transaction; Maildir messages stored move to cur/."""
    counts: Counter[str] = Counter()
    store = ingester.store
    # A day's reports make indexes larger than SQLite's default 2 MiB cache.
    store.conn.execute("PRAGMA cache_size=-65536")
    batch = list(itertools.islice(packed, BATCH))
    while batch:
        after = list(itertools.islice(packed, BATCH))
        moves = [Path(p[2]) for p in batch if p[2] is not None and p[3] is not None]
        # Only the last transaction, and one after which Maildir messages
        # leave new/, must be on disk when it commits: its sync takes
        # every earlier commit of the run with it (``Store.transaction``).
        with store.transaction(durable=not after or bool(moves)) as conn:
            outcomes = _commit(ingester, conn, batch)
        for (name, *_), outcome in zip(batch, outcomes, strict=True):
            counts[outcome.outcome] += 1
            report(name, outcome)
        for message in moves:
            mark_seen(message)
        batch = after
    return counts


def _commit(ingester: Ingester, conn: sqlite3.Connection, batch: list[Packed]) -> list[Outcome]:
    """Store a batch of packed inputs in ``conn``'s transaction, asking once
    which of its reports are stored already."""
    keys = {(p[1].organization, p[1].report_id) for _, _, _, p in batch if p and p[1]}
    known = ingester.store.known(conn, keys)
    commit = ingester.commit_values
    outcomes = []
    for _, reason, _, prepared in batch:
        if prepared is None:
            outcomes.append(Outcome("unreadable", reason))
            continue
        (envelope, *arrival), rows, outcome, why = prepared
        outcomes.append(commit(conn, envelope, Arrival(*arrival), rows, outcome, why, known))
    return outcomes
