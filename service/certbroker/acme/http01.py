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

Several brokers behind one load balancer: a token published by another broker
is not here, so a local miss asks ``lookup`` (``certbroker.acme.shared_challenges``
reads the store, with a small cache). Only a well-formed token (base64url, as
RFC 8555 makes them) is looked up: a scanner's paths never reach the database.

It listens where anyone may connect, so every connection is bounded (see
``ResponderLimits``): a total and a per-peer cap (over-cap connections are
reset at once and counted in one log line per interval), a deadline for each
request head, an idle deadline between keep-alive requests, and size limits on
the request line and headers. Without them, idle connections held file
descriptors the gRPC server needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

PREFIX = "/.well-known/acme-challenge/"
_MAX_BODY_BYTES = 64 * 1024
REPORT_INTERVAL = 60.0  # seconds between two "connections refused" log lines

OnChange = Callable[[str, str | None], None]
#: Where a token not published here is looked up (another broker's); None if unknown.
Lookup = Callable[[str], Awaitable[str | None]]
# RFC 8555 section 8.3: base64url, at least 128 bits of entropy (22 characters); CAs
# use 43. Anything else cannot be a token, so it is never looked up.
TOKEN = re.compile(r"[A-Za-z0-9_-]{22,128}")


@dataclass(frozen=True)
class ResponderLimits:
    """Bounds on what one client can hold; defaults are the broker's settings' defaults.

    A validation is one short request per vantage point, so honest traffic is
    far below every limit; the caps exist for the idle or slow connections of
    a scanner or an attacker.
    """

    max_connections: int = 1024
    max_per_peer: int = 64  # per IPv4 address / IPv6 /64
    header_timeout: float = 10.0  # from the first byte of a request to the end of its head
    idle_timeout: float = 30.0  # between keep-alive requests, and for writing an answer
    max_request_line: int = 8 * 1024
    max_header_bytes: int = 16 * 1024
    max_headers: int = 100


class Http01Responder:
    """Serves key authorizations for published tokens. No I/O until ``start()``."""

    def __init__(
        self,
        *,
        on_change: OnChange | None = None,
        limits: ResponderLimits | None = None,
        lookup: Lookup | None = None,
    ) -> None:
        self.on_change = on_change
        self.lookup = lookup
        self.limits = limits or ResponderLimits()
        self._answers: dict[str, str] = {}
        self._refs: dict[str, int] = {}
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self._per_peer: dict[str, int] = {}
        self._refused = 0
        self._next_report = 0.0
        self.port = 0

    @property
    def open_connections(self) -> int:
        return len(self._conns)

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

    async def publish(self, token: str, key_authorization: str) -> None:
        """``add`` as the issuer calls it (``ChallengeResponder``): answered here at once."""
        self.add(token, key_authorization)

    async def unpublish(self, token: str) -> None:
        self.remove(token)

    async def answer(self, token: str) -> str | None:
        """What a request for ``token`` gets: the local answer, else ``lookup``'s."""
        found = self._answers.get(token)
        if found is None and self.lookup is not None and TOKEN.fullmatch(token):
            found = await self.lookup(token)
        return found

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
            limit=self.limits.max_header_bytes,
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
        peer = _peer_key(writer.get_extra_info("peername"))
        if (
            len(self._conns) >= self.limits.max_connections
            or self._per_peer.get(peer, 0) >= self.limits.max_per_peer
        ):
            writer.transport.abort()  # a reset frees the descriptor now; no answer to write
            self._note_refusal(peer)
            return
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        self._per_peer[peer] = self._per_peer.get(peer, 0) + 1
        try:
            await self._serve(reader, writer)
        except (asyncio.IncompleteReadError, OSError):  # resets and timeouts: a closed peer
            pass
        except asyncio.LimitOverrunError:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.limits.idle_timeout):
                    await _respond(writer, 431, "Request Header Fields Too Large", b"", close=True)
        except Exception:  # one bad connection must not log a traceback per request
            log.debug("HTTP-01 connection from %s failed", peer, exc_info=True)
        finally:
            self._conns.discard(task)
            left = self._per_peer.pop(peer, 1) - 1
            if left:
                self._per_peer[peer] = left
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _note_refusal(self, peer: str) -> None:
        """Count a refused connection; one warning per interval however many there are."""
        self._refused += 1
        now = asyncio.get_running_loop().time()
        if now < self._next_report:
            return
        log.warning(
            "HTTP-01 responder refused %d connection(s) over its caps (%d open, at most %d, "
            "%d per peer); latest from %s",
            self._refused,
            len(self._conns),
            self.limits.max_connections,
            self.limits.max_per_peer,
            peer,
        )
        self._refused = 0
        self._next_report = now + REPORT_INTERVAL

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        limits = self.limits
        start = b""
        while True:
            async with asyncio.timeout(limits.header_timeout):
                head = start + await reader.readuntil(b"\r\n\r\n")
            if len(head) > limits.max_header_bytes or head.count(b"\r\n") > limits.max_headers + 2:
                status: tuple[int, str] | None = (431, "Request Header Fields Too Large")
            elif head.find(b"\r\n") > limits.max_request_line:
                status = (414, "URI Too Long")
            else:
                status = None
            request = None if status else _parse_head(head)
            if request is not None and not await self._discard_body(reader, request[3]):
                request = None
            async with asyncio.timeout(limits.idle_timeout):  # a peer that never reads
                if request is None:
                    code, phrase = status or (400, "Bad Request")
                    await _respond(writer, code, phrase, b"", close=True)
                    return
                method, target, version, headers = request
                close = _wants_close(version, headers)
                code, phrase, body = await self._answer(method, target)
                await _respond(writer, code, phrase, body, close=close, head_only=method == "HEAD")
            if close:
                return
            async with asyncio.timeout(limits.idle_timeout):
                start = await reader.readexactly(1)  # the next request's first byte

    async def _discard_body(self, reader: asyncio.StreamReader, headers: dict[str, str]) -> bool:
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
            async with asyncio.timeout(self.limits.header_timeout):
                await reader.readexactly(length)
        return True

    async def _answer(self, method: str, target: str) -> tuple[int, str, bytes]:
        if method not in ("GET", "HEAD"):
            return 405, "Method Not Allowed", b""
        path = urlsplit(target).path if "://" in target else target.split("?", 1)[0]
        if path.startswith(PREFIX):
            answer = await self.answer(path[len(PREFIX) :])
            if answer is not None:
                return 200, "OK", answer.encode("ascii")
        return 404, "Not Found", b""


def _peer_key(peername: object) -> str:
    """The per-peer cap's key: the IPv4 address, or the /64 of an IPv6 one (one subscriber)."""
    host = peername[0] if isinstance(peername, tuple) and peername else str(peername)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return str(host)
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


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
