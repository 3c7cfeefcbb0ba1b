"""WatchStatus snapshots at scale: a page at a time, the same content, shared pages bounded.

A real broker over mTLS (a router that gets keys, an api client that does not),
real SQLite; the snapshot page is made small so a few dozen domains cross many
page boundaries.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import grpc
import pytest

from certbroker.api import convert, servicer
from certbroker.clock import FakeClock
from certbroker.v1 import broker_pb2, broker_pb2_grpc
from tests.broker import BrokerHandle, broker_settings, started_broker
from tests.pki import NOW, TestPKI
from tests.tls import Identity, MtlsFiles

PKI = TestPKI("Snapshot")
COUNT = 30  # domains; every third serves nothing, the rest a custom certificate


def _name(index: int) -> str:
    return f"s{index:02d}.shop.example"


def _app(index: int) -> str:
    return "blog" if index % 4 == 0 else "shop"


@dataclass
class Env:
    broker: BrokerHandle
    router: broker_pb2_grpc.CertificateBrokerServiceStub  # the router role: keys
    api: broker_pb2_grpc.CertificateBrokerServiceStub  # the api role: no keys


def _channel(port: int, mtls: MtlsFiles, who: Identity) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        mtls.ca.read_bytes(), who.key.read_bytes(), who.cert.read_bytes()
    )
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials)


@pytest.fixture(scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    tmp = tmp_path_factory.mktemp("snapshot")
    mtls = MtlsFiles(tmp / "tls")
    server_id, router_id, api_id = (
        mtls.issue("broker", server=True),
        mtls.issue("router-1"),
        mtls.issue("api-1"),
    )
    trust = tmp / "trust.pem"
    trust.write_bytes(PKI.root.pem)
    settings = broker_settings(
        tmp,
        trust_bundle=str(trust),
        tls_cert=str(server_id.cert),
        tls_key=str(server_id.key),
        tls_client_ca=str(mtls.ca),
        roles={"router-1": "router", "api-1": "api"},
    )
    async with started_broker(settings, FakeClock(NOW)) as broker:
        port = broker.running.port
        router_channel = _channel(port, mtls, router_id)
        api_channel = _channel(port, mtls, api_id)
        api = broker_pb2_grpc.CertificateBrokerServiceStub(api_channel)
        for index in range(COUNT):
            name, app = _name(index), _app(index)
            await api.IssueCertificate(
                broker_pb2.IssueCertificateRequest(domain=name, app=app, disable_letsencrypt=True)
            )
            if index % 3:
                leaf = PKI.leaf(name)
                await api.UploadCustom(
                    broker_pb2.UploadCustomRequest(
                        domain=name,
                        app=app,
                        certificate=PKI.bundle(leaf),
                        private_key=leaf.key_pem(),
                    )
                )
        try:
            yield Env(broker, broker_pb2_grpc.CertificateBrokerServiceStub(router_channel), api)
        finally:
            await router_channel.close()
            await api_channel.close()


@pytest.fixture(params=[4, 5], ids=["page4", "page5"])
def page(env: Env, request: pytest.FixtureRequest) -> Iterator[int]:
    """A small snapshot page: 30 domains end mid-page (4) or on a boundary (5).

    The pages an earlier test's streams left for sharing are dropped first.
    """
    pages = env.broker.running.servicer._pages
    for shared in pages.values():
        shared.release()
    pages.clear()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(servicer, "_SNAPSHOT_PAGE", request.param)
        yield request.param


async def _responses(
    stub: broker_pb2_grpc.CertificateBrokerServiceStub, request: broker_pb2.WatchStatusRequest
) -> list[broker_pb2.WatchStatusResponse]:
    """The responses up to and including SNAPSHOT_COMPLETE."""
    stream = stub.WatchStatus(request)
    out = []

    async def collect() -> None:
        async for response in stream:
            out.append(response)
            if response.event.type == broker_pb2.EVENT_TYPE_SNAPSHOT_COMPLETE:
                return
        raise AssertionError("the stream ended before SNAPSHOT_COMPLETE")

    try:
        await asyncio.wait_for(collect(), 30)
    finally:
        stream.cancel()
    return out


async def _snapshot(
    stub: broker_pb2_grpc.CertificateBrokerServiceStub, request: broker_pb2.WatchStatusRequest
) -> tuple[list[broker_pb2.WatchEvent], broker_pb2.WatchEvent]:
    """The snapshot events (batches unpacked) and the SNAPSHOT_COMPLETE that ends them."""
    responses = await _responses(stub, request)
    events = []
    for response in responses[:-1]:
        if response.HasField("snapshot_batch"):
            events.extend(response.snapshot_batch.events)
        elif response.HasField("event"):
            events.append(response.event)
    return events, responses[-1].event


async def _expected(env: Env, keys: bool, apps: frozenset[str] = frozenset()) -> list[object]:
    """What the snapshot sent before it was paged: each domain read, converted and keyed alone."""
    running = env.broker.running
    now = FakeClock(NOW).now()
    out = []
    for index in range(COUNT):
        if apps and _app(index) not in apps:
            continue
        record = await running.store.get_domain(_name(index))
        assert record is not None
        event = broker_pb2.WatchEvent(
            revision=record.revision,
            type=broker_pb2.EVENT_TYPE_SNAPSHOT,
            domain=convert.domain(record, now),
        )
        material = await running.broker.serving_material(record) if keys else None
        if material is not None:
            event.serving.CopyFrom(convert.material(material))
        out.append(event)
    return out


async def test_a_snapshot_with_keys_sends_what_the_per_domain_path_sent(
    env: Env, page: int
) -> None:
    events, complete = await _snapshot(env.router, broker_pb2.WatchStatusRequest(include_keys=True))
    assert events == await _expected(env, keys=True)
    assert sum(e.HasField("serving") for e in events) == 20
    assert all("PRIVATE KEY" in e.serving.private_key_pem for e in events if e.HasField("serving"))
    assert complete.revision == await env.broker.running.store.current_revision()


async def test_a_filtered_snapshot_sends_its_apps_domains_with_keys(env: Env, page: int) -> None:
    request = broker_pb2.WatchStatusRequest(include_keys=True, apps=["blog"])
    events, complete = await _snapshot(env.router, request)
    assert events == await _expected(env, keys=True, apps=frozenset({"blog"}))
    assert complete.revision == await env.broker.running.store.current_revision()


async def test_a_snapshot_with_keys_reads_the_store_a_page_at_a_time(env: Env, page: int) -> None:
    reader = env.broker.running.store._reader
    statements: list[str] = []
    await reader.set_trace_callback(statements.append)
    try:
        events, _ = await _snapshot(env.router, broker_pb2.WatchStatusRequest(include_keys=True))
    finally:
        await reader.set_trace_callback(None)
    assert len(events) == COUNT
    pages = COUNT // page + 1  # the last page is short (or empty)
    # per page: its rows, their certificates not cached, and the keys (one query each),
    # where one query per domain and per key would be over 2 * COUNT
    assert len(statements) <= 3 * pages
    assert sum("key_sealed" in s for s in statements) <= pages


async def test_keyless_streams_share_pages_and_never_get_keys(env: Env, page: int) -> None:
    running = env.broker.running
    # a router's snapshot first: its pages (with keys) are kept for other routers
    keyed, _ = await _snapshot(env.router, broker_pb2.WatchStatusRequest(include_keys=True))
    assert any(e.HasField("serving") for e in keyed)
    reader = running.store._reader
    statements: list[str] = []
    await reader.set_trace_callback(statements.append)
    try:
        first, first_complete = await _snapshot(env.api, broker_pb2.WatchStatusRequest())
        second, second_complete = await _snapshot(env.api, broker_pb2.WatchStatusRequest())
    finally:
        await reader.set_trace_callback(None)
    assert first == second == await _expected(env, keys=False)
    assert not any(e.HasField("serving") for e in first)
    assert first_complete.revision == second_complete.revision
    # the second stream sent the first one's pages: the store was read for one snapshot
    pages = COUNT // page + 1
    assert sum("FROM domains" in s for s in statements) == pages
    assert not any("key_sealed" in s for s in statements)


def _live_pages() -> list[object]:
    gc.collect()
    return [o for o in gc.get_objects() if isinstance(o, servicer._Page)]


async def test_shared_pages_are_bounded_whatever_the_number_of_domains(env: Env) -> None:
    earlier = _live_pages()  # other tests' pages, held here so no new one takes their id
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(servicer, "_SNAPSHOT_PAGE", 2)  # 16 pages, more than are kept
        events, _ = await _snapshot(env.api, broker_pb2.WatchStatusRequest())
    assert len(events) == COUNT
    assert len(env.broker.running.servicer._pages) <= servicer._SHARED_PAGES
    # and the pages let go are gone from memory, not kept alive until their expiry
    known = {id(page) for page in earlier}
    assert sum(id(page) not in known for page in _live_pages()) <= servicer._SHARED_PAGES


async def test_a_batched_snapshot_sends_the_same_events_in_few_messages(
    env: Env, page: int
) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(servicer, "_BATCH_BYTES", 8000)  # a few events a batch
        responses = await _responses(
            env.router, broker_pb2.WatchStatusRequest(include_keys=True, batch_snapshot=True)
        )
    *batches, complete = responses
    assert all(r.WhichOneof("kind") == "snapshot_batch" for r in batches)
    assert complete.event.type == broker_pb2.EVENT_TYPE_SNAPSHOT_COMPLETE  # alone, as before
    events = [e for r in batches for e in r.snapshot_batch.events]
    assert events == await _expected(env, keys=True)
    assert len(batches) < len(events)
    largest = max(e.ByteSize() for e in events)
    assert all(r.snapshot_batch.ByteSize() < 8000 + largest for r in batches)
    # a stream that did not ask gets single events, although the batched pages are kept
    singles = await _responses(env.router, broker_pb2.WatchStatusRequest(include_keys=True))
    assert [r.event for r in singles[:-1]] == events


async def _statements(env: Env, request: broker_pb2.WatchStatusRequest) -> list[str]:
    reader = env.broker.running.store._reader
    statements: list[str] = []
    await reader.set_trace_callback(statements.append)
    try:
        await _snapshot(env.router, request)
    finally:
        await reader.set_trace_callback(None)
    return statements


async def test_a_snapshot_filtered_by_name_reads_only_those_names(env: Env, page: int) -> None:
    names = [_name(1), _name(2), "unknown.shop.example"]
    request = broker_pb2.WatchStatusRequest(include_keys=True, domains=names)
    events, _ = await _snapshot(env.router, request)
    assert events == [e for e in await _expected(env, keys=True) if e.domain.domain in names]
    statements = await _statements(env, request)
    assert not any("name > " in s for s in statements)  # no scan of every domain
    assert len(statements) <= 2 * len(names) + 1  # the names (not cached here), their keys


async def test_a_snapshot_filtered_by_app_reads_only_that_apps_domains(env: Env, page: int) -> None:
    statements = await _statements(
        env, broker_pb2.WatchStatusRequest(include_keys=True, apps=["blog"])
    )
    pages = 8 // page + 1  # blog has 8 of the 30 domains
    rows = [s for s in statements if "FROM domains" in s]
    assert len(rows) == pages
    assert all("app = 'blog'" in s for s in rows)
    assert len(statements) <= 3 * pages


async def test_shared_pages_are_dropped_soon_after(env: Env) -> None:
    pages = env.broker.running.servicer._pages
    with pytest.MonkeyPatch.context() as patch:
        # 2 s, not less: a loaded CI machine once took over 50 ms from the snapshot's
        # last page to the check below, and the pages were already gone.
        patch.setattr(servicer, "_PAGE_KEEP", 2.0)
        await _snapshot(env.router, broker_pb2.WatchStatusRequest(include_keys=True))
        assert pages  # kept a moment for other routers
        deadline = asyncio.get_running_loop().time() + 15
        while pages:  # then gone, with the decrypted keys in them
            assert asyncio.get_running_loop().time() < deadline, "shared pages stayed"
            await asyncio.sleep(0.02)
