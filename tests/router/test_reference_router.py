"""The reference router facing hostile clients: limits, strict parsing and safe redirects.

Real sockets on loopback, the router in the test's event loop with a map
filled directly (no broker needed for what is tested here), timeouts
shortened through :class:`Limits`. Stub upstreams stand in for the proxied
application and the broker's HTTP-01 responder.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from certbroker.v1 import broker_pb2
from certbroker_client.reference_router import Limits, ReferenceRouter, RouterConfig
from certbroker_client.router import CertificateMap
from tests.pki import TestPKI
from tests.router.support import (
    closed_by_peer,
    http_exchange,
    read_response,
    response_head,
    serving_event,
    wait_until,
)

PKI = TestPKI("Router limits", key_slot=4)
KNOWN = "www.example.test"
WILDCARD = "*.wild.example.test"
SHORT = Limits(head_timeout=0.3, idle_timeout=0.3)
MiB = 1024 * 1024
CLOSE = "Connection: close\r\n"


def certificates() -> CertificateMap:
    """A map serving ``KNOWN`` and ``WILDCARD`` (one leaf for both)."""
    now = datetime.now(UTC)
    leaf = PKI.leaf(
        KNOWN, WILDCARD, not_before=now - timedelta(days=1), not_after=now + timedelta(days=30)
    )
    served = CertificateMap()
    for name in (KNOWN, WILDCARD):
        serving = serving_event(
            1, broker_pb2.EVENT_TYPE_DOMAIN_UPDATED, name, leaf, PKI
        ).event.serving
        served.put(served.build(name, serving, 1))
    return served


def client_context() -> ssl.SSLContext:
    return ssl.create_default_context(cadata=PKI.root.pem.decode())


@contextlib.asynccontextmanager
async def running(**config: object) -> AsyncIterator[ReferenceRouter]:
    router = ReferenceRouter(
        certificates(),
        RouterConfig(https_listen=("127.0.0.1", 0), http_listen=("127.0.0.1", 0), **config),  # type: ignore[arg-type]
    )
    await router.start()
    try:
        yield router
    finally:
        await router.stop()


@pytest.fixture(scope="module")
async def router() -> AsyncIterator[ReferenceRouter]:
    """Default limits except the body limit (small, to test around it cheaply)."""
    async with running(http01_forward=None, limits=Limits(max_body_bytes=MiB)) as instance:
        yield instance


@dataclass
class Upstream:
    """A stub server: records what each connection sent; ``behaviour`` decides the rest."""

    behaviour: Callable[[Upstream, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
    received: list[bytes] = field(default_factory=list)
    ended: int = 0
    port: int = 0

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self.behaviour(self, reader, writer)
        finally:
            writer.close()

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[Upstream]:
        server = await asyncio.start_server(self._on_connect, "127.0.0.1", 0)
        self.port = int(server.sockets[0].getsockname()[1])
        try:
            yield self
        finally:
            server.close()


async def echo(up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    up.ended += 1


async def hold(up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accept, then say and read nothing until the router hangs up."""
    await reader.read()  # returns at EOF only: this stub reads nothing before it
    up.ended += 1


def get(target: str = "/shop?x=1", host: str | None = KNOWN, extra: str = "") -> bytes:
    host_line = f"Host: {host}\r\n" if host is not None else ""
    return f"GET {target} HTTP/1.1\r\n{host_line}{extra}\r\n".encode("latin-1")


# -- redirects: only to names served here, built from validated parts ----------------


@pytest.mark.parametrize(
    ("host", "location"),
    [
        (KNOWN, f"https://{KNOWN}:{{port}}/shop?x=1"),
        ("WWW.Example.Test.:80", f"https://{KNOWN}:{{port}}/shop?x=1"),
        ("a.wild.example.test", "https://a.wild.example.test:{port}/shop?x=1"),
    ],
)
async def test_known_names_are_redirected_to_https(
    router: ReferenceRouter, host: str, location: str
) -> None:
    status, head = response_head(await http_exchange(router.http_port, get(host=host)))
    assert status == 308
    assert f"\r\nLocation: {location.format(port=router.https_port)}\r\n" in head


async def test_an_absolute_form_target_names_the_host(router: ReferenceRouter) -> None:
    request = get(target=f"http://{KNOWN}/x", host="evil.example")
    status, head = response_head(await http_exchange(router.http_port, request))
    assert status == 308
    assert f"Location: https://{KNOWN}:{router.https_port}/x\r\n" in head


@pytest.mark.parametrize("host", ["evil.example", "a.b.wild.example.test", "wild.example.test"])
async def test_a_valid_name_without_a_certificate_gets_421_and_no_location(
    router: ReferenceRouter, host: str
) -> None:
    status, head = response_head(await http_exchange(router.http_port, get(host=host)))
    assert status == 421
    assert "location" not in head.lower()


