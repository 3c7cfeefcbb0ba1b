"""An order in flight never serves the next holder of its name.

Alice's wildcard is being ordered, validated through her delegation (the
customer's CNAME points at her label). She removes the domain, and mallory adds
the same name at once, getting a label of his own. When alice's order then
completes, its certificate must not be stored on mallory's row (that would be a
certificate for mallory validated through alice's delegation), no order row may
outlive alice's domain for mallory to resume, and mallory is asked for his own
record like any new owner.

The real scheduler, store and use cases; the CA, DNS and our DNS-01 zone are the
in-memory fakes of ``tests.fakes``, the CA holding its order until released.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from certbroker import delegation
from certbroker.app import Broker
from certbroker.clock import FakeClock
from certbroker.delegation import LabelKey
from certbroker.model import Domain, LetsEncryptState
from certbroker.scheduler import Policy, Scheduler
from certbroker.store.sqlite import SqliteStore
from certbroker.x509.validate import CustomCertificateValidator
from tests.fakes.dns import FakeDns
from tests.fakes.dns01 import FakeDns01
from tests.fakes.issuer import PKI, FakeCertificate, FakeIssuer
from tests.fakes.sealer import CountingSealer
from tests.fakes.world import START, TARGETS

NAME = "*.w.example.com"
ACTION_REQUIRED = LetsEncryptState.ACTION_REQUIRED


@dataclass
class HeldIssuer(FakeIssuer):
    """The fake CA, except that a new order waits for ``release`` once the CA has it."""

    release: asyncio.Event = field(default_factory=asyncio.Event)
    ordering: asyncio.Event = field(default_factory=asyncio.Event)

    async def issue(  # type: ignore[override]
        self,
        names: list[str],
        key_pem: bytes,
        *,
        on_order_created: Callable[[str], Awaitable[None]] | None = None,
        **options: Any,
    ) -> FakeCertificate:
        async def created(url: str) -> None:
            if on_order_created is not None:
                await on_order_created(url)
            self.ordering.set()
            await self.release.wait()

        return await super().issue(names, key_pem, on_order_created=created, **options)


@dataclass
class World:
    store: SqliteStore
    clock: FakeClock
    broker: Broker
    scheduler: Scheduler
    issuer: HeldIssuer
    labels: LabelKey


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    store = await SqliteStore.open(str(tmp_path / "broker.sqlite3"))
    clock = FakeClock(START)
    labels = LabelKey(secrets.token_bytes(32))
    dns01 = FakeDns01()
    dns = FakeDns()
    # The customer delegated to alice's record, once.
    alice_target = delegation.target(labels.label("alice", NAME), dns01.zone)
    dns.cnames[delegation.challenge_name(NAME)] = alice_target
    issuer = HeldIssuer(clock)
    sealer = CountingSealer()
    scheduler = Scheduler(
        store, clock, sealer, issuer, dns, TARGETS, Policy(), dns01=dns01, labels=labels
    )
    broker = Broker(
        store,
        clock,
        sealer,
        CustomCertificateValidator([PKI.root.cert]),
        labels,
        wake_scheduler=scheduler.wake,
    )
    await scheduler.start()
    try:
        yield World(store, clock, broker, scheduler, issuer, labels)
    finally:
        issuer.release.set()
        await scheduler.stop()
        await store.close()


async def _settled(world: World) -> Domain:
    """The domain once the scheduler is idle and it serves or waits for its customer."""
    done = (LetsEncryptState.ACTION_REQUIRED, LetsEncryptState.IN_USE)
    async with asyncio.timeout(20):
        while True:
            domain = await world.store.get_domain(NAME)
            if domain is not None and domain.le_state in done and not world.scheduler.busy:
                return domain
            await asyncio.sleep(0.02)


async def _idle(world: World) -> None:
    async with asyncio.timeout(20):
        while world.scheduler.busy:
            await asyncio.sleep(0.02)


async def test_an_order_in_flight_never_serves_the_next_owner_of_the_name(world: World) -> None:
    alice = await world.broker.issue_certificate(NAME, "alice")
    assert alice.delegation_label == world.labels.label("alice", NAME)
    await asyncio.wait_for(world.issuer.ordering.wait(), timeout=20)  # validated via alice's CNAME

    await world.broker.remove_domain(NAME, "alice")
    world.clock.advance(timedelta(seconds=1))
    mallory = await world.broker.issue_certificate(NAME, "mallory")
    assert mallory.delegation_label != alice.delegation_label
    world.issuer.release.set()  # alice's order completes after the name changed hands

    now = await _settled(world)
    assert (now.app, now.le_state, now.le_cert) == ("mallory", ACTION_REQUIRED, None)
    assert now.delegation_label == mallory.delegation_label
    assert await world.store.get_order(NAME) is None  # nothing of alice's order left
    assert [c.dns01_label for c in world.issuer.calls] == [alice.delegation_label]


async def test_an_order_row_left_by_an_earlier_holder_is_not_resumed(world: World) -> None:
    """Older versions wrote the order's URL even after a removal: a new owner never resumes it."""
    await world.broker.issue_certificate(NAME, "alice")
    await asyncio.wait_for(world.issuer.ordering.wait(), timeout=20)
    order = await world.store.get_order(NAME)
    assert order is not None and order.order_url
    await world.broker.remove_domain(NAME, "alice")
    world.issuer.release.set()
    await _idle(world)
    async with world.store.transaction() as tx:
        await tx.put_order(order)  # what that late write left behind

    world.clock.advance(timedelta(minutes=5))
    await world.broker.issue_certificate(NAME, "mallory")
    now = await _settled(world)
    assert (now.app, now.le_state, now.le_cert) == ("mallory", ACTION_REQUIRED, None)
    assert await world.store.get_order(NAME) is None
    assert len(world.issuer.calls) == 1  # alice's order only: nothing resumed for mallory
