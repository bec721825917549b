"""The HTTPS report endpoint (RFC 8460 section 3): one POST in, one answer out.

The Flask route in ``serve.web`` hands the request body stream here. A 2xx
answer is sent only after the raw report is committed (``synchronous=FULL``):
a sender that gets 2xx will not retry, so nothing may be lost after it. The
endpoint is public and unauthenticated by design; every report records the
client address it came from, and HTTPS reports are never ``verified``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import IO

from policy_host.errors import PolicyHostError
from policy_host.read.config import ProviderConfig
from policy_host.reports.decode import TooLarge, read_capped
from policy_host.reports.dkimcheck import resolver_lookup
from policy_host.reports.ingest import Ingester
from policy_host.reports.model import HTTPS, Envelope
from policy_host.reports.policies import ServedHistory
from policy_host.reports.schema import DUPLICATE, FOREIGN, REFUSED, STORED
from policy_host.reports.sources import hosted_domains
from policy_host.reports.store import Store

log = logging.getLogger(__name__)

# RFC 8460 section 5.3's media types; ``application/json`` and ``gzip`` and
# ``octet-stream`` are what some senders send instead. The body decides.
MEDIA_TYPES = {
    "application/tlsrpt+gzip": True,
    "application/tlsrpt+json": False,
    "application/gzip": True,
    "application/json": False,
    "application/octet-stream": True,
}
# How long the hosted domains and the served history are trusted before
# they are read again (both change only when staff run apply or reload).
REFRESH_SECONDS = 60.0
# How soon reading them is tried again after it failed.
RETRY_SECONDS = 5.0


def endpoint_key(host: str, path: str) -> tuple[str, str]:
    """A Host header (or a URI's authority) and a path as compared: host in
    lower case without port or final dot."""
    name = host.lower()
    # An IPv6 literal keeps its colons; otherwise a colon starts the port.
    name = name.partition("]")[0] + "]" if name.startswith("[") else name.partition(":")[0]
    return name.rstrip("."), path


def endpoints(rua: tuple[str, ...]) -> frozenset[tuple[str, str]]:
    """(host, path) of every https: destination in ``tlsrpt.rua``."""
    found = set()
    for uri in rua:
        parts = urllib.parse.urlsplit(uri)
        if parts.scheme.lower() == "https":
            found.add(endpoint_key(parts.netloc.rpartition("@")[2], parts.path or "/"))
    return frozenset(found)


# The answer to every report kept (stored, a copy, or for no hosted domain).
ACCEPTED = "accepted"


@dataclass(frozen=True)
class Answer:
    status: int
    text: str


class Receiver:
    """What a worker needs to take reports: per-thread store connections
    (opened on first use, after gunicorn forked the worker), and the hosted
    domains and served history, read again every ``REFRESH_SECONDS``."""

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self.paths = config.tlsrpt.https_paths
        # Reports are taken only at the report name's URL: every tenant's
        # server block reaches the app too, and must not take them.
        self.endpoints = endpoints(config.tlsrpt.rua)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._loaded_at = float("-inf")
        self._hosted: frozenset[str] = frozenset()
        self._history = ServedHistory(())
        self._lookup = resolver_lookup(config.dns.resolver, config.dns.timeout)

    def _context(self) -> tuple[frozenset[str], ServedHistory]:
        """The hosted domains and served history; what was read last while
        they cannot be read again (tried again after ``RETRY_SECONDS``), and
        ``PolicyHostError``/``OSError`` when they were never read."""
        with self._lock:
            now = time.monotonic()
            if now - self._loaded_at > REFRESH_SECONDS:
                try:
                    hosted = hosted_domains(self.config)
                    history = ServedHistory.load(self.config.state_db)
                except (PolicyHostError, OSError) as exc:
                    if self._loaded_at == float("-inf"):
                        raise
                    log.warning("hosted domains not read again, using the last: %s", exc)
                    self._loaded_at = now - REFRESH_SECONDS + RETRY_SECONDS
                else:
                    self._hosted, self._history, self._loaded_at = hosted, history, now
            return self._hosted, self._history

    def _store(self) -> Store:
        store: Store | None = getattr(self._local, "store", None)
        if store is None or getattr(self._local, "pid", None) != os.getpid():
            store = Store(self.config.reports_db)
            self._local.store, self._local.pid = store, os.getpid()
        return store

    def _drop_store(self) -> None:
        """Close this thread's store after a failure; the next request opens
        it again. A store inherited from another process (before gunicorn
        forked) is left alone: closing it here would not be ours to do."""
        store: Store | None = getattr(self._local, "store", None)
        self._local.store = None
        if store is not None and getattr(self._local, "pid", None) == os.getpid():
            store.close()

    def accepts(self, host: str, path: str) -> bool:
        """Is this request for one of our https: report destinations?"""
        return endpoint_key(host, path) in self.endpoints

    def receive(
        self, stream: IO[bytes], length: int | None, media_type: str, client: str
    ) -> Answer:
        cap = self.config.tlsrpt.max_report_bytes
        if media_type not in MEDIA_TYPES:
            return Answer(415, "expected application/tlsrpt+gzip or application/tlsrpt+json")
        if length is not None and length > cap:
            return Answer(413, f"report larger than {cap} bytes")
        try:
            body = read_capped(stream, cap, "report")
        except TooLarge as exc:
            return Answer(413, str(exc))
        if not body:
            return Answer(400, "empty body")
        try:
            hosted, history = self._context()
            store = self._store()
            ingester = Ingester(
                store=store,
                settings=self.config.tlsrpt,
                hosted=hosted.__contains__,
                history=history,
                lookup=self._lookup,
                clock=time.time,
            )
            envelope = Envelope(HTTPS, origin=client)
            with store.transaction() as conn:
                outcome = ingester.report_body(
                    conn, body, envelope, labelled_gzip=MEDIA_TYPES[media_type]
                )
        except (PolicyHostError, OSError) as exc:
            # StoreError, or the state and tenants that say what we host:
            # the sender retries (RFC 8460 section 3).
            log.error("report from %s not stored: %s", client, exc)
            self._drop_store()
            return Answer(503, "cannot store the report now; try again later")
        if outcome.outcome in (STORED, DUPLICATE, FOREIGN):
            # One answer for all three: a different one for a report on
            # domains we do not host, or for a copy already stored, would
            # tell anyone which domains are our customers.
            return Answer(200, ACCEPTED)
        assert outcome.outcome == REFUSED
        status = 413 if "larger than" in outcome.reason else 400
        return Answer(status, f"refused: {outcome.reason}")
