"""Several brokers spending one bucket of the limits ledger at once never overspend it.

Three stores on one PostgreSQL database (three brokers: a pool each) race to
reserve orders from a bucket with ``K`` tokens left: the account's new-orders
bucket, and one registered domain's certificates bucket. Exactly ``K`` win;
the others are held (a ``Hold``), none fails. What serialises them is the
store's write transaction (the revision counter lock taken at BEGIN), read
committed so the spends read after the lock include every committed one
(certbroker.store.postgres, "Read committed, always"): so the race is run with
the database's default isolation set as a DBA might set it. Before the store
pinned READ COMMITTED, REPEATABLE READ overspent (5 of 3) and SERIALIZABLE
failed racing writers with serialization errors.

The control shows the race is real in this harness: checking the bucket
outside the spending transaction (a per-process view of the ledger, as the
scheduler's ``budget`` is) lets several brokers take the same last token.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from certbroker.limits import (
    ACCOUNT_ORDERS,
    REGISTERED_DOMAIN,
    Bucket,
    Hold,
    Limits,
    LimitsLedger,
    OrderRequest,
)
from certbroker.store.postgres import PostgresStore
from certbroker.store.sqlite import SqliteStore

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
BROKERS = 3
ORDERS = 30  # racing reservations, spread over the brokers
K = 3  # tokens left in the contested bucket
CAPACITY = 50
LIMITS = Limits(
    account_orders=Bucket(CAPACITY, timedelta(hours=3)),
    registered_domain=Bucket(CAPACITY, timedelta(days=7)),
)
AnyStore = PostgresStore | SqliteStore


def new_name(i: int, shared_registered_domain: bool) -> OrderRequest:
    """A first certificate: its own registered domain, or one under ``shop.test``."""
    registered = "shop.test" if shared_registered_domain else f"shop{i}.test"
    name = f"d{i}.{registered}"
    return OrderRequest(name, "app", registered, (name,), False, None)


@pytest.fixture(params=["read committed", "repeatable read", "serializable"])
async def brokers(
    request: pytest.FixtureRequest, postgres_dsn: str
) -> AsyncIterator[list[AnyStore]]:
    """Three brokers on a database whose default isolation is the parameter."""
    conn = await asyncpg.connect(postgres_dsn)
    try:
        database = postgres_dsn.rsplit("/", 1)[1]
        await conn.execute(
            f"ALTER DATABASE \"{database}\" SET default_transaction_isolation = '{request.param}'"
        )
    finally:
        await conn.close()
    stores: list[AnyStore] = [
        await PostgresStore.open(postgres_dsn, poll_interval=60) for _ in range(BROKERS)
    ]
    try:
        yield stores
    finally:
        for store in stores:
            await store.close()


async def spend_down(store: AnyStore, bucket: str, key: str) -> None:
    """Leave ``K`` tokens in ``bucket``/``key`` (``CAPACITY - K`` spent at ``T0``)."""
    async with store.transaction() as tx:
        for i in range(CAPACITY - K):
            await tx.add_limit_spend(bucket, key, f"earlier{i}.test", T0)


async def race(stores: list[AnyStore], shared: bool, *, replacements: bool = False) -> list[str]:
    """Every broker reserves its share of ``ORDERS`` at once; what each attempt got.

    ``replacements``: every other attempt is a replacement order (``reorder``), which
    spends a new-orders token too."""
    ledger = LimitsLedger(LIMITS)
    start = asyncio.Event()

    async def attempt(i: int) -> str:
        store, request = stores[i % len(stores)], new_name(i, shared)
        await start.wait()
        try:
            async with store.transaction() as tx:
                if replacements and i % 2:
                    hold = await ledger.reorder(tx, request, T0)
                else:
                    hold = await ledger.reserve(tx, request, T0)
        except Exception as error:  # the outcome says what failed (a serialization error)
            return type(error).__name__
        return "held" if isinstance(hold, Hold) else "reserved"

    tasks = [asyncio.create_task(attempt(i)) for i in range(ORDERS)]
    await asyncio.sleep(0)
    start.set()
    return await asyncio.gather(*tasks)


async def spent(store: AnyStore, bucket: str, key: str) -> int:
    return len(await store.limit_spends(bucket, key, T0 - timedelta(seconds=1), 10 * CAPACITY))


async def test_brokers_racing_for_the_last_account_tokens_take_exactly_those(
    brokers: list[AnyStore],
) -> None:
    await spend_down(brokers[0], ACCOUNT_ORDERS, "")
    outcomes = await race(brokers, shared=False)
    assert sorted(outcomes) == ["held"] * (ORDERS - K) + ["reserved"] * K
    assert await spent(brokers[1], ACCOUNT_ORDERS, "") == CAPACITY


async def test_replacement_orders_race_for_the_same_account_tokens(
    brokers: list[AnyStore],
) -> None:
    await spend_down(brokers[0], ACCOUNT_ORDERS, "")
    outcomes = await race(brokers, shared=False, replacements=True)
    assert sorted(outcomes) == ["held"] * (ORDERS - K) + ["reserved"] * K
    assert await spent(brokers[2], ACCOUNT_ORDERS, "") == CAPACITY


async def test_brokers_racing_for_a_registered_domains_last_tokens_take_exactly_those(
    brokers: list[AnyStore],
) -> None:
    await spend_down(brokers[0], REGISTERED_DOMAIN, "shop.test")
    outcomes = await race(brokers, shared=True)
    assert sorted(outcomes) == ["held"] * (ORDERS - K) + ["reserved"] * K
    assert await spent(brokers[1], REGISTERED_DOMAIN, "shop.test") == CAPACITY
    # the account bucket was charged by the winners only
    assert await spent(brokers[2], ACCOUNT_ORDERS, "") == K


async def test_brokers_sharing_one_sqlite_store_take_exactly_the_tokens_left(
    tmp_path: Path,
) -> None:
    """SQLite: one store per file (``DatabaseLock``: a second serving process is
    refused), its writes one at a time, so schedulers sharing it cannot overspend."""
    store = await SqliteStore.open(str(tmp_path / "shared.sqlite3"))
    try:
        await spend_down(store, REGISTERED_DOMAIN, "shop.test")
        outcomes = await race([store] * BROKERS, shared=True)
        assert sorted(outcomes) == ["held"] * (ORDERS - K) + ["reserved"] * K
        assert await spent(store, REGISTERED_DOMAIN, "shop.test") == CAPACITY
    finally:
        await store.close()


async def test_control_a_check_outside_the_spending_transaction_overspends(
    postgres_dsn: str,
) -> None:
    """Why the check must be in the transaction that spends: the same race, each broker
    reading the bucket first (``outlook`` on the store, as a per-process view would)
    and spending afterwards in a transaction of its own, takes more than ``K``."""
    stores = [await PostgresStore.open(postgres_dsn, poll_interval=60) for _ in range(BROKERS)]
    try:
        await spend_down(stores[0], ACCOUNT_ORDERS, "")
        ledger = LimitsLedger(LIMITS)
        start = asyncio.Event()

        async def attempt(i: int) -> bool:
            store, request = stores[i % BROKERS], new_name(i, False)
            await start.wait()
            if (await ledger.outlook(store, request, T0)).hold is not None:
                return False
            async with store.transaction() as tx:
                await tx.add_limit_spend(ACCOUNT_ORDERS, "", request.domain, T0)
            return True

        tasks = [asyncio.create_task(attempt(i)) for i in range(ORDERS)]
        await asyncio.sleep(0)
        start.set()
        taken = sum(await asyncio.gather(*tasks))
        assert taken > K
        assert await spent(stores[0], ACCOUNT_ORDERS, "") > CAPACITY
    finally:
        for store in stores:
            await store.close()
