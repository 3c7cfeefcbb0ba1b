"""The doctor's HTTP-01 self-probe: real loopback sockets, the real responder, stub servers."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from certbroker.acme.http01 import Http01Responder
from certbroker.acme.http01_probe import (
    MAX_RESPONSE_BYTES,
    Http01Probe,
    IPAddress,
    parse_response,
)
from tests.infra.ports import free_port

LOOPBACK = (ipaddress.ip_address("127.0.0.1"),)


def anywhere(ip: IPAddress) -> bool:
    """The tests' servers listen on loopback, which the default policy refuses."""
    return True


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def resolve_to(*addresses: IPAddress) -> Callable[[str], Awaitable[tuple[IPAddress, ...]]]:
    async def resolve(name: str) -> tuple[IPAddress, ...]:
        return addresses

    return resolve


@asynccontextmanager
async def stub_server(handler: Handler) -> AsyncIterator[int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()


def answering(raw: bytes) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(raw)
        await writer.drain()
        writer.close()

    return handler


def test_parse_response_plain_length_and_chunked() -> None:
    assert parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcdef") == (
        200,
        {"content-length": "3"},
        b"abc",
    )
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    assert parse_response(chunked) == (200, {"transfer-encoding": "chunked"}, b"abcde")
    assert parse_response(b"HTTP/1.0 404 Not Found\r\n\r\n") == (404, {}, b"")
    assert parse_response(b"SSH-2.0-OpenSSH\r\n\r\n") is None
    assert parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n") is None
    assert parse_response(b"HTTP/1.1 200 OK\r\n") is None  # cut before the end of the head


async def test_the_real_responder_answers_and_the_token_is_withdrawn() -> None:
    changes: list[tuple[str, str | None]] = []
    responder = Http01Responder(on_change=lambda t, k: changes.append((t, k)))
    port = await responder.start("127.0.0.1", 0)
    try:
        probe = Http01Probe(
            responder, resolve_to(*LOOPBACK), port=port, timeout=5, reachable=anywhere
        )
        addresses, fetches = await probe.probe("www.example.test")
    finally:
        await responder.stop()
    assert addresses == LOOPBACK
    [fetch] = fetches
    assert fetch.ok, fetch
    assert fetch.url.startswith(f"http://www.example.test:{port}/.well-known/acme-challenge/")
    assert fetch.address == f"127.0.0.1:{port}"
    assert len(responder) == 0
    # Published through the normal hook (routers answering from the stream see it), then gone.
    [(token, key_authorization), (removed, gone)] = changes
    assert key_authorization is not None and key_authorization.startswith(token + ".")
    assert (removed, gone) == (token, None)
    assert len(token) == 43


async def test_wrong_answers_are_reported_as_they_came() -> None:
    responder = Http01Responder()
    cases = [
        (b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found", "404 'not found'"),
        (
            b"HTTP/1.1 301 Moved\r\nLocation: https://www.example.test/x\r\n\r\n",
            "301 redirect to https://www.example.test/x",
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", "200 'hello'"),
        (b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * MAX_RESPONSE_BYTES, "longer than"),
        (b"garbage\r\n\r\n", "not an HTTP/1.1 response"),
    ]
    for raw, expected in cases:
        async with stub_server(answering(raw)) as port:
            probe = Http01Probe(
                responder, resolve_to(*LOOPBACK), port=port, timeout=5, reachable=anywhere
            )
            _, [fetch] = await probe.probe("www.example.test")
        assert not fetch.ok
        assert expected in fetch.describe(), (expected, fetch)
        assert len(responder) == 0


async def test_silence_refusal_and_no_address() -> None:
    responder = Http01Responder()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    async with stub_server(silent) as port:
        probe = Http01Probe(
            responder, resolve_to(*LOOPBACK), port=port, timeout=0.3, reachable=anywhere
        )
        _, [fetch] = await probe.probe("www.example.test")
    assert fetch.error == "no answer within 0.3 s"

    refused = Http01Probe(
        responder, resolve_to(*LOOPBACK), port=free_port(), timeout=5, reachable=anywhere
    )
    _, [fetch] = await refused.probe("www.example.test")
    assert fetch.error == "connection refused (nothing listens there)"

    nowhere = Http01Probe(responder, resolve_to(), port=80, timeout=5, reachable=anywhere)
    assert await nowhere.probe("www.example.test") == ((), [])
    assert len(responder) == 0


async def test_cancelled_probe_withdraws_its_token() -> None:
    responder = Http01Responder()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    async with stub_server(silent) as port:
        probe = Http01Probe(
            responder, resolve_to(*LOOPBACK), port=port, timeout=30, reachable=anywhere
        )
        task = asyncio.create_task(probe.probe("www.example.test"))
        while len(responder) == 0:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert len(responder) == 0


async def test_addresses_the_ca_cannot_reach_are_not_fetched() -> None:
    connections = 0

    async def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        writer.close()

    responder = Http01Responder()
    async with stub_server(count) as port:
        for address in ("127.0.0.1", "10.0.0.5", "169.254.169.254", "::1"):
            probe = Http01Probe(
                responder, resolve_to(ipaddress.ip_address(address)), port=port, timeout=5
            )
            _, [fetch] = await probe.probe("www.example.test")
            assert fetch.error.startswith("not probed: not a public address"), fetch
    assert connections == 0
    assert len(responder) == 0
