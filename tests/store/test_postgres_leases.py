"""Claims on PostgreSQL wait for nobody: not for the writers' lock, not for a locked row.

A claim runs in a transaction of its own without the revision counter (so the
scheduler of one broker never queues behind every write of the cluster), and
``FOR UPDATE SKIP LOCKED`` passes over a row another transaction holds instead
of waiting for it. The lease semantics both backends share are in
test_contract_leases.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import pytest

from certbroker.model import Domain
from certbroker.store.postgres import PostgresStore
from tests.store.claiming import claim
from tests.store.records import T0, make_domain

LEASE = timedelta(seconds=30)
SECOND = timedelta(seconds=1)
PROMPTLY = 5.0  # seconds: far above a claim's cost, far below the 30 s lock timeout


@pytest.fixture
async def brokers(postgres_dsn: str) -> AsyncIterator[list[PostgresStore]]:
    stores = [await PostgresStore.open(postgres_dsn, poll_interval=60) for _ in range(2)]
    try:
        yield stores
    finally:
        for store in stores:
            await store.close()


async def put(store: PostgresStore, domain: Domain) -> Domain:
    async with store.transaction() as tx:
        return await tx.put_domain(domain)


async def test_claims_and_leases_do_not_wait_for_a_writer_holding_the_counter(
    brokers: list[PostgresStore],
) -> None:
    a, b = brokers
    await put(a, make_domain("a.example.com", next_run_at=T0))
    await put(a, make_domain("b.example.com", next_run_at=T0))
    writing, release = asyncio.Event(), asyncio.Event()

    async def slow_writer() -> None:
        async with a.transaction() as tx:  # holds the revision counter until released
            await tx.put_domain(make_domain("c.example.com"))
            writing.set()
            await release.wait()

    writer = asyncio.create_task(slow_writer())
    try:
        await writing.wait()
        async with asyncio.timeout(PROMPTLY):
            assert await claim(b, "b", T0, 10) == ["a.example.com", "b.example.com"]
            assert await b.renew_leases("b", ["a.example.com"], T0, LEASE) == ["a.example.com"]
            await b.release("b", ["b.example.com"])
            assert await b.next_claim_time("b", T0, exclude=["a.example.com"]) == T0
            assert await b.take_lease("job:compaction", "b", T0, LEASE)
            await b.put_challenge("tok", "tok.k", "b", T0 + LEASE)
            assert await a.get_challenge("tok", T0) == "tok.k"
            await b.remove_challenge("tok", "b")
        assert not writer.done()
    finally:
        release.set()
        await writer


async def test_a_claim_skips_a_row_another_transaction_holds_instead_of_waiting(
    brokers: list[PostgresStore], postgres_dsn: str
) -> None:
    a, _ = brokers
    await put(a, make_domain("a.example.com", next_run_at=T0))
    await put(a, make_domain("b.example.com", next_run_at=T0 + SECOND))
    other = await asyncpg.connect(postgres_dsn)
    try:
        async with other.transaction():  # another broker's claim (or write) in progress
            await other.execute("SELECT 1 FROM domains WHERE name = 'a.example.com' FOR UPDATE")
            async with asyncio.timeout(PROMPTLY):
                assert await claim(a, "a", T0 + SECOND, 10) == ["b.example.com"]
        assert await claim(a, "a", T0 + SECOND, 10) == [
            "a.example.com",
            "b.example.com",
        ]
    finally:
        await other.close()


async def test_a_claim_never_changes_what_another_broker_has_cached(
    brokers: list[PostgresStore],
) -> None:
    """Lease columns are not domain columns: a cached domain stays valid across claims."""
    a, b = brokers
    stored = await put(a, make_domain("a.example.com", next_run_at=T0))
    assert await b.get_domain("a.example.com") == stored  # cached on b
    assert await claim(a, "a", T0, 10) == ["a.example.com"]
    assert await b.get_domain("a.example.com") == stored
    assert await a.current_revision() == stored.revision
