"""One broker's claims: renewed while it works, reported when lost, checked before writes.

Two brokers are two ``Claims`` with their own owner names over one store and a
fake clock (the store's lease semantics are the contract suite's:
tests/store/test_contract_leases.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from certbroker.claims import Claims, LeaseLost
from certbroker.clock import FakeClock
from certbroker.store.sqlite import SqliteStore
from tests.store.records import T0, make_domain

LEASE = timedelta(seconds=30)
A, B = "a.example.com", "b.example.com"
BOTH = [A, B]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = await SqliteStore.open(str(tmp_path / "broker.sqlite3"))
    try:
        for name in ("a.example.com", "b.example.com"):
            async with s.transaction() as tx:
                await tx.put_domain(make_domain(name, next_run_at=T0))
        yield s
    finally:
        await s.close()


async def test_working_domains_stay_leased_while_renewed(store: SqliteStore) -> None:
    clock = FakeClock(T0)
    one, two = Claims(store, clock, "one", LEASE), Claims(store, clock, "two", LEASE)
    assert await one.claim(BOTH) == ["a.example.com", "b.example.com"]
    working = {"a.example.com": object()}  # b's step ended without a release
    lost: list[str] = []
    one.start_renewing(lambda: working, lost.append)
    try:
        for _ in range(6):  # two leases long, renewed every third
            clock.advance(LEASE / 3)
            await asyncio.sleep(0.05)  # the renewal runs (a real write)
        assert await two.claim(BOTH) == ["b.example.com"]  # b lapsed, a did not
        assert lost == []
    finally:
        await one.stop()
    # a is "one"'s until a lease after its last renewal (at 2 * LEASE)
    assert await two.next_time(["b.example.com"]) == T0 + 3 * LEASE


async def test_a_lease_taken_over_is_reported_unless_its_step_started_again(
    store: SqliteStore,
) -> None:
    clock = FakeClock(T0)
    one, two = Claims(store, clock, "one", LEASE), Claims(store, clock, "two", LEASE)
    await one.claim(BOTH)
    clock.advance(LEASE)  # "one" stalled past its lease
    assert await two.claim([A]) == ["a.example.com"]
    a_step, b_step = object(), object()
    working: dict[str, object] = {"a.example.com": a_step, "b.example.com": b_step}
    lost: list[str] = []
    await one.renew(lambda: working, lost.append)
    assert lost == ["a.example.com"]  # b lapsed too but nobody took it: renewed

    restarted: dict[str, object] = {"a.example.com": object()}
    calls = iter([working, restarted])  # a's step ended and a new one began meanwhile
    lost.clear()
    await one.renew(lambda: next(calls), lost.append)
    assert lost == []


async def test_a_write_is_refused_once_the_lease_is_gone(store: SqliteStore) -> None:
    clock = FakeClock(T0)
    one, two = Claims(store, clock, "one", LEASE), Claims(store, clock, "two", LEASE)
    await one.claim([A])
    async with store.transaction() as tx:
        await one.check(tx, "a.example.com")
        with pytest.raises(LeaseLost, match="held by one"):
            await two.check(tx, "a.example.com")
    clock.advance(LEASE)
    async with store.transaction() as tx:
        with pytest.raises(LeaseLost):  # lapsed: not "one"'s any more either
            await one.check(tx, "a.example.com")
    await one.release("a.example.com")
    assert await two.claim([A]) == ["a.example.com"]
    await one.release_all([])  # nothing to hand over: no write
