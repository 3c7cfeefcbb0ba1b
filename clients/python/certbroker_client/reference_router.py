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
3. **Redirect**: everything else on port 80 goes to HTTPS (308 keeps the method),
   but only for a name this router has a certificate for (see below).

It faces the internet, so every client is bounded by :class:`Limits`: a cap on
open connections, a deadline for the TLS handshake and each request head, an
idle timeout between requests (and for a silent proxied connection), a size
and count limit on headers and a limit on request bodies. Bytes are read only
when there is room for them (one chunk per direction), so a large body or a
slow upstream never piles up in memory.

Requests are parsed in one place, :func:`_parse_head`, strictly: anything
ambiguous is refused with 400 rather than guessed at, because a request a
router reads differently from the upstream behind it is how smuggling works.

Redirect policy: ``Location`` is built only from a Host that is a valid DNS
name (400 otherwise) and a target of printable ASCII (400 otherwise, which
stops CR/LF header injection). A valid name the router has no certificate for
gets ``421 Misdirected Request`` and no ``Location``: redirecting it would send
a visitor (or an attacker's link) to a handshake that fails, or to the default
certificate, which does not match. The challenge path is forwarded for any
valid name, since a name being validated has no certificate yet.

In proxy mode the router does not parse HTTP (it is a TLS terminator; the
upstream owns HTTP semantics): the limits that apply there are the connection
cap, the handshake deadline, the idle timeout and back-pressure.

Everything is plain ``asyncio`` streams; TLS runs through memory BIOs (see
``_TlsConnection`` for why).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol

from certbroker_client.router import CertificateMap, lookup_names

__all__ = ["Limits", "ReferenceRouter", "RouterConfig"]

log = logging.getLogger(__name__)

CHALLENGE_PREFIX: Final = "/.well-known/acme-challenge/"
# One read's worth. A connection holds at most about this much per direction
# (plus the kernel's socket buffers): reads wait until the previous chunk has
# been written on, which is the back-pressure.
_CHUNK: Final = 64 * 1024
# The broker's responder answers with a short key authorization; anything
# longer is not an answer worth relaying.
_MAX_CHALLENGE_ANSWER: Final = 64 * 1024
# Content-Length values longer than this are refused before int() (Python
# refuses to parse very long digit strings, and no body here is exabytes).
_MAX_LENGTH_DIGITS: Final = 18
# close_notify is best effort: a client that stops reading must not hold its
# connection open any longer for it.
_CLOSE_TIMEOUT: Final = 2.0
# After a refusal the client may still be sending (the body we refused, a head
# past the limit). Closing with unread input makes the kernel send a reset,
# which can destroy the answer before the client reads it, so a client
# connection is first half-closed and what still arrives is dropped, for at
# most this long and this much.
_LINGER_TIME: Final = 2.0
_LINGER_BYTES: Final = 4 * 1024 * 1024
# Warn about a full connection table at most this often (an attack that
# fills it must not also fill the log).
_FULL_LOG_INTERVAL: Final = 60.0

HostPort = tuple[str, int]


@dataclass(frozen=True)
class Limits:
    """What one client may take from the router. The defaults suit a small router host.

    - ``max_connections`` (512): open client connections across both
      listeners; more are closed at once. A proxied connection holds two file
      descriptors, so 512 stays under the common 1024 open-file soft limit.
    - ``head_timeout`` (10 s): the TLS handshake, and each request head from
      its first byte; a new connection must start its request within it too.
      Slow-header clients (slowloris) are cut off here.
    - ``idle_timeout`` (60 s): silence allowed between keep-alive requests,
      while reading a body or writing an answer, and in proxy mode with no
      bytes moving either way.
    - ``max_head_bytes`` (16 KiB) and ``max_headers`` (100): larger or longer
      heads get 431; browsers send well under both.
    - ``max_body_bytes`` (1 MiB): request bodies the router reads itself
      (its own page and redirects use none, so this only has to be
      generous); more gets 413 before any of the body is read.
    """

    max_connections: int = 512
    head_timeout: float = 10.0
    idle_timeout: float = 60.0
    max_head_bytes: int = 16 * 1024
    max_headers: int = 100
    max_body_bytes: int = 1024 * 1024

    def __post_init__(self) -> None:
        for name in ("max_connections", "max_head_bytes", "max_headers", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("head_timeout", "idle_timeout"):
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be a positive number of seconds")


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
    limits: Limits = field(default_factory=Limits)


# -- requests: the one parser ---------------------------------------------------------


class _Refused(Exception):
    """A request the router answers with an error status and then closes."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(status)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class _Request:
    method: str
    target: str  # origin-form ("/path?query"), printable ASCII only
    host: str | None  # a lower-case DNS name without port, None if the client sent none
    content_length: int
    chunked: bool
    keep_alive: bool


# RFC 9110 token: method and header names.
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Origin-form target, printable ASCII only: no space, CR, LF, NUL, other C0 or DEL
# can reach a Location header or the forwarded challenge request.
_TARGET: Final = re.compile(r"/[\x21-\x7e]*")
# C0 controls except HTAB, and DEL: never valid in a field value (RFC 9110 5.5).
_CONTROL: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_LABEL: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_ABSOLUTE: Final = re.compile(r"https?://", re.IGNORECASE)


def _dns_name(authority: str) -> str | None:
    """The lower-case name of ``name[:port]`` if it is a DNS host name (RFC 1123), else None.

    IP literals in brackets, user info, wildcards, underscores and non-ASCII
    are all refused: the result goes into a ``Location`` header.
    """
    name, colon, port = authority.partition(":")
    if colon and not (port.isascii() and port.isdigit() and len(port) <= 5 and int(port) < 65536):
        return None
    name = name.lower().removesuffix(".")
    if not name.isascii() or not 0 < len(name) <= 253:
        return None
    if not all(_LABEL.fullmatch(label) for label in name.split(".")):
        return None
    return name


def _parse_head(head: bytes, limits: Limits) -> _Request:
    """Read one request head (ending in a blank line); ``_Refused`` says why it is not acceptable.

    Framing follows RFC 9112 section 6: Content-Length must be digits and
    agree with itself; Transfer-Encoding must end in ``chunked`` and never
    come with Content-Length or HTTP/1.0. Host: at most one, a DNS name,
    required in HTTP/1.1; an absolute-form target's authority replaces it.
    """
    lines = head.decode("latin-1").split("\r\n")[:-2]  # the head ends with an empty line
    if len(lines) - 1 > limits.max_headers:
        raise _Refused("431 Request Header Fields Too Large", "too many header fields")
    request_line = lines[0].split(" ")
    if len(request_line) != 3:
        raise _Refused("400 Bad Request", "malformed request line")
    method, target, version = request_line
    if not _TOKEN.fullmatch(method) or version not in ("HTTP/1.0", "HTTP/1.1"):
        raise _Refused("400 Bad Request", "malformed request line")
    authority: str | None = None
    if _ABSOLUTE.match(target):
        authority, _, path = target.partition("://")[2].partition("/")
        target = "/" + path
    if not _TARGET.fullmatch(target):
        raise _Refused("400 Bad Request", "request target must be printable ASCII")

    fields: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.fullmatch(name):  # also refuses obs-fold and "Name :"
            raise _Refused("400 Bad Request", "malformed header field")
        value = value.strip(" \t")
        if _CONTROL.search(value):
            raise _Refused("400 Bad Request", "control character in a header field")
        fields.setdefault(name.lower(), []).append(value)

    hosts = fields.get("host", [])
    if len(hosts) > 1:
        raise _Refused("400 Bad Request", "more than one Host")
    if authority is None and hosts:
        authority = hosts[0]
    if authority is None and version == "HTTP/1.1":
        raise _Refused("400 Bad Request", "Host header required")
    host = None if authority is None else _dns_name(authority)
    if authority is not None and host is None:
        raise _Refused("400 Bad Request", "Host is not a DNS name")

    lengths = {
        part.strip() for value in fields.get("content-length", []) for part in value.split(",")
    }
    codings = [
        part.strip().lower()
        for value in fields.get("transfer-encoding", [])
        for part in value.split(",")
    ]
    if codings and (lengths or version == "HTTP/1.0" or codings[-1] != "chunked"):
        raise _Refused("400 Bad Request", "unusable Transfer-Encoding")
    if len(lengths) > 1 or not all(n.isascii() and n.isdigit() for n in lengths):
        raise _Refused("400 Bad Request", "invalid Content-Length")
    length_text = lengths.pop() if lengths else "0"
    if len(length_text) > _MAX_LENGTH_DIGITS:
        raise _Refused("413 Content Too Large", "request body too large")

    connection = {
        t.strip().lower() for value in fields.get("connection", []) for t in value.split(",")
    }
    keep_alive = "keep-alive" in connection if version == "HTTP/1.0" else "close" not in connection
    return _Request(method, target, host, int(length_text), bool(codings), keep_alive)


def _response(
    status: str,
    body: bytes = b"",
    *,
    location: str | None = None,
    close: bool,
    head_only: bool = False,
) -> bytes:
    """A whole response; ``location`` must already be safe (built from validated parts)."""
    extra = f"Location: {location}\r\n" if location is not None else ""
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n{extra}"
        f"Connection: {'close' if close else 'keep-alive'}\r\n\r\n"
    )
    return head.encode("latin-1") + (b"" if head_only else body)


# -- connections ------------------------------------------------------------------------


class _Stream(Protocol):
    """A client connection, plain or TLS: a chunk at a time each way."""

    async def recv(self) -> bytes:
        """At most ``_CHUNK`` bytes; ``b""`` at the end of the stream."""
        ...

    async def send(self, data: bytes) -> None:
        """Write and wait until the transport has room again."""
        ...


class _PlainStream:
    """A TCP connection as a :class:`_Stream`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def recv(self) -> bytes:
        return await self._reader.read(_CHUNK)

    async def send(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()


class _Inbound:
    """Reads requests (head, then body) from a stream under the limits; keeps what it read ahead."""

    def __init__(self, stream: _Stream, limits: Limits) -> None:
        self._stream = stream
        self._limits = limits
        self._buffer = b""

    async def request(self, first_byte_within: float) -> _Request | None:
        """The next request; None if the client closed or was too slow. ``_Refused`` if bad.

        The first byte must come within ``first_byte_within``, the rest of
        the head within ``head_timeout`` of it.
        """
        limits = self._limits
        try:
            if not self._buffer:
                self._buffer = await asyncio.wait_for(self._stream.recv(), first_byte_within)
                if not self._buffer:
                    return None  # closed between requests
            async with asyncio.timeout(limits.head_timeout):
                while (end := self._buffer.find(b"\r\n\r\n")) < 0:
                    if len(self._buffer) > limits.max_head_bytes:
                        break
                    data = await self._stream.recv()
                    if not data:
                        return None  # closed mid-head
                    self._buffer += data
        except TimeoutError:
            return None
        if end < 0 or end + 4 > limits.max_head_bytes:
            raise _Refused("431 Request Header Fields Too Large", "request head too large")
        head, self._buffer = self._buffer[: end + 4], self._buffer[end + 4 :]
        return _parse_head(head, limits)

    async def skip_body(self, length: int) -> bool:
        """Read and drop ``length`` bytes a chunk at a time; False if the client stopped."""
        while length > 0:
            if not self._buffer:
                self._buffer = await asyncio.wait_for(
                    self._stream.recv(), self._limits.idle_timeout
                )
                if not self._buffer:
                    return False
            taken = min(length, len(self._buffer))
            self._buffer, length = self._buffer[taken:], length - taken
        return True


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), _CLOSE_TIMEOUT)


async def _linger_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half-close, drop what the client still sends (bounded), then close."""
    with contextlib.suppress(OSError, TimeoutError):
        if writer.can_write_eof():
            writer.write_eof()
        async with asyncio.timeout(_LINGER_TIME):
            left = _LINGER_BYTES
            while left > 0 and (data := await reader.read(_CHUNK)):
                left -= len(data)
    await _close(writer)


class _TlsConnection:
    """Server-side TLS over a plain asyncio stream, through memory BIOs.

    Why not ``asyncio.start_server(ssl=...)``: when a handshake fails,
    asyncio's TLS transport closes the socket without sending the alert
    OpenSSL produced, so a client asking for an unknown name sees a bare
    EOF instead of ``unrecognized_name``. Pumping the BIOs ourselves (what
    asyncio does inside) lets the alert out. It is the only TLS code here.
    Ciphertext is read only when plaintext is asked for, which keeps the
    back-pressure of the plain stream.
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
        data = await self._reader.read(_CHUNK)
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
        """The next decrypted bytes (at most ``_CHUNK``); ``b""`` at the end of the stream."""
        while True:
            try:
                return self._tls.read(_CHUNK)
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


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class ReferenceRouter:
    """HTTPS by SNI from ``certificates``, plus the HTTP listener. No I/O until ``start()``."""

    def __init__(self, certificates: CertificateMap, config: RouterConfig) -> None:
        self.certificates = certificates
        self.config = config
        self._servers: list[asyncio.Server] = []
        self._connections: set[asyncio.Task[None]] = set()
        self._context: ssl.SSLContext | None = None
        self._full_logged_at = float("-inf")
        self.https_port = 0
        self.http_port = 0
        self.refused_connections = 0

    @property
    def open_connections(self) -> int:
        """Client connections open now (both listeners), counted against ``max_connections``."""
        return len(self._connections)

    async def start(self) -> None:
        """Listen on both ports (port 0 picks a free one; see ``https_port``/``http_port``)."""
        self._context = self.certificates.server_context(
            self.config.default_cert, self.config.default_key
        )
        host, port = self.config.https_listen
        https = await asyncio.start_server(
            self._tracked(self._serve_https), host, port, backlog=1024, limit=_CHUNK
        )
        self._servers.append(https)
        self.https_port = int(https.sockets[0].getsockname()[1])
        if self.config.http_listen is not None:
            host, port = self.config.http_listen
            http = await asyncio.start_server(
                self._tracked(self._serve_http), host, port, backlog=1024, limit=_CHUNK
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

    def _tracked(self, handler: Handler) -> Handler:
        """Count each connection against the cap, and remember it so ``stop()`` can end it.

        Over the cap the connection is closed at once, before reading
        anything: cheaper than an answer, and the same for HTTP and HTTPS.
        """

        async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if len(self._connections) >= self.config.limits.max_connections:
                self._refuse_over_cap()
                writer.transport.abort()
                return
            task = asyncio.current_task()
            assert task is not None
            self._connections.add(task)
            try:
                await handler(reader, writer)
            except (OSError, ssl.SSLError, TimeoutError):
                pass  # the client went away or was too slow: nothing to report
            finally:
                await _linger_close(reader, writer)
                self._connections.discard(task)

        return run

    def _refuse_over_cap(self) -> None:
        self.refused_connections += 1
        now = time.monotonic()
        if now - self._full_logged_at >= _FULL_LOG_INTERVAL:
            self._full_logged_at = now
            log.warning(
                "%d connections open (the limit): refusing new ones (%d so far)",
                len(self._connections),
                self.refused_connections,
            )

    async def _exchange(
        self, stream: _Stream, answer: Callable[[_Request], Awaitable[tuple[bytes, bool]]]
    ) -> None:
        """The request loop of every HTTP mode: read a request, drop its body, send the answer.

        ``answer`` returns the response and whether to close after it. A bad
        request gets its error status and the connection is closed.
        """
        limits = self.config.limits
        inbound = _Inbound(stream, limits)
        first_byte_within = limits.head_timeout  # a new connection must start promptly
        try:
            while (request := await inbound.request(first_byte_within)) is not None:
                first_byte_within = limits.idle_timeout
                if request.chunked:
                    raise _Refused("411 Length Required", "send a Content-Length")
                if request.content_length > limits.max_body_bytes:
                    raise _Refused("413 Content Too Large", "request body too large")
                if not await inbound.skip_body(request.content_length):
                    return
                response, close = await answer(request)
                async with asyncio.timeout(limits.idle_timeout):
                    await stream.send(response)
                if close:
                    return
        except _Refused as refusal:
            body = f"{refusal.reason}\n".encode()
            async with asyncio.timeout(limits.idle_timeout):
                await stream.send(_response(refusal.status, body, close=True))

    # -- HTTPS --------------------------------------------------------------------

    async def _serve_https(
        self, raw_reader: asyncio.StreamReader, raw_writer: asyncio.StreamWriter
    ) -> None:
        assert self._context is not None
        tls = _TlsConnection(raw_reader, raw_writer, self._context)
        try:
            await asyncio.wait_for(tls.handshake(), self.config.limits.head_timeout)
        except ssl.SSLError:
            return  # unknown name without a default, or a broken client: alert sent
        if self.config.upstream is not None:
            await self._proxy(tls, self.config.upstream)
        else:
            await self._exchange(tls, self._page)
        await asyncio.wait_for(tls.close(), _CLOSE_TIMEOUT)

    async def _page(self, request: _Request) -> tuple[bytes, bool]:
        """The trivial upstream: one line naming the host and path, keep-alive honoured."""
        body = f"certbroker reference router: {request.host or ''}{request.target}\n".encode()
        close = not request.keep_alive
        return _response("200 OK", body, close=close, head_only=request.method == "HEAD"), close

    async def _proxy(self, tls: _TlsConnection, upstream: HostPort) -> None:
        """TLS ends here; the decrypted bytes go to the upstream as they are, both ways.

        Each direction reads a chunk only after the previous one was written
        on (back-pressure), and the connection ends once no byte has moved
        either way for ``idle_timeout``.
        """
        limits = self.config.limits
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(*upstream, limit=_CHUNK), limits.head_timeout
            )
        except (OSError, TimeoutError):
            await tls.send(_response("502 Bad Gateway", b"upstream unreachable\n", close=True))
            return
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(limits.idle_timeout) as idle:

                def moved() -> None:
                    idle.reschedule(loop.time() + limits.idle_timeout)

                async def to_upstream() -> None:
                    with contextlib.suppress(OSError, ssl.SSLError):
                        while data := await tls.recv():
                            up_writer.write(data)
                            await up_writer.drain()
                            moved()
                        if up_writer.can_write_eof():
                            up_writer.write_eof()  # the client's end of input, passed on

                async def to_client() -> None:
                    with contextlib.suppress(OSError, ssl.SSLError):
                        while data := await up_reader.read(_CHUNK):
                            await tls.send(data)
                            moved()

                await asyncio.gather(to_upstream(), to_client())
        except TimeoutError:
            pass  # idle: close both sides
        finally:
            await _close(up_writer)

    # -- HTTP: challenges to the broker, the rest to HTTPS -------------------------

    async def _serve_http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._exchange(_PlainStream(reader, writer), self._http_answer)

    async def _http_answer(self, request: _Request) -> tuple[bytes, bool]:
        """A forwarded challenge, or a redirect for a name served here; one per connection."""
        if request.target.startswith(CHALLENGE_PREFIX):
            if self.config.http01_forward is None:
                return _response("404 Not Found", close=True), True
            return await self._forward_challenge(request, self.config.http01_forward), True
        if request.host is None:
            return _response("400 Bad Request", b"Host header required\n", close=True), True
        if not any(key in self.certificates for key in lookup_names(request.host)):
            body = b"no certificate for this name here\n"
            return _response("421 Misdirected Request", body, close=True), True
        port = self.config.redirect_port or self.https_port
        authority = request.host if port == 443 else f"{request.host}:{port}"
        location = f"https://{authority}{request.target}"  # both parts validated by the parser
        return _response("308 Permanent Redirect", location=location, close=True), True

    async def _forward_challenge(self, request: _Request, responder: HostPort) -> bytes:
        """Ask the broker's responder for the token and relay its (bounded) answer."""
        timeout = self.config.limits.head_timeout
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(*responder), timeout
            )
        except (OSError, TimeoutError):
            return _response("502 Bad Gateway", b"challenge responder unreachable\n", close=True)
        try:
            method = "HEAD" if request.method == "HEAD" else "GET"
            up_writer.write(
                f"{method} {request.target} HTTP/1.1\r\nHost: {request.host or 'localhost'}\r\n"
                "Connection: close\r\n\r\n".encode("latin-1")
            )
            async with asyncio.timeout(timeout):
                await up_writer.drain()
                answer = b""
                while len(answer) <= _MAX_CHALLENGE_ANSWER and (
                    data := await up_reader.read(_CHUNK)
                ):
                    answer += data
            if len(answer) > _MAX_CHALLENGE_ANSWER:
                return _response("502 Bad Gateway", b"challenge answer too large\n", close=True)
            return answer
        except (OSError, TimeoutError):
            return _response("502 Bad Gateway", b"challenge responder failed\n", close=True)
        finally:
            await _close(up_writer)
