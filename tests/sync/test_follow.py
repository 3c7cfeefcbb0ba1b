"""The shared follow loop against a scripted broker, with an in-memory proxy.

The real proxies are exercised end to end in test_haproxy.py / test_nginx.py;
here the broker's stream is scripted (a snapshot cut half-way, status-only
updates, removals) and the target is pure bookkeeping, so each rule of the
loop is checked on cue: what the proxy is asked to do, and when.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc
import pytest

from certbroker.v1 import broker_pb2, domain_pb2
from certbroker_client import BrokerClient
from certbroker_client.sync.follow import (
    Material,
    Syncer,
    TargetUnavailable,
    UnsafeName,
    file_stem,
    name_of_stem,
)
from tests.client.fake import FakeBroker, FakeServer, abort, domain, event, hang, rich_status
from tests.router.support import wait_until

SNAP = broker_pb2.EVENT_TYPE_SNAPSHOT
DONE = broker_pb2.EVENT_TYPE_SNAPSHOT_COMPLETE
UPD = broker_pb2.EVENT_TYPE_DOMAIN_UPDATED
REMOVED = broker_pb2.EVENT_TYPE_DOMAIN_REMOVED
CUSTOM = domain_pb2.CERTIFICATE_SOURCE_CUSTOM


def serving(revision: int, kind: int, name: str, chain: str | None) -> Any:
    """An event as the broker sends a router (``chain`` None: nothing to serve)."""
    response = event(revision, kind, name)
    if chain is not None:
        response.event.domain.CopyFrom(domain(name, revision))
        response.event.serving.CopyFrom(
            broker_pb2.ServingMaterial(source=CUSTOM, chain_pem=chain, private_key_pem="key")
        )
    return response


class Proxy:
    """A SyncTarget that records calls and can be made unreachable or 'restarted'."""

    kind = "fake"

    def __init__(self) -> None:
        self.served: dict[str, str] = {}
        self.calls: list[tuple[str, str]] = []
        self.down = False
        self.lost = False

    def _check(self) -> None:
        if self.down:
            raise TargetUnavailable("down")

    async def apply(self, material: Material) -> None:
        self._check()
        self.calls.append(("apply", material.name))
        self.served[material.name] = material.chain_pem

    async def remove(self, name: str) -> None:
        self._check()
        self.calls.append(("remove", name))
        self.served.pop(name, None)

    async def reconcile(self, desired: Mapping[str, Material]) -> None:
        self._check()
        self.calls.append(("reconcile", ",".join(sorted(desired))))
        self.served = {name: m.chain_pem for name, m in desired.items()}
        self.lost = False

    async def drifted(self) -> bool:
        self._check()
        return self.lost


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


async def running(syncer: Syncer) -> asyncio.Task[None]:
    task = asyncio.create_task(syncer.run())
    await asyncio.sleep(0)
    return task


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_snapshot_cut_half_way_is_started_over_and_its_first_part_dropped(
    fake: FakeServer, client: BrokerClient
) -> None:
    async def cut(req: Any, ctx: Any) -> AsyncIterator[Any]:
        yield serving(3, SNAP, "a.example.com", "A")
        yield serving(4, SNAP, "b.example.com", "B")
        await abort(ctx, rich_status(grpc.StatusCode.UNAVAILABLE, "bye"))

    async def full(req: Any, ctx: Any) -> AsyncIterator[Any]:
        yield serving(3, SNAP, "a.example.com", "A")  # b was removed in between
        yield event(9, DONE)
        await hang()

    fake.broker.scripts += [cut, full]
    proxy = Proxy()
    syncer = Syncer(client, proxy, max_backoff=0.1)
    task = await running(syncer)
    try:
        async with asyncio.timeout(10):
            await syncer.ready.wait()
        assert proxy.calls == [("reconcile", "a.example.com")]  # nothing before it is whole
        assert proxy.served == {"a.example.com": "A"}
        assert syncer.applied_revision == 9
        assert client.snapshot_streams == 2
    finally:
        await stop(task)


async def test_live_changes_reach_the_proxy_and_status_only_updates_do_not(
    fake: FakeServer, client: BrokerClient
) -> None:
    async def stream(req: Any, ctx: Any) -> AsyncIterator[Any]:
        yield serving(3, SNAP, "a.example.com", "A1")
        yield event(3, DONE)
        yield serving(4, UPD, "a.example.com", "A1")  # a status change, same material
        yield serving(5, UPD, "b.example.com", None)  # not serving yet: nothing to do
        yield serving(6, UPD, "b.example.com", "B1")
        yield serving(7, UPD, "a.example.com", "A2")
        yield serving(8, UPD, "a.example.com", None)  # stopped serving
        yield serving(9, REMOVED, "b.example.com", None)
        yield serving(10, UPD, "c.example.com", "C1")
        await hang()

    fake.broker.scripts.append(stream)
    proxy = Proxy()
    reports: list[tuple[int, int]] = []

    async def report(revision: int, count: int) -> float | None:
        reports.append((revision, count))
        return 0.05  # the broker asks for reports this often (the flag said 30 s)

    syncer = Syncer(client, proxy, max_backoff=0.1, report=report, report_interval=30)
    task = await running(syncer)
    try:
        await wait_until(lambda: syncer.applied_revision >= 10, 10, "revision 10 applied")
        assert proxy.calls == [
            ("reconcile", "a.example.com"),
            ("apply", "b.example.com"),
            ("apply", "a.example.com"),
            ("remove", "a.example.com"),
            ("remove", "b.example.com"),
            ("apply", "c.example.com"),
        ]
        assert proxy.served == {"c.example.com": "C1"}
        await wait_until(lambda: reports and reports[-1] == (10, 1), 5, "a report after changes")
        assert reports[0] == (3, 1)  # the snapshot is reported at once
        seen = len(reports)
        await wait_until(lambda: len(reports) >= seen + 3, 5, "reports at the broker's pace")
    finally:
        await stop(task)


async def test_an_unreachable_or_restarted_proxy_is_reconciled_and_not_reported_current(
    fake: FakeServer, client: BrokerClient
) -> None:
    more = asyncio.Event()

    async def stream(req: Any, ctx: Any) -> AsyncIterator[Any]:
        yield serving(3, SNAP, "a.example.com", "A1")
        yield event(3, DONE)
        await more.wait()
        yield serving(4, UPD, "b.example.com", "B1")
        await hang()

    fake.broker.scripts.append(stream)
    proxy = Proxy()
    syncer = Syncer(client, proxy, max_backoff=0.1, check_interval=0.02)
    task = await running(syncer)
    try:
        async with asyncio.timeout(10):
            await syncer.ready.wait()
        proxy.down = True
        more.set()
        await wait_until(lambda: not syncer.in_sync, 5, "the proxy marked dirty")
        assert "b.example.com" not in proxy.served
        assert syncer.applied_revision == 3  # not what the proxy serves yet
        proxy.down = False
        await wait_until(lambda: syncer.in_sync, 5, "the proxy reconciled")
        assert proxy.served == {"a.example.com": "A1", "b.example.com": "B1"}
        assert syncer.applied_revision >= 4

        proxy.served.clear()  # e.g. HAProxy restarted: runtime changes are gone
        proxy.lost = True
        await wait_until(lambda: len(proxy.served) == 2, 5, "everything pushed again")
    finally:
        await stop(task)


def test_names_become_safe_file_names_and_back() -> None:
    assert file_stem("shop.example.com") == "shop.example.com"
    assert file_stem("*.example.com") == "_wildcard.example.com"
    assert name_of_stem("_wildcard.example.com") == "*.example.com"
    assert name_of_stem("shop.example.com") == "shop.example.com"
    assert name_of_stem("README") is None and name_of_stem("default") is None
    for bad in ("../etc/passwd", "a b.example.com", "a\n.example.com", "x/y.com", "com", "*.*.a.b"):
        with pytest.raises(UnsafeName):
            file_stem(bad)


def test_the_bundle_has_no_blank_line_and_ends_with_a_newline() -> None:
    material = Material(
        name="a.example.com",
        chain_pem="-----BEGIN CERTIFICATE-----\nAA\n-----END CERTIFICATE-----\n\n"
        "-----BEGIN CERTIFICATE-----\r\nBB\r\n-----END CERTIFICATE-----\n",
        key_pem="-----BEGIN PRIVATE KEY-----\nKK\n-----END PRIVATE KEY-----",
        source=CUSTOM,
        revision=1,
    )
    assert "\n\n" not in material.bundle and "\r" not in material.bundle
    assert material.bundle.endswith("-----END PRIVATE KEY-----\n")
    assert material.bundle.count("BEGIN") == 3
