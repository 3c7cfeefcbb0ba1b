"""The HTTP-01 responder: answers, keep-alive, HEAD, bursts, publication hook."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from certbroker.acme.http01 import Http01Responder

TOKEN = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"
KEYAUTH = TOKEN + ".9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI"


@pytest.fixture
async def responder() -> AsyncIterator[Http01Responder]:
    r = Http01Responder()
    await r.start("127.0.0.1", 0)
    try:
        yield r
    finally:
        await r.stop()


async def _exchange(
    port: int, raw: bytes, *, responses: int = 1
) -> tuple[list[tuple[int, dict[str, str], bytes]], asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    out = []
    for _ in range(responses):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        lines = head.decode().split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {
            k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)
        }
        length = int(headers["content-length"])
        body = b""
        if not raw.startswith(b"HEAD"):  # a HEAD answer has a length but no body
            body = await asyncio.wait_for(reader.readexactly(length), 2)
        out.append((status, headers, body))
    return out, reader, writer


def _get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: a.example\r\n{extra}\r\n".encode()


async def test_answers_published_token_and_404_otherwise(responder: Http01Responder) -> None:
    responder.add(TOKEN, KEYAUTH)
    (res,), _, w = await _exchange(responder.port, _get(f"/.well-known/acme-challenge/{TOKEN}"))
    w.close()
    assert res[0] == 200
    assert res[1]["content-type"] == "text/plain"
    assert res[2] == KEYAUTH.encode()
    for path in ("/.well-known/acme-challenge/other", "/", f"/{TOKEN}"):
        (res,), _, w = await _exchange(responder.port, _get(path))
        w.close()
        assert res[0] == 404


async def test_keep_alive_serves_pipelined_requests(responder: Http01Responder) -> None:
    responder.add(TOKEN, KEYAUTH)
    one = _get(f"/.well-known/acme-challenge/{TOKEN}")
    results, _reader, writer = await _exchange(
        responder.port, one + _get("/nope") + one, responses=3
    )
    assert [r[0] for r in results] == [200, 404, 200]
    assert all(r[1]["connection"] == "keep-alive" for r in results)
    writer.close()


async def test_head_and_methods_and_close(responder: Http01Responder) -> None:
    responder.add(TOKEN, KEYAUTH)
    raw = f"HEAD /.well-known/acme-challenge/{TOKEN} HTTP/1.1\r\nHost: a\r\n\r\n".encode()
    (res,), reader, w = await _exchange(responder.port, raw)
    assert res[0] == 200
    assert res[1]["content-length"] == str(len(KEYAUTH))
    w.close()
    raw = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc"
    reader, writer = await asyncio.open_connection("127.0.0.1", responder.port)
    writer.write(raw)
    data = await asyncio.wait_for(reader.read(), 2)  # server closes: read() reaches EOF
    assert data.startswith(b"HTTP/1.1 405 ")
    writer.close()


async def test_query_string_and_absolute_form(responder: Http01Responder) -> None:
    responder.add(TOKEN, KEYAUTH)
    for target in (
        f"/.well-known/acme-challenge/{TOKEN}?x=1",
        f"http://a.example/.well-known/acme-challenge/{TOKEN}",
    ):
        (res,), _, w = await _exchange(responder.port, _get(target))
        w.close()
        assert res[0] == 200


async def test_64_concurrent_connections_none_stall(responder: Http01Responder) -> None:
    tokens = [f"tok{i:03d}" for i in range(64)]
    for t in tokens:
        responder.add(t, t + ".thumb")

    async def one(token: str) -> float:
        started = time.perf_counter()
        (res,), _, w = await _exchange(responder.port, _get(f"/.well-known/acme-challenge/{token}"))
        w.close()
        assert res[0] == 200 and res[2] == (token + ".thumb").encode()
        return time.perf_counter() - started

    durations = await asyncio.wait_for(asyncio.gather(*(one(t) for t in tokens)), 10)
    assert len(durations) == 64
    assert max(durations) < 1.0, max(durations)


async def test_refcounted_publication_and_hook() -> None:
    changes: list[tuple[str, str | None]] = []
    r = Http01Responder(on_change=lambda t, k: changes.append((t, k)))
    r.add(TOKEN, KEYAUTH)
    r.add(TOKEN, KEYAUTH)  # a second order sharing the authorization
    r.remove(TOKEN)
    assert r.get(TOKEN) == KEYAUTH
    r.remove(TOKEN)
    assert r.get(TOKEN) is None
    r.remove(TOKEN)  # extra removes are harmless
    assert changes == [(TOKEN, KEYAUTH), (TOKEN, None)]


async def test_stop_closes_idle_keep_alive_connections() -> None:
    r = Http01Responder()
    port = await r.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_get("/x"))
    await reader.readuntil(b"\r\n\r\n")
    await asyncio.wait_for(r.stop(), 2)
    rest = await asyncio.wait_for(reader.read(), 2)
    assert rest in (b"",)
    writer.close()


async def test_bad_request_line(responder: Http01Responder) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", responder.port)
    writer.write(b"garbage\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), 2)
    assert data.startswith(b"HTTP/1.1 400 ")
    writer.close()