@pytest.mark.parametrize(
    "request_bytes",
    [
        get(host="evil.example/x"),
        get(host=f"user@{KNOWN}"),
        get(host="[::1]:80"),
        get(host=f"{KNOWN}:99999"),
        get(host=f"{KNOWN}:8o"),
        get(host="_acme.example.test"),
        get(host="-a.example.test"),
        get(host=f"a{'b' * 63}.example.test"),
        get(host="a..example.test"),
        get(host="*.wild.example.test"),
        get(host="ex\u00e4mple.test"),
        get(host=""),
        get(host=None),
        get(extra=f"Host: {KNOWN}\r\n"),  # two Host fields
        get(target="shop"),
        get(target="*"),
    ],
    ids=lambda raw: repr(raw[:60]),
)
async def test_invalid_hosts_and_targets_get_400_and_no_location(
    router: ReferenceRouter, request_bytes: bytes
) -> None:
    status, head = response_head(await http_exchange(router.http_port, request_bytes))
    assert status == 400
    assert "location" not in head.lower()


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /a\rSet-Cookie: x=1 HTTP/1.1\r\nHost: www.example.test\r\n\r\n",
        b"GET /a\rSet-Cookie:x=1 HTTP/1.1\r\nHost: www.example.test\r\n\r\n",
        b"GET /a\nSet-Cookie:x=1 HTTP/1.1\r\nHost: www.example.test\r\n\r\n",
        b"GET /a\x00b HTTP/1.1\r\nHost: www.example.test\r\n\r\n",
        b"GET /a\x1bb HTTP/1.1\r\nHost: www.example.test\r\n\r\n",
        b"GET /a\x7fb HTTP/1.1\r\nHost: www.example.test\r\n\r\n",
        b"GET /a\tb HTTP/1.1\r\nHost: www.example.test\r\n\r\n",
        b"GET /a\xc3\xa9 HTTP/1.1\r\nHost: www.example.test\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: www.example.test\r\nX-A: a\rSet-Cookie: x=1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: www.example.test\r\n Set-Cookie: x=1\r\n\r\n",  # obs-fold
        b"GET / HTTP/1.1\r\nHost : www.example.test\r\n\r\n",
    ],
    ids=lambda raw: repr(raw[:30]),
)
async def test_control_characters_are_refused_and_nothing_is_injected(
    router: ReferenceRouter, request_bytes: bytes
) -> None:
    status, head = response_head(await http_exchange(router.http_port, request_bytes))
    assert status == 400
    assert "set-cookie" not in head.lower()
    assert "location" not in head.lower()
    assert re.fullmatch(r"[\x20-\x7e\r\n]*", head)
    assert "\r" not in head.replace("\r\n", "") and "\n" not in head.replace("\r\n", "")


# -- framing: Content-Length, Transfer-Encoding, sizes ---------------------------------


async def page(router: ReferenceRouter, request: bytes) -> bytes:
    """``request`` over HTTPS to the router's own page; the whole answer."""
    return await http_exchange(router.https_port, request, ssl_context=client_context(), sni=KNOWN)


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        ("Content-Length: -1\r\n", 400),
        ("Content-Length: abc\r\n", 400),
        ("Content-Length: +5\r\n", 400),
        ("Content-Length: 1 2\r\n", 400),
        ("Content-Length: 0x10\r\n", 400),
        ("Content-Length: \u0663\r\n", 400),  # an Arabic-Indic digit: str.isdigit() says yes
        ("Content-Length: 5\r\nContent-Length: 6\r\n", 400),
        ("Content-Length: 5, 6\r\n", 400),
        ("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", 400),
        ("Transfer-Encoding: gzip\r\n", 400),
        ("Transfer-Encoding: chunked\r\n", 411),
        (f"Content-Length: {'9' * 5000}\r\n", 413),
        (f"Content-Length: {150 * MiB}\r\n", 413),
    ],
    ids=lambda value: repr(value)[:40],
)
async def test_bad_framing_is_refused_and_the_router_keeps_serving(
    router: ReferenceRouter, fields: str, status: int
) -> None:
    request = f"POST /form HTTP/1.1\r\nHost: {KNOWN}\r\n{fields}\r\n".encode()
    answer = await page(router, request)  # no body sent: a refusal must not wait for one
    assert response_head(answer)[0] == status
    assert b"\r\nConnection: close\r\n" in answer
    assert response_head(await page(router, get(extra=CLOSE)))[0] == 200
    assert response_head(await http_exchange(router.http_port, get()))[0] == 308


