"""``BrokerClient.watch()`` resume rules, against a scripted fake broker.

Each test scripts the broker's streams and checks two things: what the
consumer saw, and which ``after_revision`` the client asked for on each
reconnect (the heart of "nothing lost, nothing repeated").
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import grpc
import pytest

from certbroker.v1 import broker_pb2
from certbroker_client import BrokerClient, BrokerError
from tests.client.fake import (
    FakeBroker,
    FakeServer,
    abort,
    batch,
    event,
    hang,
    heartbeat,
    rich_status,
)

SNAP = broker_pb2.EVENT_TYPE_SNAPSHOT
DONE = broker_pb2.EVENT_TYPE_SNAPSHOT_COMPLETE
UPD = broker_pb2.EVENT_TYPE_DOMAIN_UPDATED


async def collect(client: BrokerClient, n: int, after: int = 0, **kw: Any) -> list[int]:
    """Revisions of the first ``n`` events, with a deadline so a bug fails fast."""
    out: list[int] = []

    async def run() -> None:
        async for ev in client.watch(after, max_backoff=0.2, **kw):
            out.append(ev.revision)
            if len(out) >= n:
                return

    await asyncio.wait_for(run(), 10)
    return out


@pytest.fixture
async def fake() -> AsyncIterator[FakeServer]:
    server = FakeServer(FakeBroker())
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def client(fake: FakeServer) -> AsyncIterator[BrokerClient]:
    async with BrokerClient.connect(fake.addr, timeout=5) as c:
        yield c


def after_revisions(fake: FakeServer) -> list[int]:
    return [r.after_revision for r in fake.broker.watch_requests]


async def test_resumes_from_last_event_after_unavailable(
    fake: FakeServer, client: BrokerClient
) -> None:
    async def first(req: Any, ctx: Any) -> AsyncIterator[Any]:
        yield event(5, SNAP, "a.example.com")
        yield event(3, SNAP, "b.example.com")
        yield event(7, DONE)
        yield event(8, UPD, "a.example.com")
        await abort(ctx, rich_status(grpc.StatusCode.UNAVAILABLE, "going away"))

    async def second(req: Any, ctx: Any) -> AsyncIterator[Any]:
        yield heartbeat(10)
        yield event(11, UPD, "b.example.com")
        await hang()

    fake.broker.scripts += [first, second]
    assert await collect(client, 5) == [5, 3, 7, 8, 11]
    assert after_revisions(fake) == [0, 8]
    assert client.last_revision == 11


async def test_heartbeat_moves_resume_point(fake: FakeServer, client: BrokerClient) -> None:
    async def first(req: Any, ctx: Any) -> AsyncIterator[Any]:
        yield event(8, UPD, "a.example.com")
        yield heartbeat(12)
        await abort(ctx, rich_status(grpc.StatusCode.UNAVAILABLE, "bye"))

    async def second(req: Any, ctx: Any) -> AsyncIterator[Any]:
        yield event(13, UPD, "a.example.com")
        await hang()

    fake.broker.scripts += [first, second]
    assert await collect(client, 2, after=4) == [8, 13]
    assert after_revisions(fake) == [4, 12]


async def test_snapshot_cut_short_is_started_over(fake: FakeServer, client: BrokerClient) -> None:
    async def cut(req: Any, ctx: Any) -> AsyncIterator[Any]:
        yield event(5, SNAP, "a.example.com")
        yield heartbeat(9)  # must not count as progress mid-snapshot
        await abort(ctx, rich_status(grpc.StatusCode.UNAVAILABLE, "bye"))

    async def full(req: Any, ctx: Any) -> AsyncIterator[Any]:
        yield event(5, SNAP, "a.example.com")
        yield event(9, DONE)
        await hang()

    fake.broker.scripts += [cut, full]
    assert await collect(client, 3) == [5, 5, 9]
    assert after_revisions(fake) == [0, 0]
    assert client.last_revision == 9
    assert client.snapshot_streams == 2  # how a consumer tells the restart apart


async def test_compacted_revision_resnapshots(fake: FakeServer, client: BrokerClient) -> None:
    async def compacted(req: Any, ctx: Any) -> AsyncIterator[Any]:
        await abort(
            ctx,
            rich_status(
                grpc.StatusCode.OUT_OF_RANGE,
                "revision 4 is compacted",
                reason="REVISION_COMPACTED",
            ),
        )
        yield  # pragma: no cover - makes this an async generator

    async def snapshot(req: Any, ctx: Any) -> AsyncIterator[Any]:
        yield event(50, SNAP, "a.example.com")
        yield event(60, DONE)
        await hang()

    fake.broker.scripts += [compacted, snapshot]
    assert await collect(client, 2, after=4) == [50, 60]
    assert after_revisions(fake) == [4, 0]
    assert client.resnapshots == 1


@pytest.mark.parametrize("code", [grpc.StatusCode.ABORTED, grpc.StatusCode.RESOURCE_EXHAUSTED])
async def test_slow_consumer_status_resumes(
    fake: FakeServer, client: BrokerClient, code: grpc.StatusCode
) -> None:
    async def slow(req: Any, ctx: Any) -> AsyncIterator[Any]:
        yield event(9, UPD, "a.example.com")
        await abort(
            ctx, rich_status(code, "too slow, resume", retry_after=timedelta(milliseconds=50))
        )

    async def second(req: Any, ctx: Any) -> AsyncIterator[Any]:
        yield event(10, UPD, "a.example.com")
        await hang()

    fake.broker.scripts += [slow, second]
    assert await collect(client, 2, after=8) == [9, 10]
    assert after_revisions(fake) == [8, 9]


async def test_other_errors_are_raised(fake: FakeServer, client: BrokerClient) -> None:
    async def denied(req: Any, ctx: Any) -> AsyncIterator[Any]:
        await abort(
            ctx,
            rich_status(grpc.StatusCode.PERMISSION_DENIED, "keys are for routers", reason="ROLE"),
        )
        yield  # pragma: no cover

    fake.broker.scripts.append(denied)
    with pytest.raises(BrokerError) as info:
        await collect(client, 1, include_keys=True)
    assert info.value.code_name == "PERMISSION_DENIED"
    assert info.value.reason == "ROLE"
    assert len(fake.broker.watch_requests) == 1
    assert fake.broker.watch_requests[0].include_keys


async def test_survives_a_server_restart_on_the_same_port() -> None:
    """A real disconnect: the server goes away, comes back, the watch carries on."""
    fake = FakeServer(FakeBroker())
    await fake.start()
    stopped = asyncio.Event()

    async def first(req: Any, ctx: Any) -> AsyncIterator[Any]:
        yield event(8, UPD, "a.example.com")
        await hang()

    async def second(req: Any, ctx: Any) -> AsyncIterator[Any]:
        yield event(9, UPD, "a.example.com")
        await hang()

    fake.broker.scripts += [first, second]
    seen: list[int] = []
    try:
        async with BrokerClient.connect(fake.addr) as client:

            async def consume() -> None:
                async for ev in client.watch(7, max_backoff=0.2):
                    seen.append(ev.revision)
                    if ev.revision == 8:
                        stopped.set()
                    if len(seen) == 2:
                        return

            task = asyncio.create_task(consume())
            await asyncio.wait_for(stopped.wait(), 5)
            await fake.stop(grace=0)
            await asyncio.sleep(0.3)  # the client retries against a closed port meanwhile
            await fake.start()
            await asyncio.wait_for(task, 10)
    finally:
        await fake.stop()
    assert seen == [8, 9]
    assert after_revisions(fake)[-1] == 8


async def test_idle_timeout_reconnects(fake: FakeServer, client: BrokerClient) -> None:
    async def silent(req: Any, ctx: Any) -> AsyncIterator[Any]:
        yield event(3, UPD, "a.example.com")
        await hang()

    async def second(req: Any, ctx: Any) -> AsyncIterator[Any]:
        yield event(4, UPD, "a.example.com")
        await hang()

    fake.broker.scripts += [silent, second]
    assert await collect(client, 2, after=2, idle_timeout=0.3) == [3, 4]
    assert after_revisions(fake) == [2, 3]


async def test_filters_are_sent(fake: FakeServer, client: BrokerClient) -> None:
    async def one(req: Any, ctx: Any) -> AsyncIterator[Any]:
        yield event(3, UPD, "a.example.com")
        await hang()

    fake.broker.scripts.append(one)
    await collect(client, 1, after=2, apps=["shop"], domains=["a.example.com"])
    req = fake.broker.watch_requests[0]
    assert list(req.apps) == ["shop"]
    assert list(req.domains) == ["a.example.com"]
    assert not req.include_keys


async def test_a_batched_snapshot_is_yielded_event_by_event(
    fake: FakeServer, client: BrokerClient
) -> None:
    async def cut(req: Any, ctx: Any) -> AsyncIterator[Any]:
        yield batch(event(5, SNAP, "a.example.com"), event(7, SNAP, "b.example.com"))
        await abort(ctx, rich_status(grpc.StatusCode.UNAVAILABLE, "bye"))

    async def full(req: Any, ctx: Any) -> AsyncIterator[Any]:
        yield batch(event(5, SNAP, "a.example.com"), event(7, SNAP, "b.example.com"))
        yield batch(event(8, SNAP, "c.example.com"))
        yield event(9, DONE)
        yield event(10, UPD, "a.example.com")
        await hang()

    fake.broker.scripts += [cut, full]
    assert await collect(client, 7) == [5, 7, 5, 7, 8, 9, 10]
    # a batch is part of the snapshot: the cut one is started over, not resumed from 7
    assert after_revisions(fake) == [0, 0]
    assert all(r.batch_snapshot for r in fake.broker.watch_requests)
    assert client.last_revision == 10


async def test_batches_can_be_declined(fake: FakeServer, client: BrokerClient) -> None:
    async def single(req: Any, ctx: Any) -> AsyncIterator[Any]:
        yield event(5, SNAP, "a.example.com")  # what a broker older than batches sends
        yield event(6, DONE)
        await hang()

    fake.broker.scripts.append(single)
    assert await collect(client, 2, batch_snapshot=False) == [5, 6]
    assert not fake.broker.watch_requests[0].batch_snapshot
