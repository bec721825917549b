"""A real HTTPS server on 127.0.0.1 that answers policy fetches per host.

Python's ``ssl`` + ``http.server`` in a thread: each SNI name gets the
certificate given for it (or the default one, to test a name mismatch), and
each Host gets the ``Reply`` given for it. Certificates come from
``tls.make_ca`` (the ``openssl`` CLI). Used by the ``check --https`` tests.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import contextlib
import http.server
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["PolicyHttpsServer", "Reply"]


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain"
    headers: Mapping[str, str] = field(default_factory=dict)


class PolicyHttpsServer:
    """``with PolicyHttpsServer(certs, default_cert, replies) as server:``.

    ``certs`` maps an SNI name to (chain PEM, key PEM); ``default_cert`` is
    presented for any other name. ``replies`` maps a Host header to a Reply;
    other hosts get 404. ``server.seen`` lists the (SNI, Host) pairs served.
    """

    def __init__(
        self,
        certs: Mapping[str, tuple[Path, Path]],
        default_cert: tuple[Path, Path],
        replies: Mapping[str, Reply],
    ) -> None:
        self.replies = dict(replies)
        self.seen: list[tuple[str | None, str | None]] = []
        self._contexts = {name: self._context(*pair) for name, pair in certs.items()}
        context = self._context(*default_cert)
        context.sni_callback = self._pick
        self._sni: dict[int, str | None] = {}
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                host = self.headers.get("Host")
                sni = outer._sni.get(id(self.connection))
                outer.seen.append((sni, host))
                reply = outer.replies.get(host or "", Reply(404, b"not found\n"))
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(reply.body)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                # The client may stop reading at its size cap.
                with contextlib.suppress(OSError):
                    self.wfile.write(reply.body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port: int = self.httpd.server_address[1]
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @staticmethod
    def _context(chain: Path, key: Path) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(chain, key)
        return context

    def _pick(self, sock: ssl.SSLObject | ssl.SSLSocket, name: str | None, _: object) -> None:
        self._sni[id(sock)] = name
        if name in self._contexts:
            sock.context = self._contexts[name]

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)
