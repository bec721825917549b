"""The one view: ``/.well-known/mta-sts.txt`` answered by the Host header.

Policies are a dict in memory (``mta-sts.<domain>`` -> bytes), filled once
when the app is made; a request only normalises its Host and looks it up.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from .config import config_path, load_config
from .snapshot import compile_snapshot, read_snapshot

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
    if not host.isascii() or not host.startswith("mta-sts."):
        return None
    return host


def _plain(status: int, text: str) -> Response:
    return Response(text + "\n", status=status, mimetype="text/plain")


def create_app(
    policies: Mapping[str, bytes] | None = None,
    *,
    snapshot_path: Path | None = None,
) -> Flask:
    """The WSGI app.

    ``policies`` maps ``mta-sts.<domain>`` to bytes (tests pass it directly).
    Otherwise they come from the snapshot at ``snapshot_path``, or, when none
    is given, from the provider config (``$POLICY_HOST_CONFIG`` or the
    default), compiling a snapshot first if none exists yet.
    """
    app = Flask(__name__)
    if policies is None:
        if snapshot_path is None:
            config = load_config(config_path(None))
            snapshot = read_snapshot(config.snapshot_path) or compile_snapshot(config)[0]
        else:
            found = read_snapshot(snapshot_path)
            if found is None:
                raise FileNotFoundError(f"{snapshot_path}: no served-policy snapshot")
            snapshot = found
        policies = snapshot.policies_by_host()
    table = dict(policies)
    app.extensions["policy_host"] = table
    log.info("serving %d policies", len(table))

    @app.route(POLICY_PATH, methods=["GET", "HEAD"])
    def policy() -> Response:
        host = normalise_host(request.environ.get("HTTP_HOST", ""))
        body = table.get(host) if host else None
        if body is None:
            return _plain(404, "not found")
        # RFC 8461 section 3.3: 200 with media type text/plain; never a
        # redirect, never varied by anything but the host.
        return Response(body, status=200, mimetype="text/plain")

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        response = _plain(exc.code or 500, (exc.name or "error").lower())
        if exc.code == 405:
            response.headers["Allow"] = "GET, HEAD"
        return response

    return app
