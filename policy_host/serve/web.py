"""The one view: ``/.well-known/mta-sts.txt`` answered by the Host header.

A request normalises its Host and looks it up in the served-policy
database (``table.PolicyTable``: one point query, nothing held in the
worker).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from policy_host.model import POLICY_HOST_PREFIX
from policy_host.read.config import ProviderConfig, config_path, load_config
from policy_host.serve.snapshot import snapshot_id
from policy_host.serve.table import FixedPolicies, Policies
from policy_host.serve.table import PolicyTable as PolicyTable
from policy_host.serve.workerinfo import SNAPSHOT_PATH as SNAPSHOT_PATH
from policy_host.serve.workerinfo import WATCH_INTERVAL as WATCH_INTERVAL

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

log = logging.getLogger(__name__)

POLICY_PATH = "/.well-known/mta-sts.txt"
# A DNS name is at most 253 characters; with a port and a final dot the
# longest Host we could serve is shorter than this.
MAX_HOST_LENGTH = 270


def normalise_host(raw: str) -> str | None:
    """``Host`` header -> lookup key: lower case, no port, no final dot.

    Returns ``None`` for anything that cannot be one of our names; the caller
    answers 404 whatever the reason, so a miss tells nothing about tenants.
    """
    if not raw or len(raw) > MAX_HOST_LENGTH or raw.startswith("["):
        return None
    host, sep, port = raw.rpartition(":")
    if sep:
        if not port.isdigit() or len(port) > 5:
            return None
    else:
        host = raw
    if host.endswith("."):
        host = host[:-1]
    host = host.lower()
    if not host.isascii() or not host.startswith(POLICY_HOST_PREFIX):
        return None
    return host


def request_host(environ: Mapping[str, object]) -> str:
    """The host a request is for, as nginx takes it.

    RFC 9112 section 3.2.2: with an absolute-form target
    (``GET http://host/path``) the target's authority is the host and the
    Host header is ignored. gunicorn leaves that to the app (``RAW_URI``
    is the target as sent).
    """
    target = environ.get("RAW_URI") or environ.get("REQUEST_URI") or ""
    if isinstance(target, str):
        scheme, sep, rest = target.partition("://")
        if sep and scheme.lower() in ("http", "https"):
            return rest.partition("/")[0].partition("?")[0]
    host = environ.get("HTTP_HOST", "")
    return host if isinstance(host, str) else ""


# What the view's responses carry (werkzeug's defaults for mimetype
# text/plain), so the fast path sends exactly the same bytes.
_TEXT_PLAIN = "text/plain; charset=utf-8"
_NOT_FOUND = b"not found\n"


class PolicyFastPath:
    """The policy view as a bare WSGI callable in front of Flask.

    The one request that matters, ``GET``/``HEAD`` of the policy path,
    costs about a third less without Flask's request context, routing and
    response objects (docs/performance.md). It gets the same status,
    headers and body as the view below; every other request (other paths and
    methods, errors) goes to Flask, which stays the definition of what is
    served (``tests/test_web_fastpath.py`` compares the two).
    """

    def __init__(self, table: Policies, app: WSGIApplication) -> None:
        self.table = table
        self.app = app

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD")
        if (
            environ.get("PATH_INFO") != POLICY_PATH
            or method not in ("GET", "HEAD")
            or environ.get("SCRIPT_NAME")
        ):
            return self.app(environ, start_response)
        host = normalise_host(request_host(environ))
        body = self.table.get(host) if host else None
        status = "200 OK" if body is not None else "404 NOT FOUND"
        payload = body if body is not None else _NOT_FOUND
        start_response(
            status, [("Content-Type", _TEXT_PLAIN), ("Content-Length", str(len(payload)))]
        )
        return [] if method == "HEAD" else [payload]


def _plain(status: int, text: str) -> Response:
    return Response(text + "\n", status=status, mimetype="text/plain")


def create_app(
    policies: Mapping[str, bytes] | None = None,
    *,
    snapshot_path: Path | None = None,
    watch_interval: float | None = None,
    fast_path: bool = True,
    reports_config: ProviderConfig | None = None,
    workers: int = 1,
) -> Flask:
    """The WSGI app.

    ``policies`` maps ``mta-sts.<domain>`` to bytes (tests pass it directly).
    Otherwise they are read from the database beside the snapshot at
    ``snapshot_path`` (``table.PolicyTable``), or, when none is given, the
    provider config's (``$POLICY_HOST_CONFIG`` or the default), compiling a
    snapshot first if none exists yet. With ``watch_interval``
    (``WATCH_INTERVAL`` when served) a watcher thread brings the database
    up to the snapshot and its journal when they change; it does so at
    once, so making the app never waits for it (a rebuild of a large
    database takes seconds, and gunicorn stops a worker that does not
    answer within its timeout). Without it (tests) the table catches up
    once, here. ``fast_path`` answers the policy requests before Flask's
    machinery (see ``PolicyFastPath``). With ``reports_config`` (or a
    config read here) whose ``tlsrpt.rua`` has https: URIs, their paths
    take TLS reports by POST (``reports.receive``).
    """
    app = Flask(__name__)
    table: Policies
    if policies is None:
        if snapshot_path is None:
            config = reports_config = load_config(config_path(None))
            snapshot_path = config.snapshot_path
            if snapshot_id(snapshot_path) is None:  # none yet
                from policy_host.serve.compiler import compile_snapshot

                compile_snapshot(config)
        if snapshot_id(snapshot_path) is None:
            raise FileNotFoundError(f"{snapshot_path}: no served-policy snapshot")
        table = watched = PolicyTable(snapshot_path)
        if watch_interval:
            watched.watch(watch_interval)
        else:
            watched.refresh()
    else:
        table = FixedPolicies(policies)
    app.extensions["policy_host"] = table

    # Only GET and HEAD (RFC 8461 section 3.3); no automatic OPTIONS. No
    # merged slashes: werkzeug would answer '//' in the path with a redirect.
    @app.route(
        POLICY_PATH, methods=["GET", "HEAD"], provide_automatic_options=False, merge_slashes=False
    )
    def policy() -> Response:
        host = normalise_host(request_host(request.environ))
        body = table.get(host) if host else None
        if body is None:
            return _plain(404, "not found")
        # RFC 8461 section 3.3: 200 with media type text/plain; never a
        # redirect, never varied by anything but the host.
        return Response(body, status=200, mimetype="text/plain")

    @app.route(SNAPSHOT_PATH, methods=["GET"], provide_automatic_options=False)
    def snapshot() -> Response:
        # Private: nginx passes the request's Host and adds X-Forwarded-For.
        forwarded = "X-Forwarded-For" in request.headers or "X-Real-IP" in request.headers
        if forwarded or normalise_host(request_host(request.environ)) is not None:
            return _plain(404, "not found")
        return _plain(200, worker_state(table, workers))

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        response = _plain(exc.code or 500, (exc.name or "error").lower())
        if exc.code == 405:
            response.headers["Allow"] = "GET, HEAD"
        return response

    if reports_config is not None and reports_config.tlsrpt.https_paths:
        _add_report_route(app, reports_config)

    if fast_path:
        app.wsgi_app = PolicyFastPath(table, app.wsgi_app)  # type: ignore[method-assign]
    return app


def worker_state(table: Policies, workers: int) -> str:
    """What SNAPSHOT_PATH answers (``publish.workers.parse_state`` reads it)."""
    lines = [
        f"snapshot {table.snapshot_id}",
        f"worker {os.getpid()}",
        f"workers {workers}",
    ]
    if table.load_error is not None:
        lines.append(f"error {' '.join(table.load_error.split())}")
    return "\n".join(lines)


def _add_report_route(app: Flask, config: ProviderConfig) -> None:
    """POST of TLS reports (RFC 8460 section 3) to the configured paths.
    Only POST reaches this view; the policy fast path never sees it."""
    from policy_host.reports.receive import Receiver

    receiver = Receiver(config)

    def tlsrpt() -> Response:
        # Only at the host of the https: rua: every tenant's server block
        # proxies to this app as well.
        if not receiver.accepts(request_host(request.environ), request.path):
            return _plain(404, "not found")
        # nginx sets X-Real-IP to the client address wherever it proxies to
        # the app (nginx/*.conf); gunicorn listens where only nginx can
        # reach it.
        client = request.headers.get("X-Real-IP") or request.remote_addr or ""
        answer = receiver.receive(request.stream, request.content_length, request.mimetype, client)
        return _plain(answer.status, answer.text)

    for path in receiver.paths:
        app.add_url_rule(path, "tlsrpt", tlsrpt, methods=["POST"], provide_automatic_options=False)
