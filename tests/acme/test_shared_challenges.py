"""Any broker answers any HTTP-01 challenge: published through the store, read through on a miss.

Two brokers' pieces on one PostgreSQL database (two stores, two real responders
on loopback): what one publishes, the other's responder serves over HTTP; what
is withdrawn stops being served; the cache keeps a burst of requests to one
query, and scanners' paths never reach the database.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

import pytest

from certbroker.acme.http01 import Http01Responder
from certbroker.acme.shared_challenges import SharedChallenges
from certbroker.clock import SystemClock
from certbroker.errors import StoreUnavailable
from certbroker.store.postgres import PostgresStore

TOKEN = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"
KEYAUTH = TOKEN + ".9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI"
UNKNOWN = "Zm9yZ290dGVuLXRva2VuLW5vYm9keS1wdWJsaXNoZWQ"


@dataclass
class Broker:
    store: PostgresStore
    responder: Http01Responder
    shared: SharedChallenges


@pytest.fixture
async def pair(postgres_dsn: str) -> AsyncIterator[tuple[Broker, Broker]]:
    made: list[Broker] = []
    try:
        for owner in ("one", "two"):
            store = await PostgresStore.open(postgres_dsn, poll_interval=60)
            responder = Http01Responder()
            shared = SharedChallenges(
                store, SystemClock(), responder, owner, positive_ttl=0.2, negative_ttl=0.2
            )
            responder.lookup = shared.lookup
            await responder.start("127.0.0.1", 0)
            made.append(Broker(store, responder, shared))
        yield made[0], made[1]
    finally:
        for broker in made:
            await broker.responder.stop()
            await broker.store.close()


async def fetch(port: int, token: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            f"GET /.well-known/acme-challenge/{token} HTTP/1.1\r\nHost: a.example\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


async def eventually_status(port: int, token: str, status: int) -> None:
    async with asyncio.timeout(5):
        while (await fetch(port, token))[0] != status:
            await asyncio.sleep(0.05)


async def test_an_answer_published_on_one_broker_is_served_by_the_other(
    pair: tuple[Broker, Broker],
) -> None:
    one, two = pair
    await one.shared.publish(TOKEN, KEYAUTH)
    # publish returned: the store has it, so the other broker serves it at once
    assert await fetch(two.responder.port, TOKEN) == (200, KEYAUTH.encode())
    assert await fetch(one.responder.port, TOKEN) == (200, KEYAUTH.encode())
    assert one.shared.queries == 0  # the publisher answers from memory
    await one.shared.unpublish(TOKEN)
    assert await fetch(one.responder.port, TOKEN) == (404, b"")
    await eventually_status(two.responder.port, TOKEN, 404)  # once the cached answer ages out


async def test_an_answer_shared_by_two_orders_stays_until_the_last_withdraws(
    pair: tuple[Broker, Broker],
) -> None:
    one, two = pair
    await one.shared.publish(TOKEN, KEYAUTH)
    await one.shared.publish(TOKEN, KEYAUTH)  # two orders sharing one authorization
    await one.shared.unpublish(TOKEN)
    assert await two.store.get_challenge(TOKEN, SystemClock().now()) == KEYAUTH
    await one.shared.unpublish(TOKEN)
    assert await two.store.get_challenge(TOKEN, SystemClock().now()) is None


async def test_a_burst_for_one_token_costs_one_query_and_junk_costs_none(
    pair: tuple[Broker, Broker],
) -> None:
    one, two = pair
    await one.shared.publish(TOKEN, KEYAUTH)
    answers = await asyncio.gather(*(fetch(two.responder.port, TOKEN) for _ in range(20)))
    assert set(answers) == {(200, KEYAUTH.encode())}
    assert two.shared.queries == 1
    misses = await asyncio.gather(*(fetch(two.responder.port, UNKNOWN) for _ in range(10)))
    assert {status for status, _ in misses} == {404}
    assert two.shared.queries == 2  # the miss is cached too
    for junk in ("short", "../../etc/passwd", "a" * 200, "has.dot.in.it.and.is.long.enough"):
        assert (await fetch(two.responder.port, junk))[0] == 404
    assert two.shared.queries == 2


class FailingStore:
    """A store that cannot be reached: publishing fails, lookups fail."""

    async def put_challenge(self, *args: object) -> None:
        raise StoreUnavailable("down", reason="STORE_UNAVAILABLE", retry_after=timedelta(1))

    async def get_challenge(self, *args: object) -> str | None:
        raise StoreUnavailable("down", reason="STORE_UNAVAILABLE", retry_after=timedelta(1))


async def test_an_unreachable_store_fails_the_publication_and_answers_404() -> None:
    responder = Http01Responder()
    shared = SharedChallenges(FailingStore(), SystemClock(), responder, "one")  # type: ignore[arg-type]
    responder.lookup = shared.lookup
    await responder.start("127.0.0.1", 0)
    try:
        with pytest.raises(StoreUnavailable):
            await shared.publish(TOKEN, KEYAUTH)
        assert responder.get(TOKEN) is None  # not half-published
        assert await fetch(responder.port, UNKNOWN) == (404, b"")
        assert await fetch(responder.port, UNKNOWN) == (404, b"")
        assert shared.queries == 2  # a failure is not cached: the next request asks again
    finally:
        await responder.stop()
