"""Housekeeping across several brokers: compaction once per interval, challenge events
for routers watching any broker.

Several brokers are stood in for by several ``Compactor``/``ChallengeEvents``
with their own owner names over one store (the lease semantics are the store's,
the same on both backends: tests/store/test_contract_leases.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from certbroker.clock import FakeClock
from certbroker.housekeeping import WATCHERS_PREFIX, ChallengeEvents, Compactor
from certbroker.model import EventType
from certbroker.store.sqlite import SqliteStore
from tests.store.records import T0

HOUR = timedelta(hours=1)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = await SqliteStore.open(str(tmp_path / "broker.sqlite3"))
    try:
        yield s
    finally:
        await s.close()


async def test_one_broker_compacts_per_interval_and_another_takes_over_when_it_dies(
    store: SqliteStore,
) -> None:
    clock = FakeClock(T0)
    a, b = (Compactor(store, clock, HOUR, HOUR, owner=name) for name in ("a", "b"))
    assert await a.run_if_due()
    clock.advance(timedelta(seconds=1))
    assert not await b.run_if_due()  # a holds the job for the interval
    clock.advance(HOUR - timedelta(seconds=1))
    assert await a.run_if_due()  # its next run keeps it
    clock.advance(timedelta(seconds=1))
    assert not await b.run_if_due()
    # a dies: its lease lapses an interval after its last run; b's next try takes over
    clock.advance(HOUR)
    assert await b.run_if_due()
    assert (a.runs, b.runs) == (2, 1)


async def test_a_lone_broker_compacts_without_a_lease(store: SqliteStore) -> None:
    compactor = Compactor(store, FakeClock(T0), HOUR, HOUR)
    assert await compactor.run_if_due()
    assert await compactor.run_if_due()
    assert await store.lease_owners("job:", T0) == []


async def challenge_events(store: SqliteStore) -> list[tuple[EventType, str]]:
    return [(e.type, e.challenge_token) for e in await store.events_after(0, 100)]


async def eventually(check: object, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not await check():  # type: ignore[operator]
            await asyncio.sleep(0.01)


async def test_a_router_watching_one_broker_gets_the_tokens_another_publishes(
    store: SqliteStore,
) -> None:
    clock = FakeClock(T0)
    publisher = ChallengeEvents(store, clock, owner="a", presence_cache=0)
    watched = ChallengeEvents(store, clock, owner="b", presence_cache=0)
    try:
        publisher.on_change("nobody-watches", "k0")  # no router anywhere: nothing written
        await publisher.stop()
        assert await challenge_events(store) == []

        watched.add_listener()  # a router opens a stream with include_challenges on "b"
        await eventually(lambda: _present(store, clock, "b"))
        publisher.on_change("tok", "tok.k")
        publisher.on_change("tok", None)
        await publisher.stop()
        assert await challenge_events(store) == [
            (EventType.CHALLENGE_ADDED, "tok"),
            (EventType.CHALLENGE_REMOVED, "tok"),
        ]

        watched.remove_listener()  # the stream closed: the presence goes
        await eventually(lambda: _absent(store, clock))
        publisher.on_change("late", "late.k")
        await publisher.stop()
        assert len(await challenge_events(store)) == 2
    finally:
        await publisher.stop()
        await watched.stop()


async def test_a_lone_broker_writes_only_while_its_own_router_watches(store: SqliteStore) -> None:
    events = ChallengeEvents(store, FakeClock(T0))
    events.on_change("before", "k")
    events.add_listener()
    events.on_change("during", "k")
    events.remove_listener()
    events.on_change("after", "k")
    await events.stop()
    assert await challenge_events(store) == [(EventType.CHALLENGE_ADDED, "during")]
    assert await store.lease_owners(WATCHERS_PREFIX, T0) == []  # no presence without a cluster


async def _present(store: SqliteStore, clock: FakeClock, owner: str) -> bool:
    return await store.lease_owners(WATCHERS_PREFIX, clock.now()) == [owner]


async def _absent(store: SqliteStore, clock: FakeClock) -> bool:
    return await store.lease_owners(WATCHERS_PREFIX, clock.now()) == []
