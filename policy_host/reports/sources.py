"""The edges of ingesting: hosted domains, files, Maildir folders, stdin.

Everything here reads from disk or a stream and hands bytes to ``Ingester``;
the decisions live there.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from pathlib import Path
from typing import IO, NamedTuple

from policy_host import state
from policy_host.model import InvalidValue, hostname
from policy_host.read.config import ProviderConfig
from policy_host.read.scan import SUFFIX
from policy_host.reports.decode import CHUNK, TooLarge, read_capped, read_file
from policy_host.reports.dkimcheck import resolver_lookup
from policy_host.reports.ingest import Ingester, Outcome
from policy_host.reports.mail import parse_filename
from policy_host.reports.model import FILE, MAIL, Envelope
from policy_host.reports.policies import ServedHistory
from policy_host.reports.schema import REFUSED
from policy_host.reports.store import Received, Store

REPORT_ENDINGS = (".json", ".json.gz", ".gz", ".json.gzip")
MESSAGE_ENDINGS = (".eml", ".msg")


def hosted_domains(config: ProviderConfig) -> frozenset[str]:
    """Domains we host: a tenant file, or an id still published (a tenant
    being withdrawn is still reported on)."""
    names = set(state.published_ids(config))
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(config.tenants_dir):
            if name.endswith(SUFFIX) and not name.startswith("."):
                try:
                    names.add(hostname(name[: -len(SUFFIX)]).ascii)
                except InvalidValue:
                    continue
    return frozenset(names)


def make_ingester(config: ProviderConfig, store: Store) -> Ingester:
    hosted = hosted_domains(config)
    return Ingester(
        store=store,
        settings=config.tlsrpt,
        hosted=hosted.__contains__,
        history=ServedHistory.load(config.state_db),
        lookup=resolver_lookup(config.dns.resolver, config.dns.timeout),
        clock=time.time,
    )


class Input(NamedTuple):
    """One thing to ingest: a report body or a whole message."""

    name: str
    data: bytes
    is_message: bool
    envelope: Envelope


def message_cap(config: ProviderConfig) -> int:
    # base64 makes a report part a third larger, plus headers and the
    # human-readable part.
    return config.tlsrpt.max_report_bytes * 2


def read_stdin(stream: IO[bytes], config: ProviderConfig) -> Input:
    """The message an MTA pipes in (no bytes when it is over the cap)."""
    try:
        data = read_capped(stream, message_cap(config), "message")
    except TooLarge:
        # Read to the end, a piece at a time: an MTA whose pipe is closed
        # early takes it as a failed delivery and retries forever.
        while stream.read(CHUNK):
            pass
        data = b""
    return Input("-", data, True, Envelope(MAIL, origin="pipe"))


def file_input(path: str | os.PathLike[str], cap: int) -> Input:
    """A report file or a message file (at most ``cap`` bytes). Plain
    string operations on the name: this runs for every file of a day's
    batch (docs/performance.md)."""
    name = os.fspath(path)
    base = os.path.basename(name)
    lower = base.lower()
    data = read_file(name, cap)
    if lower.endswith(MESSAGE_ENDINGS):
        return Input(name, data, True, Envelope(FILE, origin=name))
    parsed = parse_filename(base)
    if parsed is not None:
        # RFC 8460 section 5.1 file names; the body wins where they differ.
        envelope = Envelope(FILE, origin=name, domain=parsed.domain, submitter=parsed.submitter)
    else:
        envelope = Envelope(FILE, origin=name)
    is_report = lower.endswith(REPORT_ENDINGS) or data[:1] in (b"{", b"\x1f")
    return Input(name, data, not is_report, envelope)


def is_maildir(path: Path) -> bool:
    return (path / "new").is_dir() and (path / "cur").is_dir()


def ingest_one(ingester: Ingester, conn: sqlite3.Connection, item: Input) -> Outcome:
    if item.is_message:
        if not item.data:
            received = Received(item.envelope, b"", ingester.clock())
            ingester.store.add_raw(conn, received, REFUSED, "message too large or empty")
            return Outcome(REFUSED, "message too large or empty")
        return ingester.message(conn, item.data, item.envelope)
    name = item.name.lower()
    return ingester.report_body(
        conn, item.data, item.envelope, labelled_gzip=name.endswith((".gz", ".gzip"))
    )
