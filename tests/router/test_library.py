"""The router library on its own: name matching, SNI switching, atomic swaps, and the
watch rules (resume, cut snapshots, compaction, outages) against a scripted broker.

The scripted broker (``tests.client.fake``) produces failures on cue; the real
broker and Pebble are in ``test_end_to_end.py``.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import tempfile
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from certbroker.v1 import broker_pb2
from certbroker_client.reference_router import ReferenceRouter, RouterConfig
from certbroker_client.router import (
    CertificateMap,
    MapChange,
    RouterWatcher,
    build_context,
    lookup_names,
)
from tests.client.fake import (
    FakeBroker,
    FakeServer,
    abort,
    batch,
    hang,
    heartbeat,
    rich_status,
)
from tests.pki import Issued, TestPKI
from tests.router.support import (
    fingerprint,
    refused,
    served,
    served_fingerprint,
    serving_event,
    wait_until,
)

PKI = TestPKI("Router")
SNAPSHOT = broker_pb2.EVENT_TYPE_SNAPSHOT
COMPLETE = broker_pb2.EVENT_TYPE_SNAPSHOT_COMPLETE
UPDATED = broker_pb2.EVENT_TYPE_DOMAIN_UPDATED
REMOVED = broker_pb2.EVENT_TYPE_DOMAIN_REMOVED


def leaf(*names: str) -> Issued:
    """A leaf valid around the real clock (handshakes here check nothing about time)."""
    now = datetime.now(UTC)
    return PKI.leaf(*names, not_before=now - timedelta(days=1), not_after=now + timedelta(days=30))


def put(certificates: CertificateMap, name: str, cert: Issued, revision: int = 1) -> None:
    event = serving_event(revision, UPDATED, name, cert, PKI).event
    certificates.put(certificates.build(name, event.serving, revision))


@pytest.mark.parametrize(
    ("server_name", "keys"),
    [
        ("a.example.test", ("a.example.test", "*.example.test")),
        ("A.Example.Test.", ("a.example.test", "*.example.test")),
        ("a.b.example.test", ("a.b.example.test", "*.b.example.test")),
        ("example.test", ("example.test",)),
        ("localhost", ("localhost",)),
        ("", ()),
    ],
)
def test_lookup_names_follow_rfc6125(server_name: str, keys: tuple[str, ...]) -> None:
    assert lookup_names(server_name) == keys


def test_exact_name_wins_over_wildcard() -> None:
    certificates = CertificateMap()
    put(certificates, "*.example.test", leaf("*.example.test"))
    put(certificates, "www.example.test", leaf("www.example.test"))
    www = certificates.lookup("www.example.test")
    other = certificates.lookup("other.example.test")
    assert www is not None and www.name == "www.example.test"
    assert other is not None and other.name == "*.example.test"
    assert certificates.lookup("a.b.example.test") is None
    assert certificates.lookup("example.test") is None


@pytest.fixture
async def router() -> AsyncIterator[ReferenceRouter]:
    certificates = CertificateMap()
    instance = ReferenceRouter(
        certificates, RouterConfig(https_listen=("127.0.0.1", 0), http_listen=None)
    )
    await instance.start()
    try:
        yield instance
    finally:
        await instance.stop()


async def test_handshakes_pick_the_certificate_by_sni(router: ReferenceRouter) -> None:
    exact, wildcard = leaf("www.example.test"), leaf("*.example.test")
    put(router.certificates, "www.example.test", exact)
    put(router.certificates, "*.example.test", wildcard)
    port = router.https_port
    trust = PKI.root.pem
    assert fingerprint(await served(port, "www.example.test", trust_pem=trust)) == fingerprint(
        exact.cert
    )
    assert fingerprint(await served(port, "a.example.test", trust_pem=trust)) == fingerprint(
        wildcard.cert
    )
    for name in ("a.b.example.test", "example.test", "unknown.test", None):
        assert "UNRECOGNIZED_NAME" in await refused(port, name)


async def test_unknown_names_get_the_default_certificate(tmp_path: Path) -> None:
    default = leaf("default.router.test")
    cert, key = tmp_path / "default.pem", tmp_path / "default.key"
    cert.write_bytes(PKI.bundle(default))
    key.write_bytes(default.key_pem())
    certificates = CertificateMap()
    put(certificates, "www.example.test", leaf("www.example.test"))
    router = ReferenceRouter(
        certificates,
        RouterConfig(
            https_listen=("127.0.0.1", 0), http_listen=None, default_cert=cert, default_key=key
        ),
    )
    await router.start()
    try:
        for name in ("unknown.test", None):
            assert await served_fingerprint_or_none(router.https_port, name) == fingerprint(
                default.cert
            )
        assert await served_fingerprint(router.https_port, "www.example.test") != fingerprint(
            default.cert
        )
    finally:
        await router.stop()


async def served_fingerprint_or_none(port: int, name: str | None) -> str:
    return fingerprint(await served(port, name))


async def test_swaps_never_leave_a_name_without_a_certificate(router: ReferenceRouter) -> None:
    """Handshakes in a tight loop while the entry is replaced 40 times: each sees old or new."""
    versions = [leaf("swap.example.test") for _ in range(3)]
    allowed = {fingerprint(v.cert) for v in versions}
    put(router.certificates, "swap.example.test", versions[0])
    stop = threading.Event()
    results: list[str] = []
    failures: list[BaseException] = []

    def hammer() -> None:
        from tests.router.support import handshake

        while not stop.is_set():
            try:
                results.append(fingerprint(handshake(router.https_port, "swap.example.test")))
            except (OSError, ssl.SSLError) as error:
                failures.append(error)

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        for index in range(40):
            put(router.certificates, "swap.example.test", versions[index % 3], index + 2)
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 10)
    assert not failures
    assert results and set(results) <= allowed


def test_keys_never_touch_the_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    cert = leaf("disk.example.test")

    def refuse(*_: Any, **__: Any) -> str:
        raise AssertionError("a temporary file was used")

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    build_context(PKI.bundle(cert).decode(), cert.key_pem().decode())


def test_without_memfd_the_files_are_private_and_removed(monkeypatch: pytest.MonkeyPatch) -> None:
    cert = leaf("disk.example.test")
    made: list[str] = []
    real_mkdtemp = tempfile.mkdtemp

    def spy(*args: Any, **kwargs: Any) -> str:
        folder = real_mkdtemp(*args, **kwargs)
        made.append(folder)
        return folder

    modes: list[int] = []
    real_load = ssl.SSLContext.load_cert_chain

    def load(
        self: ssl.SSLContext, certfile: Any, keyfile: Any = None, password: Any = None
    ) -> None:
        modes.extend(os.stat(p).st_mode & 0o777 for p in (certfile, keyfile))
        modes.append(os.stat(os.path.dirname(keyfile)).st_mode & 0o777)
        real_load(self, certfile, keyfile, password)

    monkeypatch.delattr(os, "memfd_create")
    monkeypatch.setattr(tempfile, "mkdtemp", spy)
    monkeypatch.setattr(ssl.SSLContext, "load_cert_chain", load)
    build_context(PKI.bundle(cert).decode(), cert.key_pem().decode())
    assert modes == [0o600, 0o600, 0o700]
    assert made and not os.path.exists(made[0])


def test_a_key_that_does_not_match_is_refused() -> None:
    one, other = leaf("a.example.test"), PKI.leaf("a.example.test", key="p384")
    with pytest.raises(ssl.SSLError):
        build_context(PKI.bundle(one).decode(), other.key_pem().decode())


# -- the watch rules, against a scripted broker ------------------------------------


@pytest.fixture
async def fake() -> AsyncIterator[FakeServer]:
    server = FakeServer(FakeBroker())
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


class Running:
    """A watcher following the fake, with its changes recorded."""

    def __init__(self, fake: FakeServer) -> None:
        self.changes: list[MapChange] = []
        self.watcher = RouterWatcher.connect(
            fake.addr, None, on_change=self.changes.append, max_backoff=0.2
        )
        self.task = asyncio.create_task(self.watcher.run())

    @property
    def map(self) -> CertificateMap:
        return self.watcher.certificates

    def fingerprint(self, name: str) -> str | None:
        entry = self.map.get(name)
        return entry.sha256_fingerprint if entry else None

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.watcher.close()


@pytest.fixture
async def running(fake: FakeServer) -> AsyncIterator[Running]:
    instance = Running(fake)
    try:
        yield instance
    finally:
        await instance.close()


async def test_snapshot_then_live_events_and_heartbeats(fake: FakeServer, running: Running) -> None:
    a1, a2, b = leaf("a.example.test"), leaf("a.example.test"), leaf("b.example.test")
    gate = asyncio.Event()

    async def script(request: broker_pb2.WatchStatusRequest, _: Any) -> AsyncIterator[Any]:
        assert request.include_keys and request.after_revision == 0
        yield serving_event(3, SNAPSHOT, "a.example.test", a1, PKI)
        yield serving_event(4, SNAPSHOT, "b.example.test", b, PKI)
        yield serving_event(2, SNAPSHOT, "none.example.test", None, PKI)
        yield serving_event(5, COMPLETE, "", None, PKI)
        await gate.wait()
        yield serving_event(6, UPDATED, "a.example.test", a2, PKI)
        yield serving_event(7, REMOVED, "b.example.test", None, PKI)
        yield serving_event(8, UPDATED, "a.example.test", None, PKI)  # source NONE
        yield heartbeat(9)
        await hang()

    fake.broker.scripts.append(script)
    await asyncio.wait_for(running.watcher.ready.wait(), 5)
    assert running.watcher.revision == 5
    assert running.map.names() == ["a.example.test", "b.example.test"]
    assert running.fingerprint("a.example.test") == fingerprint(a1.cert)
    gate.set()
    async with asyncio.timeout(5):
        await running.watcher.wait_for_revision(9)
    assert running.map.names() == []
    assert running.changes == [
        MapChange(5, updated=("a.example.test", "b.example.test"), resync=True),
        MapChange(6, updated=("a.example.test",)),
        MapChange(7, removed=("b.example.test",)),
        MapChange(8, removed=("a.example.test",)),
    ]


async def test_a_batched_snapshot_is_applied_whole(fake: FakeServer, running: Running) -> None:
    a, b = leaf("a.example.test"), leaf("b.example.test")

    async def script(request: broker_pb2.WatchStatusRequest, _: Any) -> AsyncIterator[Any]:
        assert request.batch_snapshot and request.include_keys
        yield batch(
            serving_event(3, SNAPSHOT, "a.example.test", a, PKI),
            serving_event(2, SNAPSHOT, "none.example.test", None, PKI),
        )
        yield batch(serving_event(4, SNAPSHOT, "b.example.test", b, PKI))
        yield serving_event(5, COMPLETE, "", None, PKI)
        await hang()

    fake.broker.scripts.append(script)
    await asyncio.wait_for(running.watcher.ready.wait(), 5)
    assert running.watcher.revision == 5
    assert running.map.names() == ["a.example.test", "b.example.test"]
    assert running.fingerprint("b.example.test") == fingerprint(b.cert)
    assert running.changes == [
        MapChange(5, updated=("a.example.test", "b.example.test"), resync=True)
    ]


async def test_a_cut_snapshot_is_thrown_away_not_merged(fake: FakeServer, running: Running) -> None:
    a, b = leaf("a.example.test"), leaf("b.example.test")

    async def cut(request: broker_pb2.WatchStatusRequest, context: Any) -> AsyncIterator[Any]:
        yield serving_event(3, SNAPSHOT, "a.example.test", a, PKI)
        yield serving_event(4, SNAPSHOT, "b.example.test", b, PKI)
        await abort(context, rich_status(grpc.StatusCode.UNAVAILABLE, "going away"))

    async def again(request: broker_pb2.WatchStatusRequest, _: Any) -> AsyncIterator[Any]:
        yield serving_event(3, SNAPSHOT, "a.example.test", a, PKI)  # b was removed meanwhile
        yield serving_event(5, COMPLETE, "", None, PKI)
        await hang()

    fake.broker.scripts.extend([cut, again])
    await asyncio.wait_for(running.watcher.ready.wait(), 5)
    assert [r.after_revision for r in fake.broker.watch_requests] == [0, 0]
    assert running.map.names() == ["a.example.test"]
    assert running.watcher.revision == 5


async def test_compaction_resnapshots_and_swaps_the_map_whole(
    fake: FakeServer, running: Running
) -> None:
    a1, a2, b = leaf("a.example.test"), leaf("a.example.test"), leaf("b.example.test")
    mid_snapshot, finish = asyncio.Event(), asyncio.Event()

    async def first(request: broker_pb2.WatchStatusRequest, context: Any) -> AsyncIterator[Any]:
        yield serving_event(3, SNAPSHOT, "a.example.test", a1, PKI)
        yield serving_event(4, SNAPSHOT, "b.example.test", b, PKI)
        yield serving_event(5, COMPLETE, "", None, PKI)
        await abort(context, rich_status(grpc.StatusCode.UNAVAILABLE, "restarting"))

    async def compacted(request: broker_pb2.WatchStatusRequest, context: Any) -> AsyncIterator[Any]:
        assert request.after_revision == 5
        await abort(
            context,
            rich_status(grpc.StatusCode.OUT_OF_RANGE, "gone", reason="REVISION_COMPACTED"),
        )
        yield heartbeat(0)  # unreachable; makes this an async generator

    async def fresh(request: broker_pb2.WatchStatusRequest, _: Any) -> AsyncIterator[Any]:
        assert request.after_revision == 0
        yield serving_event(40, SNAPSHOT, "a.example.test", a2, PKI)
        mid_snapshot.set()
        await finish.wait()
        yield serving_event(50, COMPLETE, "", None, PKI)
        await hang()

    fake.broker.scripts.extend([first, compacted, fresh])
    await asyncio.wait_for(mid_snapshot.wait(), 10)
    await asyncio.sleep(0.05)
    # Mid-resync: everything still served as before, revision unchanged.
    assert running.map.names() == ["a.example.test", "b.example.test"]
    assert running.fingerprint("a.example.test") == fingerprint(a1.cert)
    assert running.watcher.revision == 5
    finish.set()
    async with asyncio.timeout(5):
        await running.watcher.wait_for_revision(50)
    assert running.map.names() == ["a.example.test"]
    assert running.fingerprint("a.example.test") == fingerprint(a2.cert)
    assert running.watcher.resnapshots == 1
    assert running.changes[-1] == MapChange(50, updated=("a.example.test",), resync=True)


async def test_broker_outage_keeps_serving_and_resumes_from_the_revision(
    fake: FakeServer, running: Running
) -> None:
    a, c = leaf("a.example.test"), leaf("c.example.test")

    async def first(request: broker_pb2.WatchStatusRequest, _: Any) -> AsyncIterator[Any]:
        yield serving_event(3, SNAPSHOT, "a.example.test", a, PKI)
        yield serving_event(5, COMPLETE, "", None, PKI)
        yield heartbeat(7)
        await hang()

    async def resumed(request: broker_pb2.WatchStatusRequest, _: Any) -> AsyncIterator[Any]:
        yield serving_event(8, UPDATED, "c.example.test", c, PKI)
        await hang()

    fake.broker.scripts.append(first)
    async with asyncio.timeout(5):
        await running.watcher.wait_for_revision(7)
    await fake.stop()
    await wait_until(lambda: not running.watcher.connected, 5, "the watcher to notice")
    await asyncio.sleep(0.5)  # a few failed reconnects
    assert running.map.names() == ["a.example.test"]
    fake.broker.scripts.append(resumed)
    await fake.start()
    async with asyncio.timeout(10):
        await running.watcher.wait_for_revision(8)
    assert fake.broker.watch_requests[-1].after_revision == 7
    assert running.map.names() == ["a.example.test", "c.example.test"]


async def test_too_slow_resumes_after_the_retry_delay(fake: FakeServer, running: Running) -> None:
    async def first(request: broker_pb2.WatchStatusRequest, context: Any) -> AsyncIterator[Any]:
        yield serving_event(5, COMPLETE, "", None, PKI)
        yield heartbeat(6)
        await abort(
            context,
            rich_status(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "slow",
                reason="WATCHER_TOO_SLOW",
                retry_after=timedelta(milliseconds=300),
            ),
        )

    fake.broker.scripts.append(first)
    await wait_until(lambda: len(fake.broker.watch_requests) == 2, 5, "a resume")
    assert fake.broker.watch_requests[-1].after_revision == 6


async def test_bad_material_keeps_the_previous_certificate(
    fake: FakeServer, running: Running
) -> None:
    good, other = leaf("a.example.test"), PKI.leaf("a.example.test", key="p384")

    async def script(request: broker_pb2.WatchStatusRequest, _: Any) -> AsyncIterator[Any]:
        yield serving_event(3, SNAPSHOT, "a.example.test", good, PKI)
        yield serving_event(5, COMPLETE, "", None, PKI)
        broken = serving_event(6, UPDATED, "a.example.test", good, PKI)
        broken.event.serving.private_key_pem = other.key_pem().decode()
        yield broken
        await hang()

    fake.broker.scripts.append(script)
    async with asyncio.timeout(5):
        await running.watcher.wait_for_revision(6)
    assert running.fingerprint("a.example.test") == fingerprint(good.cert)
    assert running.watcher.bad_material == 1


async def test_an_update_builds_the_context_of_a_name_in_use_only(
    fake: FakeServer, running: Running
) -> None:
    """A busy name gets its new context before the swap (no build on its next handshake);
    a name no handshake asked for stays material only."""
    hot1, hot2 = leaf("hot.example.test"), leaf("hot.example.test")
    cold1, cold2 = leaf("cold.example.test"), leaf("cold.example.test")
    gate = asyncio.Event()

    async def script(request: broker_pb2.WatchStatusRequest, _: Any) -> AsyncIterator[Any]:
        yield serving_event(3, SNAPSHOT, "hot.example.test", hot1, PKI)
        yield serving_event(4, SNAPSHOT, "cold.example.test", cold1, PKI)
        yield serving_event(5, COMPLETE, "", None, PKI)
        await gate.wait()
        yield serving_event(6, UPDATED, "hot.example.test", hot2, PKI)
        yield serving_event(7, UPDATED, "cold.example.test", cold2, PKI)
        await hang()

    fake.broker.scripts.append(script)
    await asyncio.wait_for(running.watcher.ready.wait(), 5)
    router = ReferenceRouter(
        running.map, RouterConfig(https_listen=("127.0.0.1", 0), http_listen=None)
    )
    await router.start()
    try:
        assert await served_fingerprint(router.https_port, "hot.example.test") == fingerprint(
            hot1.cert
        )
        assert running.map.builds == 1
        gate.set()
        async with asyncio.timeout(5):
            await running.watcher.wait_for_revision(7)
        assert running.map.builds == 2  # hot's new context, built before it was swapped in
        assert running.map.is_warm("hot.example.test")
        assert not running.map.is_warm("cold.example.test")
        assert await served_fingerprint(router.https_port, "hot.example.test") == fingerprint(
            hot2.cert
        )
        assert running.map.builds == 2
        assert await served_fingerprint(router.https_port, "cold.example.test") == fingerprint(
            cold2.cert
        )
        assert running.map.builds == 3
    finally:
        await router.stop()