async def test_bodies_are_read_in_chunks_and_keep_alive_stays_in_sync(
    router: ReferenceRouter,
) -> None:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", router.https_port, ssl=client_context(), server_hostname=KNOWN
    )
    try:
        body = os.urandom(MiB)  # exactly the limit, several chunks
        writer.write(
            f"POST /a HTTP/1.1\r\nHost: {KNOWN}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
            + get("/b")
        )
        await writer.drain()
        first, second = await read_response(reader), await read_response(reader)
        assert (first[0], first[2]) == (200, f"certbroker reference router: {KNOWN}/a\n".encode())
        assert (second[0], second[2]) == (200, f"certbroker reference router: {KNOWN}/b\n".encode())
    finally:
        writer.close()


async def test_a_body_over_the_limit_gets_413_before_it_is_sent(router: ReferenceRouter) -> None:
    """150 MiB announced: the answer comes at once, nothing of the body is read or held."""
    for port, context in ((router.https_port, client_context()), (router.http_port, None)):
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname=KNOWN if context else None
        )
        try:
            length = f"Content-Length: {150 * MiB}\r\n"
            writer.write(f"PUT /big HTTP/1.1\r\nHost: {KNOWN}\r\n{length}\r\n".encode())
            await writer.drain()
            status, headers, _ = await read_response(reader)
            assert (status, headers["connection"]) == (413, "close")
            assert await closed_by_peer(reader, 10)
        finally:
            writer.close()


@pytest.mark.parametrize(
    "extra",
    [
        "".join(f"X-H{i}: v\r\n" for i in range(101)),  # one field too many (Host is the 102nd)
        f"X-Big: {'a' * 17000}\r\n",
    ],
    ids=["too-many-fields", "too-large"],
)
async def test_header_limits_give_431(router: ReferenceRouter, extra: str) -> None:
    for answer in (
        await http_exchange(router.http_port, get(extra=extra)),
        await page(router, get(extra=extra)),
    ):
        assert response_head(answer)[0] == 431


# -- timeouts and the connection cap, every mode ---------------------------------------


async def test_silent_and_slow_clients_are_disconnected() -> None:
    async with running(http01_forward=None, limits=SHORT) as router:
        tls = client_context()
        # Port 80: nothing sent; a head that never ends.
        for sent in (b"", b"GET / HTTP/1.1\r\nHost: www.exa"):
            reader, writer = await asyncio.open_connection("127.0.0.1", router.http_port)
            writer.write(sent)
            assert await closed_by_peer(reader, 10), sent
            writer.close()
        # HTTPS: no ClientHello at all.
        reader, writer = await asyncio.open_connection("127.0.0.1", router.https_port)
        assert await closed_by_peer(reader, 10)
        writer.close()
        # HTTPS keep-alive: one request answered, then silence.
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", router.https_port, ssl=tls, server_hostname=KNOWN
        )
        writer.write(get())
        assert (await read_response(reader))[0] == 200
        assert await closed_by_peer(reader, 10)
        writer.close()
        await wait_until(lambda: router.open_connections == 0, 10, "every connection to end")


async def test_the_connection_cap_refuses_new_connections_and_keeps_the_open_ones() -> None:
    async with running(http01_forward=None, limits=Limits(max_connections=3)) as router:
        held = [await asyncio.open_connection("127.0.0.1", router.http_port) for _ in range(2)]
        held.append(
            await asyncio.open_connection(
                "127.0.0.1", router.https_port, ssl=client_context(), server_hostname=KNOWN
            )
        )
        await wait_until(lambda: router.open_connections == 3, 10, "three open connections")
        for port in (router.http_port, router.https_port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert await closed_by_peer(reader, 10)
            writer.close()
        assert router.refused_connections == 2

        tls_reader, tls_writer = held[2]  # the open ones still work
        tls_writer.write(get())
        assert (await read_response(tls_reader))[0] == 200
        reader, writer = held[0]
        writer.write(get())
        assert response_head(await asyncio.wait_for(reader.read(-1), 10))[0] == 308
        writer.close()
        await wait_until(lambda: router.open_connections == 2, 10, "a free slot")
        assert response_head(await http_exchange(router.http_port, get()))[0] == 308
        for _, writer in held[1:]:
            writer.close()


async def test_proxy_mode_closes_idle_connections_on_both_sides() -> None:
    async with (
        Upstream(hold).serving() as upstream,
        running(upstream=("127.0.0.1", upstream.port), limits=SHORT) as router,
    ):
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", router.https_port, ssl=client_context(), server_hostname=KNOWN
        )
        assert await closed_by_peer(reader, 10)
        writer.close()
        await wait_until(lambda: upstream.ended == 1, 10, "the upstream connection to close")
        await wait_until(lambda: router.open_connections == 0, 10, "the client connection to end")


