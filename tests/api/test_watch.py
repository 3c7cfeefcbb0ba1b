"""WatchStatus against the real server: snapshot, resume, filters, compaction, slow readers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from certbroker.clock import FakeClock
from certbroker.v1 import broker_pb2, broker_pb2_grpc
from tests.broker import BrokerHandle, broker_settings, started_broker
from tests.pki import NOW, TestPKI
from tests.rpc import reason


async def _add(broker: BrokerHandle, name: str, app: str = "shop") -> int:
    reply = await broker.stub.IssueCertificate(
        broker_pb2.IssueCertificateRequest(domain=name, app=app, disable_letsencrypt=True)
    )
    return reply.domain.revision


async def _events(
    stream: AsyncIterator[broker_pb2.WatchStatusResponse], count: int, timeout: float = 5.0
) -> list[broker_pb2.WatchEvent]:
    """The next ``count`` events (heartbeats skipped), or fail at the deadline."""
    got: list[broker_pb2.WatchEvent] = []

    async def collect() -> None:
        async for response in stream:
            if response.HasField("event"):
                got.append(response.event)
                if len(got) == count:
                    return

    await asyncio.wait_for(collect(), timeout)
    return got


@pytest.fixture
def pki() -> TestPKI:
    return TestPKI("Watch")


async def test_resume_after_n_replays_exactly_the_later_events(tmp_path: Path) -> None:
    async with started_broker(
        broker_settings(tmp_path, heartbeat_interval=timedelta(seconds=0.2))
    ) as broker:
        revisions = [await _add(broker, f"d{i}.example.com") for i in range(5)]
        stream = broker.stub.WatchStatus(broker_pb2.WatchStatusRequest(after_revision=revisions[1]))
        events = await _events(stream, 3)
        assert [e.revision for e in events] == revisions[2:]
        assert [e.domain.domain for e in events] == [f"d{i}.example.com" for i in (2, 3, 4)]
        assert all(e.type == broker_pb2.EVENT_TYPE_DOMAIN_UPDATED for e in events)
        # nothing more, only heartbeats carrying the head revision
        response = await asyncio.wait_for(anext(aiter(stream)), 5)
        assert response.HasField("heartbeat")
        assert response.heartbeat.revision == revisions[-1]
        live = await _add(broker, "live.example.com")
        (event,) = await _events(stream, 1)
        assert event.revision == live
        stream.cancel()


async def test_snapshot_first_then_live_events(tmp_path: Path) -> None:
    async with started_broker(broker_settings(tmp_path)) as broker:
        for name in ("a.example.com", "b.example.com"):
            await _add(broker, name)
        head = await broker.running.store.current_revision()
        stream = broker.stub.WatchStatus(broker_pb2.WatchStatusRequest(after_revision=0))
        events = await _events(stream, 3)
        assert [e.type for e in events] == [
            broker_pb2.EVENT_TYPE_SNAPSHOT,
            broker_pb2.EVENT_TYPE_SNAPSHOT,
            broker_pb2.EVENT_TYPE_SNAPSHOT_COMPLETE,
        ]
        assert events[2].revision == head
        await broker.stub.RemoveDomain(broker_pb2.RemoveDomainRequest(domain="a.example.com"))
        (removed,) = await _events(stream, 1)
        assert removed.type == broker_pb2.EVENT_TYPE_DOMAIN_REMOVED
        assert removed.domain.domain == "a.example.com"
        assert removed.revision == head + 1
        stream.cancel()


async def test_filters_by_app_and_domain(tmp_path: Path) -> None:
    async with started_broker(broker_settings(tmp_path)) as broker:
        stream_app = broker.stub.WatchStatus(
            broker_pb2.WatchStatusRequest(after_revision=0, apps=["blog"])
        )
        stream_domain = broker.stub.WatchStatus(
            broker_pb2.WatchStatusRequest(after_revision=0, domains=["WWW.Shop.Example."])
        )
        assert [e.type for e in await _events(stream_app, 1)] == [
            broker_pb2.EVENT_TYPE_SNAPSHOT_COMPLETE
        ]
        await _events(stream_domain, 1)
        await _add(broker, "www.shop.example", app="shop")
        await _add(broker, "blog.example.com", app="blog")
        (only_blog,) = await _events(stream_app, 1)
        assert only_blog.domain.domain == "blog.example.com"
        (only_shop,) = await _events(stream_domain, 1)
        assert only_shop.domain.domain == "www.shop.example"
        stream_app.cancel()
        stream_domain.cancel()


async def test_bad_filter_domain_is_a_field_violation(tmp_path: Path) -> None:
    async with started_broker(broker_settings(tmp_path)) as broker:
        stream = broker.stub.WatchStatus(
            broker_pb2.WatchStatusRequest(domains=["ok.example", "bad..x"])
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _events(stream, 1)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_compacted_revision_ends_with_out_of_range(tmp_path: Path) -> None:
    clock = FakeClock(NOW)
    settings = broker_settings(tmp_path, event_retention=timedelta(days=7))
    async with started_broker(settings, clock) as broker:
        first = await _add(broker, "old.example.com")
        await _add(broker, "older.example.com")
        last_old = await _add(broker, "oldest.example.com")
        clock.advance(timedelta(days=8))
        # The broker's compactor runs on the same clock: it drops all but the newest event.
        deadline = time.monotonic() + 30  # a poll with a deadline, generous for loaded CI
        while await broker.running.store.compacted_through() < first + 1:
            assert time.monotonic() < deadline, "the compactor did not run"
            await asyncio.sleep(0.02)
        stream = broker.stub.WatchStatus(broker_pb2.WatchStatusRequest(after_revision=first))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _events(stream, 1)
        assert caught.value.code() == grpc.StatusCode.OUT_OF_RANGE
        assert reason(caught.value) == "REVISION_COMPACTED"
        # resuming from the compaction point itself is still exact
        ok = broker.stub.WatchStatus(broker_pb2.WatchStatusRequest(after_revision=first + 1))
        await _add(broker, "new.example.com")
        events = await _events(ok, 2)
        assert [e.revision for e in events] == [last_old, last_old + 1]
        assert events[1].domain.domain == "new.example.com"
        ok.cancel()


async def test_stalled_reader_is_cut_off_without_delaying_others(
    tmp_path: Path, pki: TestPKI
) -> None:
    trust = tmp_path / "trust.pem"
    trust.write_bytes(pki.root.pem)
    settings = broker_settings(
        tmp_path,
        trust_bundle=str(trust),
        watch_send_timeout=timedelta(seconds=1),
        watch_buffer=100_000,
    )
    async with started_broker(settings, FakeClock(NOW)) as broker:
        name = "busy.example.com"
        await broker.stub.IssueCertificate(broker_pb2.IssueCertificateRequest(domain=name, app="a"))
        leaf = pki.leaf(name)
        await broker.stub.UploadCustom(
            broker_pb2.UploadCustomRequest(
                domain=name, certificate=pki.bundle(leaf), private_key=leaf.key_pem()
            )
        )
        start = await broker.running.store.current_revision()
        # A separate channel whose stream is never read; without BDP probing its receive
        # window stays at 64 KiB, so the broker's writes to it block once that is full.
        options = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 65536)]
        async with grpc.aio.insecure_channel(broker.address, options=options) as stalled_channel:
            stalled = broker_pb2_grpc.CertificateBrokerServiceStub(stalled_channel).WatchStatus(
                broker_pb2.WatchStatusRequest(after_revision=start)
            )
            await stalled.wait_for_connection()
            healthy = broker.stub.WatchStatus(broker_pb2.WatchStatusRequest(after_revision=start))
            # Each event carries the ~2 KB chain: 400 of them overflow the 64 KiB window.
            for _ in range(200):
                for disabled in (False, True):
                    await broker.stub.IssueCertificate(
                        broker_pb2.IssueCertificateRequest(
                            domain=name, app="a", disable_letsencrypt=disabled
                        )
                    )
            head = await broker.running.store.current_revision()
            # The healthy stream gets everything while the stalled one still holds its
            # events (a stalled stream that blocked the others would hold them for good).
            events = await _events(healthy, head - start, timeout=30)
            assert events[-1].revision == head
            # The broker ends the stalled stream on its own: wait for that before reading it,
            # since reading opens its window and would un-stall it.
            deadline = time.monotonic() + 30
            while broker.running.servicer.watchers > 1:
                assert time.monotonic() < deadline, "the stalled stream was never cut off"
                await asyncio.sleep(0.05)
            # It was told where to resume.
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for _ in stalled:
                    assert time.monotonic() < deadline
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert reason(caught.value) == "WATCHER_TOO_SLOW"
            assert "after_revision=" in (caught.value.details() or "")
            healthy.cancel()
