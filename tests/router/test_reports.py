"""Routers report what they serve: three router libraries against a real broker, one stuck.

The broker runs in this process on a fake clock (so aging out takes no real
minutes) with mTLS; the routers are real ``RouterWatcher``s over gRPC with the
``router-1`` identity, reporting every 0.1 s of real time. The broker's report
interval is its default 10 s of fake time: a router silent for 30 s stops
counting, for 100 s it is forgotten.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest

from certbroker.clock import FakeClock
from certbroker.v1 import broker_pb2, domain_pb2
from certbroker_client.client import BrokerClient, TlsFiles
from certbroker_client.router import RouterWatcher
from tests.broker import broker_settings, started_broker
from tests.pki import NOW, TestPKI
from tests.router.support import fingerprint, wait_until
from tests.tls import MtlsFiles

PKI = TestPKI("Reports")
DOMAIN = "shop.reports.example.test"


@dataclass
class Fleet:
    clock: FakeClock
    api: BrokerClient
    router_tls: TlsFiles
    addr: str
    watchers: dict[str, RouterWatcher] = field(default_factory=dict)
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)

    def start(self, router_id: str) -> RouterWatcher:
        watcher = RouterWatcher.connect(
            self.addr,
            self.router_tls,
            router_id=router_id,
            report_interval=0.1,
            report_debounce=0.02,
            idle_timeout=5.0,
            max_backoff=0.2,
        )
        self.watchers[router_id] = watcher
        self.tasks[router_id] = asyncio.create_task(watcher.run())
        return watcher

    async def pause(self, router_id: str) -> None:
        """The router stops applying and reporting, and keeps serving what it has."""
        task = self.tasks.pop(router_id)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def routers(self) -> dict[str, broker_pb2.RouterStatus]:
        return {r.router_id: r for r in await self.api.list_routers()}

    async def wait_applied(self, router_ids: list[str], revision: int) -> None:
        async def done() -> bool:
            seen = await self.routers()
            return all(
                i in seen and seen[i].live and seen[i].applied_revision >= revision
                for i in router_ids
            )

        await wait_until(done, 15, f"{router_ids} to report revision {revision}")


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    mtls = MtlsFiles(tmp_path / "tls")
    server, router, api = (
        mtls.issue("broker", server=True),
        mtls.issue("router-1"),
        mtls.issue("api-1"),
    )
    trust = tmp_path / "trust.pem"
    trust.write_bytes(PKI.root.pem)
    settings = broker_settings(
        tmp_path,
        trust_bundle=str(trust),
        tls_cert=str(server.cert),
        tls_key=str(server.key),
        tls_client_ca=str(mtls.ca),
        roles={"router-1": "router", "api-1": "api"},
        heartbeat_interval=timedelta(seconds=1),
    )
    clock = FakeClock(NOW)
    async with started_broker(settings, clock) as broker, contextlib.AsyncExitStack() as stack:
        addr = broker.address
        client = BrokerClient.connect(addr, tls=TlsFiles(mtls.ca, api.cert, api.key), timeout=10)
        stack.push_async_callback(client.close)
        instance = Fleet(clock, client, TlsFiles(mtls.ca, router.cert, router.key), addr)

        async def stop_all() -> None:
            for router_id in list(instance.tasks):
                await instance.pause(router_id)
            for watcher in instance.watchers.values():
                await watcher.close()

        stack.push_async_callback(stop_all)
        yield instance


async def upload(api: BrokerClient) -> tuple[domain_pb2.Domain, str]:
    leaf = PKI.leaf(DOMAIN)
    domain = await api.upload_custom(DOMAIN, PKI.bundle(leaf), leaf.key_pem(), app="shop")
    return domain, fingerprint(leaf.cert)


async def test_three_routers_one_stuck_show_lag_and_serving_count_then_age_out(
    fleet: Fleet,
) -> None:
    await fleet.api.issue_certificate(DOMAIN, "shop", disable_letsencrypt=True)
    first, first_fp = await upload(fleet.api)
    for router_id in ("edge-1", "edge-2", "edge-3"):
        fleet.start(router_id)
    await fleet.wait_applied(["edge-1", "edge-2", "edge-3"], first.revision)
    status = await fleet.api.get_status(DOMAIN)
    assert (status.serving_routers, status.known_routers) == (3, 3)

    await fleet.pause("edge-3")
    stuck_at = fleet.watchers["edge-3"].revision
    second, second_fp = await upload(fleet.api)
    await fleet.wait_applied(["edge-1", "edge-2"], second.revision)
    routers = await fleet.routers()
    assert sorted(routers) == ["edge-1", "edge-2", "edge-3"]
    current = second.revision
    assert routers["edge-3"].applied_revision == stuck_at < current
    assert routers["edge-3"].lag == current - stuck_at > 0
    assert routers["edge-1"].lag == routers["edge-2"].lag == 0
    assert all(r.identity == "router-1" and r.domain_count == 1 for r in routers.values())
    status = await fleet.api.get_status(DOMAIN)
    assert (status.serving_routers, status.known_routers) == (2, 3)
    # What the broker now knows is true: the stuck router still serves the old leaf.
    served = {i: w.certificates.get(DOMAIN) for i, w in fleet.watchers.items()}
    assert {i: e.sha256_fingerprint if e else None for i, e in served.items()} == {
        "edge-1": second_fp,
        "edge-2": second_fp,
        "edge-3": first_fp,
    }

    fleet.clock.advance(timedelta(seconds=31))  # 3 report intervals and a bit

    async def stuck_is_stale() -> bool:
        routers = await fleet.routers()
        status = await fleet.api.get_status(DOMAIN)
        return (
            not routers["edge-3"].live
            and routers["edge-1"].live
            and routers["edge-2"].live
            and (status.serving_routers, status.known_routers) == (2, 2)
        )

    await wait_until(stuck_is_stale, 15, "edge-3 to stop counting")
    fleet.clock.advance(timedelta(seconds=70))  # 10 intervals since edge-3's last report

    async def stuck_is_forgotten() -> bool:
        return sorted(await fleet.routers()) == ["edge-1", "edge-2"]

    await wait_until(stuck_is_forgotten, 15, "edge-3 to be forgotten")


async def test_a_router_reports_after_each_change_not_only_on_its_timer(fleet: Fleet) -> None:
    """A long interval: the reports that arrive are the ones the changes caused."""
    await fleet.api.issue_certificate(DOMAIN, "shop", disable_letsencrypt=True)
    watcher = RouterWatcher.connect(
        fleet.addr, fleet.router_tls, router_id="edge-9", report_interval=3600, idle_timeout=5.0
    )
    fleet.watchers["edge-9"] = watcher
    fleet.tasks["edge-9"] = asyncio.create_task(watcher.run())
    await asyncio.wait_for(watcher.ready.wait(), 10)
    for _ in range(2):
        domain, _ = await upload(fleet.api)
        await fleet.wait_applied(["edge-9"], domain.revision)
    assert (await fleet.routers())["edge-9"].domain_count == 1
    assert watcher.reports <= 5  # start, snapshot, two changes (a debounce may merge some)
