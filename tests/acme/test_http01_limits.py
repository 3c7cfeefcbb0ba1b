"""The HTTP-01 responder's bounds: connection caps, header and idle deadlines, size limits.

Limits are injected small so each case runs in well under a second; deadlines
in the assertions are generous upper bounds (far above the injected timeouts,
far below the ones a slow connection would otherwise get), never timings.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from certbroker.acme.http01 import Http01Responder, ResponderLimits

TOKEN = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"
KEYAUTH = TOKEN + ".9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI"
REQUEST = f"GET /.well-known/acme-challenge/{TOKEN} HTTP/1.1\r\nHost: a.example\r\n\r\n".encode()
Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@pytest.fixture
async def make() -> AsyncIterator[Callable[[ResponderLimits], Awaitable[Http01Responder]]]:
    started: list[Http01Responder] = []

    async def start(limits: ResponderLimits) -> Http01Responder:
        responder = Http01Responder(limits=limits)
        responder.add(TOKEN, KEYAUTH)
        await responder.start("127.0.0.1", 0)
        started.append(responder)
        return responder

    yield start
    for responder in started:
        await responder.stop()


async def _connect(port: int, source: str = "127.0.0.1") -> Conn:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def _held(responder: Http01Responder, count: int) -> None:
    """Wait until the responder holds ``count`` connections (it accepts asynchronously)."""
    async with asyncio.timeout(10):
        while responder.open_connections != count:
            await asyncio.sleep(0.01)


async def _closed_by_server(conn: Conn, within: float = 10.0) -> bytes:
    """Everything the server sent before closing; fails if it keeps the connection open."""
    reader, writer = conn
    try:
        async with asyncio.timeout(within):
            return await reader.read()
    except ConnectionResetError:
        return b""
    finally:
        writer.close()


async def _challenge_answered(port: int, source: str = "127.0.0.1") -> bool:
    reader, writer = await _connect(port, source)
    try:
        writer.write(REQUEST)
        async with asyncio.timeout(10):
            head = await reader.readuntil(b"\r\n\r\n")
            body = await reader.readexactly(len(KEYAUTH))
        return head.startswith(b"HTTP/1.1 200 ") and body == KEYAUTH.encode()
    except (ConnectionError, asyncio.IncompleteReadError):
        return False
    finally:
        writer.close()


async def test_per_peer_cap_closes_the_extra_connection_and_spares_other_peers(
    make: Callable[[ResponderLimits], Awaitable[Http01Responder]],
) -> None:
    responder = await make(ResponderLimits(max_connections=100, max_per_peer=3))
    idle = [await _connect(responder.port) for _ in range(3)]
    await _held(responder, 3)

    assert await _closed_by_server(await _connect(responder.port)) == b""  # 4th from the peer
    assert await _challenge_answered(responder.port, "127.0.0.2")  # another peer is served

    idle.pop()[1].close()  # one slot of the first peer frees up
    await _held(responder, 2)
    assert await _challenge_answered(responder.port)
    for _, writer in idle:
        writer.close()


async def test_total_cap_closes_connections_over_it(
    make: Callable[[ResponderLimits], Awaitable[Http01Responder]],
) -> None:
    responder = await make(ResponderLimits(max_connections=5, max_per_peer=100))
    idle = [await _connect(responder.port, f"127.0.0.{i}") for i in range(1, 6)]
    await _held(responder, 5)
    assert await _closed_by_server(await _connect(responder.port, "127.0.0.9")) == b""
    idle.pop()[1].close()
    await _held(responder, 4)
    assert await _challenge_answered(responder.port, "127.0.0.9")
    for _, writer in idle:
        writer.close()


async def test_refusals_are_logged_once_per_interval_without_tracebacks(
    make: Callable[[ResponderLimits], Awaitable[Http01Responder]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    responder = await make(ResponderLimits(max_connections=100, max_per_peer=1))
    idle = await _connect(responder.port)
    await _held(responder, 1)
    caplog.set_level(logging.DEBUG)
    for _ in range(20):
        await _closed_by_server(await _connect(responder.port))
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "refused 1 connection" in warnings[0].getMessage()
    assert not any(r.exc_info for r in caplog.records)
    idle[1].close()


async def test_a_silent_connection_is_closed_after_the_header_timeout(
    make: Callable[[ResponderLimits], Awaitable[Http01Responder]],
) -> None:
    responder = await make(ResponderLimits(header_timeout=0.3, idle_timeout=600))
    assert await _closed_by_server(await _connect(responder.port)) == b""
    await _held(responder, 0)


async def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(
    make: Callable[[ResponderLimits], Awaitable[Http01Responder]],
) -> None:
    responder = await make(ResponderLimits(header_timeout=600, idle_timeout=0.3))
    reader, writer = await _connect(responder.port)
    writer.write(REQUEST)
    rest = await _closed_by_server((reader, writer))
    assert rest.startswith(b"HTTP/1.1 200 ") and rest.endswith(KEYAUTH.encode())
    assert b"Connection: keep-alive" in rest  # it was kept open, then closed for idleness


@pytest.mark.parametrize("after_a_request", [False, True])
async def test_a_header_that_never_ends_is_cut_off(
    make: Callable[[ResponderLimits], Awaitable[Http01Responder]], after_a_request: bool
) -> None:
    """Slowloris: a byte at a time keeps neither the first nor a keep-alive request open.

    The idle timeout is long, so a keep-alive request is cut off by the header
    deadline, not by idleness.
    """
    responder = await make(ResponderLimits(header_timeout=0.5, idle_timeout=600))
    reader, writer = await _connect(responder.port)
    if after_a_request:
        writer.write(REQUEST)
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(len(KEYAUTH))
    writer.write(b"GET / HTTP/1.1\r\nX-Slow: ")
    async with asyncio.timeout(30):
        while True:  # the server closing makes the write fail or the read see EOF
            try:
                writer.write(b"a")
                await writer.drain()
                if await asyncio.wait_for(reader.read(1024), 0.05) == b"":
                    break
            except TimeoutError:
                continue
            except ConnectionError:
                break
    writer.close()
    await _held(responder, 0)


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", b"414"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"b" * 20_000 + b"\r\n\r\n", b"431"),
        (b"GET / HTTP/1.1\r\n" + b"X-N: 1\r\n" * 101 + b"\r\n", b"431"),
    ],
    ids=["request-line", "header-bytes", "header-count"],
)
async def test_oversize_requests_are_refused_and_closed(
    make: Callable[[ResponderLimits], Awaitable[Http01Responder]],
    request_bytes: bytes,
    status: bytes,
) -> None:
    responder = await make(ResponderLimits())
    reader, writer = await _connect(responder.port)
    writer.write(request_bytes)
    answer = await _closed_by_server((reader, writer))
    assert answer.startswith(b"HTTP/1.1 " + status + b" "), answer[:80]
