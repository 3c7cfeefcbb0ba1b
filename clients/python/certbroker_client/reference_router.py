"""A reference SNI router: the smallest thing that serves the broker's certificates.

A model for router teams, not a production proxy. It shows the three duties
of a router in front of certbroker:

1. **HTTPS**: terminate TLS by SNI from a :class:`~certbroker_client.router.CertificateMap`
   kept current by a :class:`~certbroker_client.router.RouterWatcher`. Unknown
   names get the default certificate if one is configured, else a clean
   ``unrecognized_name`` alert. Behind TLS it either answers a one-line
   page or pipes bytes to one ``--upstream`` address.
2. **HTTP-01**: forward ``/.well-known/acme-challenge/...`` on port 80 to the
   broker's HTTP-01 responder, so the CA's validation reaches the broker
   through the router exactly as in production.
3. **Redirect**: everything else on port 80 goes to HTTPS (308 keeps the method).

Everything is plain ``asyncio`` streams; TLS runs through memory BIOs (see
``_TlsConnection`` for why); HTTP parsing is the bare minimum (request line
and headers, at most 16 KiB, read under a deadline).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from certbroker_client.router import CertificateMap

__all__ = ["ReferenceRouter", "RouterConfig"]

log = logging.getLogger(__name__)

CHALLENGE_PREFIX: Final = "/.well-known/acme-challenge/"
_MAX_HEAD: Final = 16 * 1024
_HEAD_TIMEOUT: Final = 10.0
_UPSTREAM_TIMEOUT: Final = 10.0

HostPort = tuple[str, int]


@dataclass(frozen=True)
class RouterConfig:
    """Where the router listens and where it forwards.

    ``redirect_port`` is the HTTPS port written into redirects (the public
    one, which behind NAT or in tests differs from 443); ``None`` means the
    HTTPS listener's port, and 443 is left out of the URL.
    """

    https_listen: HostPort = ("127.0.0.1", 8443)
    http_listen: HostPort | None = ("127.0.0.1", 8080)
    http01_forward: HostPort | None = ("127.0.0.1", 8402)
    upstream: HostPort | None = None
    default_cert: Path | None = None
    default_key: Path | None = None
    redirect_port: int | None = None


@dataclass(frozen=True)
class _Request:
    method: str
    target: str
    version: str
    headers: dict[str, str]

    @property
    def host(self) -> str:
        """The Host header without its port (``[v6]:port`` kept as ``[v6]``)."""
        host = self.headers.get("host", "").strip()
        if host.startswith("["):
            return host.partition("]")[0] + "]"
        return host.partition(":")[0]

    @property
    def keep_alive(self) -> bool:
        connection = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return connection == "keep-alive"
        return connection != "close"


async def _read_request(reader: asyncio.StreamReader) -> _Request | None:
    """One request head; None on a closed, slow, oversized or malformed request."""
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _HEAD_TIMEOUT)
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return _Request(parts[0], parts[1], parts[2], headers)


def _response(status: str, body: bytes, *, extra: str = "", close: bool = False) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n{extra}"
        f"Connection: {'close' if close else 'keep-alive'}\r\n\r\n"
    )
    return head.encode("latin-1") + body


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), 2)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy bytes until EOF, then half-close so the other side sees the end."""
    with contextlib.suppress(OSError, ssl.SSLError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()


class _TlsConnection:
    """Server-side TLS over a plain asyncio stream, through memory BIOs.

    Why not ``asyncio.start_server(ssl=...)``: when a handshake fails,
    asyncio's TLS transport closes the socket without sending the alert
    OpenSSL produced, so a client asking for an unknown name sees a bare
    EOF instead of ``unrecognized_name``. Pumping the BIOs ourselves (what
    asyncio does inside) lets the alert out. It is the only TLS code here.
    """

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, context: ssl.SSLContext
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)

    async def _flush(self) -> None:
        if data := self._outgoing.read():
            self._writer.write(data)
            await self._writer.drain()

    async def _fill(self) -> bool:
        data = await self._reader.read(65536)
        if not data:
            self._incoming.write_eof()
            return False
        self._incoming.write(data)
        return True

    async def handshake(self) -> None:
        """Complete the handshake; on ``ssl.SSLError`` the alert has been sent."""
        while True:
            try:
                self._tls.do_handshake()
            except ssl.SSLWantReadError:
                await self._flush()
                if not await self._fill():
                    raise ConnectionResetError("client closed during the handshake") from None
            except ssl.SSLError:
                await self._flush()
                raise
            else:
                await self._flush()
                return

    async def recv(self) -> bytes:
        """The next decrypted bytes; ``b""`` at the end of the stream."""
        while True:
            try:
                return self._tls.read(65536)
            except ssl.SSLWantReadError:
                await self._flush()  # e.g. TLS 1.3 session tickets
                if not await self._fill():
                    return b""
            except ssl.SSLZeroReturnError:
                return b""

    async def send(self, data: bytes) -> None:
        self._tls.write(data)
        await self._flush()

    async def close(self) -> None:
        """Send close_notify if the session is up (best effort)."""
        with contextlib.suppress(ssl.SSLError, OSError):
            self._tls.unwrap()
        with contextlib.suppress(ssl.SSLError, OSError):
            await self._flush()

    def reader(self) -> tuple[asyncio.StreamReader, asyncio.Task[None]]:
        """The decrypted side as a StreamReader, fed by a task (cancel it when done)."""
        stream = asyncio.StreamReader(limit=_MAX_HEAD)

        async def pump() -> None:
            try:
                while data := await self.recv():
                    stream.feed_data(data)
            except (OSError, ssl.SSLError) as error:
                stream.set_exception(error)
                return
            stream.feed_eof()

        return stream, asyncio.create_task(pump())