async def test_proxy_mode_traffic_keeps_a_connection_alive() -> None:
    """Bytes moving reset the idle timer: 3 s of steady echoes through a 1.5 s idle timeout."""
    limits = Limits(idle_timeout=1.5)
    async with (
        Upstream(echo).serving() as upstream,
        running(upstream=("127.0.0.1", upstream.port), limits=limits) as router,
    ):
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", router.https_port, ssl=client_context(), server_hostname=KNOWN
        )
        try:
            for index in range(30):
                writer.write(b"%d;" % index)
                await writer.drain()
                assert await asyncio.wait_for(reader.readuntil(b";"), 10) == b"%d;" % index
                await asyncio.sleep(0.1)
        finally:
            writer.close()


async def test_proxy_mode_connection_cap() -> None:
    async with (
        Upstream(echo).serving() as upstream,
        running(upstream=("127.0.0.1", upstream.port), limits=Limits(max_connections=2)) as router,
    ):
        held = [
            await asyncio.open_connection(
                "127.0.0.1", router.https_port, ssl=client_context(), server_hostname=KNOWN
            )
            for _ in range(2)
        ]
        await wait_until(lambda: router.open_connections == 2, 10, "two proxied connections")
        reader, writer = await asyncio.open_connection("127.0.0.1", router.https_port)
        assert await closed_by_peer(reader, 10)
        writer.close()
        for reader, writer in held:
            writer.write(b"still here;")
            assert await asyncio.wait_for(reader.readuntil(b";"), 10) == b"still here;"
            writer.close()


def rss() -> int:
    """This process's resident set size in bytes (the router runs in it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_proxy_mode_streams_150_mib_with_back_pressure() -> None:
    """A stalled upstream stops the router reading: it holds chunks, not the body."""
    release = asyncio.Event()
    digest = hashlib.sha256()
    count = 0

    async def slow_then_drain(
        up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        nonlocal count
        await release.wait()
        while data := await reader.read(1 << 20):
            digest.update(data)
            count += len(data)

    total, chunk = 150 * MiB, os.urandom(MiB)
    async with (
        Upstream(slow_then_drain).serving() as upstream,
        running(upstream=("127.0.0.1", upstream.port), limits=Limits(idle_timeout=30)) as router,
    ):
        _, writer = await asyncio.open_connection(
            "127.0.0.1", router.https_port, ssl=client_context(), server_hostname=KNOWN
        )
        before = rss()
        sent, expected = 0, hashlib.sha256()
        try:
            while sent < total:  # until the client cannot write any more
                writer.write(chunk)
                expected.update(chunk)
                sent += len(chunk)
                try:
                    await asyncio.wait_for(writer.drain(), 1.0)
                except TimeoutError:
                    break
            taken = sent - writer.transport.get_write_buffer_size()
            grown = rss() - before
            # Kernel socket buffers on loopback hold a few MiB each way; without
            # back-pressure the router takes (and holds) all 150 MiB here.
            assert taken < 48 * MiB, f"router accepted {taken / MiB:.0f} MiB from a stalled path"
            assert grown < 64 * MiB, f"RSS grew {grown / MiB:.0f} MiB"

            release.set()
            while sent < total:
                writer.write(chunk)
                expected.update(chunk)
                sent += len(chunk)
                await asyncio.wait_for(writer.drain(), 30)
            await wait_until(lambda: count == total, 60, "the upstream to get every byte")
            assert digest.hexdigest() == expected.hexdigest()
        finally:
            writer.close()


# -- challenge forwarding -------------------------------------------------------------


async def test_challenges_are_forwarded_with_the_validated_host_and_bounded() -> None:
    async def answer(
        up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        up.received.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\ntoken")
        await writer.drain()

    async def silent(
        up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        up.received.append(await reader.readuntil(b"\r\n\r\n"))
        await reader.read()

    challenge = "/.well-known/acme-challenge/tok"
    async with (
        Upstream(answer).serving() as responder,
        running(http01_forward=("127.0.0.1", responder.port), limits=SHORT) as router,
    ):
        # A name being validated has no certificate yet: forwarded all the same.
        answer_bytes = await http_exchange(router.http_port, get(challenge, "New.Example.Test"))
        assert answer_bytes.endswith(b"\r\n\r\ntoken")
        assert responder.received == [
            f"GET {challenge} HTTP/1.1\r\nHost: new.example.test\r\n"
            "Connection: close\r\n\r\n".encode()
        ]
        refused = await http_exchange(router.http_port, get(challenge, "new.example\rX: y"))
        assert response_head(refused)[0] == 400
        assert len(responder.received) == 1
    async with (
        Upstream(silent).serving() as responder,
        running(http01_forward=("127.0.0.1", responder.port), limits=SHORT) as router,
    ):
        late = await http_exchange(router.http_port, get(challenge, KNOWN))
        assert response_head(late)[0] == 502
        assert len(responder.received) == 1
