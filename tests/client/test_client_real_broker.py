"""``BrokerClient`` against the real broker: every unary call, and a watch that
survives a broker restart (same port, same database) without a gap."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from certbroker.v1 import broker_pb2, domain_pb2
from certbroker_client import BrokerClient, BrokerError, WatchEvent
from tests.client.conftest import RunningBroker, start_broker, stop_broker


async def test_unary_calls(broker: RunningBroker) -> None:
    async with BrokerClient.connect(broker.addr, timeout=10) as client:
        added = await client.issue_certificate(
            "api.client-real.example.com", "client-real", disable_letsencrypt=True
        )
        assert added.lets_encrypt_state == domain_pb2.LETS_ENCRYPT_STATE_DISABLED
        again = await client.issue_certificate(
            "API.client-real.example.com.", "client-real", disable_letsencrypt=True
        )
        assert again.domain == "api.client-real.example.com"  # normalised, idempotent
        got = await client.get_status("api.client-real.example.com")
        assert got.app == "client-real"
        names = [d.domain async for d in client.list_domains("client-real", page_size=1)]
        assert names == ["api.client-real.example.com"]
        revision = await client.remove_domain("api.client-real.example.com")
        assert revision > got.revision
        with pytest.raises(BrokerError) as info:
            await client.get_status("api.client-real.example.com")
        assert info.value.code is grpc.StatusCode.NOT_FOUND
        with pytest.raises(BrokerError) as bad:
            await client.issue_certificate("-bad-.example.com", "x")
        assert bad.value.code is grpc.StatusCode.INVALID_ARGUMENT
        assert bad.value.violations and bad.value.violations[0].field == "domain"


async def add_when_reachable(client: BrokerClient, name: str, deadline_s: float = 10) -> None:
    """Unary calls fail fast while the channel reconnects; retry them for a while."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + deadline_s
    while True:
        try:
            await client.issue_certificate(name, "r", disable_letsencrypt=True)
            return
        except BrokerError as err:
            if err.code is not grpc.StatusCode.UNAVAILABLE or loop.time() > deadline:
                raise
            await asyncio.sleep(0.1)


async def test_watch_survives_a_broker_restart(broker_dir: tuple[Path, Path]) -> None:
    workdir, trust = broker_dir
    proc, addr = await asyncio.to_thread(start_broker, workdir, trust)
    port = int(addr.rsplit(":", 1)[1])
    events: list[WatchEvent] = []
    arrived = asyncio.Event()

    async def wait_for(name: str, kind: int) -> None:
        async def seen() -> None:
            while not any(e.domain.domain == name and e.type == kind for e in events):
                arrived.clear()
                await arrived.wait()

        await asyncio.wait_for(seen(), 20)

    try:
        async with BrokerClient.connect(addr, timeout=10) as client:
            await client.issue_certificate("a.restart.example.com", "r", disable_letsencrypt=True)

            async def consume() -> None:
                async for ev in client.watch(0, max_backoff=0.5):
                    events.append(ev)
                    arrived.set()

            task = asyncio.create_task(consume())
            await wait_for("a.restart.example.com", broker_pb2.EVENT_TYPE_SNAPSHOT)
            await client.issue_certificate("b.restart.example.com", "r", disable_letsencrypt=True)
            await wait_for("b.restart.example.com", broker_pb2.EVENT_TYPE_DOMAIN_UPDATED)
            before = client.last_revision

            await asyncio.to_thread(stop_broker, proc)
            proc, _ = await asyncio.to_thread(start_broker, workdir, trust, port)

            await add_when_reachable(client, "c.restart.example.com")
            await wait_for("c.restart.example.com", broker_pb2.EVENT_TYPE_DOMAIN_UPDATED)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    finally:
        await asyncio.to_thread(stop_broker, proc)

    live = [e for e in events if e.type == broker_pb2.EVENT_TYPE_DOMAIN_UPDATED]
    assert [e.domain.domain for e in live] == ["b.restart.example.com", "c.restart.example.com"]
    assert live[0].revision == before
    revisions = [e.revision for e in live]
    assert revisions == sorted(set(revisions))  # in order, none repeated
    snapshots = [e for e in events if e.type == broker_pb2.EVENT_TYPE_SNAPSHOT]
    assert [e.domain.domain for e in snapshots] == ["a.restart.example.com"]  # no re-snapshot