class ReferenceRouter:
    """HTTPS by SNI from ``certificates``, plus the HTTP listener. No I/O until ``start()``."""

    def __init__(self, certificates: CertificateMap, config: RouterConfig) -> None:
        self.certificates = certificates
        self.config = config
        self._servers: list[asyncio.Server] = []
        self._connections: set[asyncio.Task[None]] = set()
        self._context: ssl.SSLContext | None = None
        self.https_port = 0
        self.http_port = 0

    async def start(self) -> None:
        """Listen on both ports (port 0 picks a free one; see ``https_port``/``http_port``)."""
        self._context = self.certificates.server_context(
            self.config.default_cert, self.config.default_key
        )
        host, port = self.config.https_listen
        https = await asyncio.start_server(
            self._tracked(self._serve_https), host, port, backlog=1024
        )
        self._servers.append(https)
        self.https_port = int(https.sockets[0].getsockname()[1])
        if self.config.http_listen is not None:
            host, port = self.config.http_listen
            http = await asyncio.start_server(
                self._tracked(self._serve_http), host, port, backlog=1024
            )
            self._servers.append(http)
            self.http_port = int(http.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening and end open connections."""
        for server in self._servers:
            server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        for server in self._servers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 5)
        self._servers.clear()

    def _tracked(
        self, handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
    ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        """Remember each connection's task so ``stop()`` can end keep-alive connections."""

        async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._connections.add(task)
            try:
                await handler(reader, writer)
            except (OSError, ssl.SSLError):
                pass  # the client went away: nothing to report
            finally:
                self._connections.discard(task)
                await _close(writer)

        return run

    # -- HTTPS --------------------------------------------------------------------

    async def _serve_https(
        self, raw_reader: asyncio.StreamReader, raw_writer: asyncio.StreamWriter
    ) -> None:
        assert self._context is not None
        tls = _TlsConnection(raw_reader, raw_writer, self._context)
        try:
            await asyncio.wait_for(tls.handshake(), _HEAD_TIMEOUT)
        except (ssl.SSLError, TimeoutError):
            return  # unknown name without a default, or a broken client: alert sent
        reader, pump = tls.reader()
        try:
            if self.config.upstream is not None:
                await self._proxy(reader, tls, self.config.upstream)
            else:
                await self._answer(reader, tls)
            await tls.close()
        finally:
            pump.cancel()

    async def _answer(self, reader: asyncio.StreamReader, tls: _TlsConnection) -> None:
        """The trivial upstream: one line naming the host and path, keep-alive honoured."""
        while (request := await _read_request(reader)) is not None:
            length = int(request.headers.get("content-length", "0") or 0)
            if length:
                await reader.readexactly(length)  # a body we do not use
            body = f"certbroker reference router: {request.host}{request.target}\n".encode()
            await tls.send(_response("200 OK", body, close=not request.keep_alive))
            if not request.keep_alive:
                return

    async def _proxy(
        self, reader: asyncio.StreamReader, tls: _TlsConnection, upstream: HostPort
    ) -> None:
        """TLS ends here; the decrypted bytes go to the upstream as they are, both ways."""
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(*upstream), _UPSTREAM_TIMEOUT
            )
        except (OSError, TimeoutError):
            await tls.send(_response("502 Bad Gateway", b"upstream unreachable\n", close=True))
            return

        async def downstream() -> None:
            with contextlib.suppress(OSError, ssl.SSLError):
                while data := await up_reader.read(65536):
                    await tls.send(data)

        try:
            await asyncio.gather(_pipe(reader, up_writer), downstream())
        finally:
            await _close(up_writer)

    # -- HTTP: challenges to the broker, the rest to HTTPS -------------------------

    async def _serve_http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await _read_request(reader)
        if request is None:
            return
        if request.target.startswith(CHALLENGE_PREFIX) and self.config.http01_forward is not None:
            writer.write(await self._forward_challenge(request, self.config.http01_forward))
        elif request.target.startswith(CHALLENGE_PREFIX):
            writer.write(_response("404 Not Found", b"", close=True))
        elif not request.host:
            writer.write(_response("400 Bad Request", b"Host header required\n", close=True))
        else:
            port = self.config.redirect_port or self.https_port
            authority = request.host if port == 443 else f"{request.host}:{port}"
            location = f"https://{authority}{request.target}"
            writer.write(
                _response(
                    "308 Permanent Redirect", b"", extra=f"Location: {location}\r\n", close=True
                )
            )
        await writer.drain()

    async def _forward_challenge(self, request: _Request, responder: HostPort) -> bytes:
        """Ask the broker's responder for the token and relay its whole answer."""
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(*responder), _UPSTREAM_TIMEOUT
            )
        except (OSError, TimeoutError):
            return _response("502 Bad Gateway", b"challenge responder unreachable\n", close=True)
        try:
            method = "HEAD" if request.method == "HEAD" else "GET"
            up_writer.write(
                f"{method} {request.target} HTTP/1.1\r\nHost: {request.host or 'localhost'}\r\n"
                "Connection: close\r\n\r\n".encode("latin-1")
            )
            await up_writer.drain()
            return await asyncio.wait_for(up_reader.read(-1), _UPSTREAM_TIMEOUT)
        except (OSError, TimeoutError):
            return _response("502 Bad Gateway", b"challenge responder failed\n", close=True)
        finally:
            await _close(up_writer)
