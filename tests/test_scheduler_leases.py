"""Several schedulers on one store: each domain worked by one broker, taken over when it dies.

Two brokers are two ``Scheduler``s with their own ``Claims`` (owner names) over
one SQLite store, a fake clock and fake CAs (tests/fakes). The store's lease
semantics are the same on PostgreSQL (tests/store/test_contract_leases.py); the
real thing, three processes on PostgreSQL with Pebble, is
tests/integration/test_ha.py.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from certbroker.app import Broker
from certbroker.claims import Claims
from certbroker.clock import FakeClock
from certbroker.delegation import LabelKey
from certbroker.model import LetsEncryptState, Source
from certbroker.scheduler import Policy, Scheduler
from certbroker.store.sqlite import SqliteStore
from certbroker.x509.validate import CustomCertificateValidator
from tests.fakes.dns import FakeDns
from tests.fakes.issuer import PKI, FakeCertificate, FakeIssuer
from tests.fakes.sealer import CountingSealer
from tests.fakes.world import START, TARGETS

LEASE = timedelta(seconds=30)
NAME = "www.shop.test"


class GatedIssuer(FakeIssuer):
    """Holds every order right after its URL was saved: a broker mid-order."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def issue(
        self,
        names: list[str],
        key_pem: bytes,
        *,
        on_order_created: Callable[[str], Awaitable[None]] | None = None,
        **options: object,
    ) -> FakeCertificate:
        async def saved_then_held(url: str) -> None:
            if on_order_created is not None:
                await on_order_created(url)
            self.entered.set()
            await self.gate.wait()

        return await super().issue(
            names,
            key_pem,
            on_order_created=saved_then_held,
            **options,  # type: ignore[arg-type]
        )


class Stalled(Claims):
    """A broker that stopped renewing its leases (dead, or paused past its lease)."""

    async def renew(
        self, working: Callable[[], Mapping[str, object]], lost: Callable[[str], None]
    ) -> None:
        return None


@dataclass
class Node:
    scheduler: Scheduler
    app: Broker
    issuer: FakeIssuer


@asynccontextmanager
async def cluster(tmp_path: Path) -> AsyncIterator[tuple[SqliteStore, FakeClock]]:
    store = await SqliteStore.open(str(tmp_path / "shared.sqlite3"))
    try:
        yield store, FakeClock(START)
    finally:
        await store.close()


def node(
    store: SqliteStore, clock: FakeClock, owner: str, issuer: FakeIssuer, claims: type[Claims]
) -> Node:
    scheduler = Scheduler(
        store,
        clock,
        CountingSealer(),
        issuer,
        FakeDns(),
        TARGETS,
        Policy(),
        labels=LabelKey(secrets.token_bytes(32)),
        claims=claims(store, clock, owner, LEASE),
    )
    app = Broker(
        store,
        clock,
        CountingSealer(),
        CustomCertificateValidator([PKI.root.cert]),
        LabelKey(secrets.token_bytes(32)),
        wake_scheduler=scheduler.wake,
    )
    return Node(scheduler, app, issuer)


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.01)


async def test_a_domain_taken_over_mid_order_resumes_that_order_and_the_old_owner_writes_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with cluster(tmp_path) as (store, clock):
        gated = GatedIssuer(clock)
        a = node(store, clock, "a", gated, Stalled)
        b = node(store, clock, "b", FakeIssuer(clock), Claims)
        await a.scheduler.start()
        try:
            await a.app.issue_certificate(NAME, "shop")
            await asyncio.wait_for(gated.entered.wait(), 10)  # ordered, URL saved, held
            order = await store.get_order(NAME)
            assert order is not None and order.order_url
            before = await store.current_revision()

            await b.scheduler.start()
            await asyncio.sleep(0.1)
            assert b.issuer.calls == []  # a's lease holds: b waits for it
            clock.advance(LEASE + timedelta(seconds=1))  # a never renewed: its lease lapsed

            async def b_done() -> bool:
                domain = await store.get_domain(NAME)
                return domain is not None and domain.le_state is LetsEncryptState.IN_USE

            await until(b_done)
            (resumed,) = b.issuer.calls
            assert resumed.resume_url == order.order_url  # that order, not a new one
            done = await store.get_domain(NAME)
            assert done is not None and done.serving is Source.LETS_ENCRYPT

            # a wakes up and finishes its download: refused, nothing written
            gated.gate.set()
            await until(lambda: _idle(a.scheduler))
            assert await store.get_domain(NAME) == done
            updates = [e for e in await store.events_after(before, 100) if e.domain_name == NAME]
            assert [e.domain.le_state for e in updates if e.domain] == [LetsEncryptState.IN_USE]
            assert "no longer leased to this broker" in caplog.text
        finally:
            gated.gate.set()
            await a.scheduler.stop()
            await b.scheduler.stop()


async def test_a_step_whose_lease_another_broker_took_is_stopped(tmp_path: Path) -> None:
    async with cluster(tmp_path) as (store, clock):
        gated = GatedIssuer(clock)
        a = node(store, clock, "a", gated, Claims)
        await a.scheduler.start()
        try:
            await a.app.issue_certificate(NAME, "shop")
            await asyncio.wait_for(gated.entered.wait(), 10)
            assert a.scheduler.busy == 1
            # another broker whose clock says a's lease lapsed took the domain
            assert await store.claim_due("b", [NAME], clock.now() + LEASE, LEASE) == [NAME]
            clock.advance(LEASE / 3)  # a's next renewal finds the lease gone
            await until(lambda: _idle(a.scheduler))
            domain = await store.get_domain(NAME)
            assert domain is not None and domain.le_cert is None  # a stored nothing
        finally:
            gated.gate.set()
            await a.scheduler.stop()


async def test_two_live_brokers_issue_every_domain_once(tmp_path: Path) -> None:
    names = [f"d{i}.shop{i}.test" for i in range(20)]
    async with cluster(tmp_path) as (store, clock):
        nodes = [node(store, clock, owner, FakeIssuer(clock), Claims) for owner in ("a", "b")]
        for n in nodes:
            await n.scheduler.start()
        try:
            for i, name in enumerate(names):
                await nodes[i % 2].app.issue_certificate(name, "shop")

            async def all_in_use() -> bool:
                domains = [await store.get_domain(name) for name in names]
                return all(d is not None and d.le_state is LetsEncryptState.IN_USE for d in domains)

            await until(all_in_use)
            ordered = [c.names[0] for n in nodes for c in n.issuer.calls]
            assert sorted(ordered) == sorted(names)  # each once, whichever broker
            assert await store.claim_due("c", names, clock.now(), LEASE) == []  # none left due
        finally:
            for n in nodes:
                await n.scheduler.stop()


async def test_a_stopping_broker_hands_its_domains_over_at_once(tmp_path: Path) -> None:
    async with cluster(tmp_path) as (store, clock):
        gated = GatedIssuer(clock)
        a = node(store, clock, "a", gated, Claims)
        await a.scheduler.start()
        await a.app.issue_certificate(NAME, "shop")
        await asyncio.wait_for(gated.entered.wait(), 10)
        await a.scheduler.stop()  # SIGTERM: the step is cancelled, its lease released
        assert await store.claim_due("b", [NAME], clock.now(), LEASE) == [NAME]


async def _idle(scheduler: Scheduler) -> bool:
    return scheduler.busy == 0
