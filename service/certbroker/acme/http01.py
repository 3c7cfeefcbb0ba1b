"""The broker's own HTTP-01 responder: a small asyncio HTTP/1.1 server.

Why not ``http.server``: its listen backlog of 5 stalls validation bursts for
a second per connection (see STACK-NOTES). This server listens with a backlog
of 1024, handles each connection in its own task, keeps connections alive
(Let's Encrypt validates from several vantage points, routers may forward
many requests over one connection) and answers only

    GET|HEAD /.well-known/acme-challenge/<token>  ->  200 key authorization

with 404 for everything else. Tokens are reference-counted so two orders that
share a pending authorization do not unpublish each other's answer, and the
``on_change`` hook reports the first add and the last remove so the broker
can publish challenges to routers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

PREFIX = "/.well-known/acme-challenge/"
_MAX_HEADER_BYTES = 16 * 1024
_MAX_BODY_BYTES = 64 * 1024
_HEADER_TIMEOUT = 10.0
_IDLE_TIMEOUT = 30.0

OnChange = Callable[[str, str | None], None]


class Http01Responder:
    """Serves key authorizations for published tokens. No I/O until ``start()``."""

    def __init__(self, *, on_change: OnChange | None = None) -> None:
        self.on_change = on_change
        self._answers: dict[str, str] = {}
        self._refs: dict[str, int] = {}
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self.port = 0

    # -- publication ------------------------------------------------------------

    def add(self, token: str, key_authorization: str) -> None:
        """Publish ``token``; nested adds of the same token need as many removes."""
        self._refs[token] = self._refs.get(token, 0) + 1
        changed = self._answers.get(token) != key_authorization
        self._answers[token] = key_authorization
        if changed and self.on_change is not None:
            self.on_change(token, key_authorization)

    def remove(self, token: str) -> None:
        """Drop one reference; the answer disappears with the last one."""
        refs = self._refs.get(token, 0) - 1
        if refs > 0:
            self._refs[token] = refs
            return
        self._refs.pop(token, None)
        if self._answers.pop(token, None) is not None and self.on_change is not None:
            self.on_change(token, None)

    def get(self, token: str) -> str | None:
        return self._answers.get(token)

    def __len__(self) -> int:
        return len(self._answers)

    # -- server -----------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on ``host:port`` (0 picks a free port); return the bound port."""
        if self._server is not None:
            raise RuntimeError("responder already started")
        self._server = await asyncio.start_server(
            self._on_connect,
            host,
            port,
            backlog=1024,
            reuse_address=True,
            limit=_MAX_HEADER_BYTES,
        )
        sock = self._server.sockets[0]
        self.port = int(sock.getsockname()[1])
        return self.port

    async def stop(self) -> None:
        """Stop listening and close open connections (idle keep-alives included)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._conns):
            task.cancel()
        if self._conns:
            await asyncio.gather(*self._conns, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), timeout=5)

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            await self._serve(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass
        except asyncio.LimitOverrunError:
            await _respond(writer, 431, "Request Header Fields Too Large", b"", close=True)
        finally:
            self._conns.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = True
        while True:
            timeout = _HEADER_TIMEOUT if first else _IDLE_TIMEOUT
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
            first = False
            if len(head) > _MAX_HEADER_BYTES:
                await _respond(writer, 431, "Request Header Fields Too Large", b"", close=True)
                return
            request = _parse_head(head)
            if request is None:
                await _respond(writer, 400, "Bad Request", b"", close=True)
                return
            method, target, version, headers = request
            if not await _discard_body(reader, headers):
                await _respond(writer, 400, "Bad Request", b"", close=True)
                return
            close = _wants_close(version, headers)
            status, phrase, body = self._answer(method, target)
            await _respond(writer, status, phrase, body, close=close, head_only=(method == "HEAD"))
            if close:
                return

    def _answer(self, method: str, target: str) -> tuple[int, str, bytes]:
        if method not in ("GET", "HEAD"):
            return 405, "Method Not Allowed", b""
        path = urlsplit(target).path if "://" in target else target.split("?", 1)[0]
        if path.startswith(PREFIX):
            answer = self._answers.get(path[len(PREFIX) :])
            if answer is not None:
                return 200, "OK", answer.encode("ascii")
        return 404, "Not Found", b""


def _parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]] | None:
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        return None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            return None
        headers[name.strip().lower()] = value.strip()
    return parts[0], parts[1], parts[2], headers


async def _discard_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bool:
    """Read and drop a request body so keep-alive stays in sync; False if unacceptable."""
    if "transfer-encoding" in headers:
        return False
    length_text = headers.get("content-length", "0")
    if not length_text.isdigit():
        return False
    length = int(length_text)
    if length > _MAX_BODY_BYTES:
        return False
    if length:
        await asyncio.wait_for(reader.readexactly(length), _HEADER_TIMEOUT)
    return True


def _wants_close(version: str, headers: dict[str, str]) -> bool:
    connection = headers.get("connection", "").lower()
    if version == "HTTP/1.0":
        return "keep-alive" not in connection
    return "close" in connection


async def _respond(
    writer: asyncio.StreamWriter,
    status: int,
    phrase: str,
    body: bytes,
    *,
    close: bool,
    head_only: bool = False,
) -> None:
    head = (
        f"HTTP/1.1 {status} {phrase}\r\n"
        "Content-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Connection: {'close' if close else 'keep-alive'}\r\n"
        "\r\n"
    ).encode("ascii")
    writer.write(head if head_only else head + body)
    await writer.drain()
