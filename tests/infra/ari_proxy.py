"""A loopback ACME proxy that gives Pebble ACME Renewal Information (RFC 9773).

Pebble 2.4 has no ARI: its directory lists no ``renewalInfo``. This proxy sits
in front of it on another loopback port, serves Pebble's own HTTPS certificate
(it names 127.0.0.1, and the broker already trusts its CA), and:

- adds ``renewalInfo`` to the directory (pointing at the proxy; unless
  ``offer_ari`` is False, for the control case) and rewrites
  Pebble's address in every answer to its own;
- answers ``GET <renewalInfo>/<certID>`` with the window the test chooses
  (``window``), with a ``Retry-After``;
- records the ``replaces`` field of every newOrder it forwards;
- passes every other request to Pebble unchanged, keeping the ``Host``
  header: Pebble checks a JWS's ``url`` against ``https://<Host><path>``, so
  signed requests to the proxy's URLs verify as they are.

It runs in threads of the test process (``ThreadingHTTPServer`` with a real
backlog); ``stop()`` shuts it down.
"""

from __future__ import annotations

import base64
import json
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import urlparse

import requests

from tests.infra.pebble import Pebble

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}
RENEWAL_PATH = "/renewal-info"


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime
    retry_after: timedelta = timedelta(hours=6)


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # http.server's default of 5 stalls concurrent clients
    daemon_threads = True


class AriProxy:
    """``directory_url`` is what the broker is given instead of Pebble's."""

    def __init__(
        self, pebble: Pebble, window: Callable[[str], Window | None], *, offer_ari: bool = True
    ) -> None:
        self.pebble = pebble
        self.window = window
        self.offer_ari = offer_ari  # False: Pebble's directory as it is (still recording)
        self.replaces: list[str | None] = []  # one per newOrder, None when absent
        self.renewal_requests: list[str] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._session = requests.Session()
        self._lock = threading.Lock()
        self._new_order = "/order-plz"  # Pebble's; read from its directory when served

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def directory_url(self) -> str:
        return f"{self.base}/dir"

    def start(self) -> Self:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # quiet
                return

            def do_HEAD(self) -> None:
                proxy._forward(self, "HEAD")

            def do_GET(self) -> None:
                if self.path.startswith(RENEWAL_PATH + "/"):
                    proxy._renewal_info(self)
                else:
                    proxy._forward(self, "GET")

            def do_POST(self) -> None:
                proxy._forward(self, "POST")

        cert, key = self.pebble.listener_cert_paths
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        server = _Server(("127.0.0.1", 0), Handler)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="ari-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self._session.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- handlers (run in the server's threads) -------------------------------------

    def _renewal_info(self, handler: BaseHTTPRequestHandler) -> None:
        cert_id = handler.path.removeprefix(RENEWAL_PATH + "/")
        with self._lock:
            self.renewal_requests.append(cert_id)
        window = self.window(cert_id)
        if window is None:
            self._reply(handler, 404, {"Content-Type": "application/problem+json"}, b"{}")
            return
        body = json.dumps(
            {
                "suggestedWindow": {
                    "start": window.start.astimezone(UTC).isoformat().replace("+00:00", "Z"),
                    "end": window.end.astimezone(UTC).isoformat().replace("+00:00", "Z"),
                }
            }
        ).encode()
        headers = {
            "Content-Type": "application/json",
            "Retry-After": str(int(window.retry_after.total_seconds())),
        }
        self._reply(handler, 200, headers, body)

    def _forward(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        if method == "POST" and handler.path == self._new_order:
            self._record_replaces(body)
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers["Host"] = f"127.0.0.1:{self.port}"  # Pebble builds and checks URLs from it
        upstream = self._session.request(
            method,
            f"https://127.0.0.1:{self.pebble.port}{handler.path}",
            headers=headers,
            data=body,
            verify=self.pebble.ca_bundle_path,
            allow_redirects=False,
            timeout=30,
        )
        content = self._rewrite(upstream.content)
        if handler.path == "/dir" and method == "GET":
            directory = json.loads(content)
            self._new_order = urlparse(directory["newOrder"]).path
            if self.offer_ari:
                directory["renewalInfo"] = f"{self.base}{RENEWAL_PATH}"
            content = json.dumps(directory).encode()
        out = {
            k: self._rewrite(v.encode()).decode()
            for k, v in upstream.headers.items()
            if k.lower() not in _HOP_BY_HOP
        }
        self._reply(handler, upstream.status_code, out, content)

    def _record_replaces(self, body: bytes) -> None:
        jws = json.loads(body)
        payload = jws.get("payload", "")
        decoded = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        with self._lock:
            self.replaces.append(decoded.get("replaces"))

    def _rewrite(self, data: bytes) -> bytes:
        return data.replace(
            f"127.0.0.1:{self.pebble.port}".encode(), f"127.0.0.1:{self.port}".encode()
        )

    @staticmethod
    def _reply(
        handler: BaseHTTPRequestHandler, status: int, headers: dict[str, str], body: bytes
    ) -> None:
        handler.send_response(status)
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(body)
