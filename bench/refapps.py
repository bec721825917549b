"""Reference apps for bench/serve_bench.py, run under the same gunicorn as
policy-host (2 gthread workers x 4 threads):

- ``flask_app``: the minimal Flask app, a dict lookup by Host;
- ``wsgi_app``: the same without Flask, a bare WSGI callable.

Both read ``mta-sts.<domain>`` -> body from the snapshot named by
``$BENCH_SNAPSHOT`` (what policy-host's compile wrote).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

from flask import Flask, Response, request

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment


def _policies() -> dict[str, bytes]:
    path = os.environ.get("BENCH_SNAPSHOT")
    if not path:
        return {}
    with open(path, "rb") as handle:
        raw = json.loads(handle.read())
    return {"mta-sts." + d: item["body"].encode("ascii") for d, item in raw["tenants"].items()}


POLICIES = _policies()

flask_app = Flask("minimal")


@flask_app.route("/.well-known/mta-sts.txt")
def policy() -> Response:
    body = POLICIES.get(request.environ.get("HTTP_HOST", "").lower())
    if body is None:
        return Response("not found\n", status=404, mimetype="text/plain")
    return Response(body, mimetype="text/plain")


def wsgi_app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    body = POLICIES.get(environ.get("HTTP_HOST", "").lower())
    if body is None:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
