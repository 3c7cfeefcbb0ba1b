"""What only the PostgreSQL store does: several stores (as several brokers) on one database.

Revisions in commit order under concurrent writers, other brokers' commits reaching
this broker's event hub and cache (LISTEN/NOTIFY, with the poll as a safety net),
and compaction by another broker seen before a gap is.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import timedelta

import asyncpg
import pytest

from certbroker.events import EventHub, RevisionCompacted
from certbroker.model import Domain, LetsEncryptState
from certbroker.store.postgres import EVENTS_CHANNEL, STORE_CHANNEL, PostgresStore
from tests.store.records import T0, make_domain

DAY = timedelta(days=1)


async def put(store: PostgresStore, domain: Domain) -> Domain:
    async with store.transaction() as tx:
        return await tx.put_domain(domain)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    """Poll ``check`` until it holds; fail at the deadline (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


@pytest.fixture
async def brokers(postgres_dsn: str) -> AsyncIterator[list[PostgresStore]]:
    """Three stores on one database, each with its own pool and listener: three brokers.

    The safety-net poll is slowed right down, so what arrives quickly came by NOTIFY.
    """
    stores = [await PostgresStore.open(postgres_dsn, poll_interval=60) for _ in range(3)]
    try:
        yield stores
    finally:
        for store in stores:
            await store.close()


class GapWatcher:
    """Polls the log as a watcher resumes it, and records anything a watcher must never see.

    A watcher that has read up to N asks for ``revision > N``: if N+2 is visible before
    N+1, it moves past N+1 and never gets it. So every batch must start at N+1 and be
    contiguous.
    """

    def __init__(self, conn: asyncpg.Connection[asyncpg.Record]) -> None:
        self._conn = conn
        self.position = 0
        self.violations: list[str] = []

    async def read(self) -> None:
        rows = await self._conn.fetch(
            "SELECT revision FROM events WHERE revision > $1 ORDER BY revision", self.position
        )
        revisions = [int(r[0]) for r in rows]
        expected = list(range(self.position + 1, self.position + 1 + len(revisions)))
        if revisions != expected:
            self.violations.append(f"after {self.position} saw {revisions[:5]}")
        if revisions:
            self.position = revisions[-1]


async def test_the_gap_watcher_catches_a_sequence_committing_out_of_order(
    postgres_dsn: str,
) -> None:
    """The check below is able to fail: a plain sequence shows N+1 before N."""
    setup = await asyncpg.connect(postgres_dsn)
    first = await asyncpg.connect(postgres_dsn)
    second = await asyncpg.connect(postgres_dsn)
    try:
        await setup.execute("CREATE TABLE events (revision BIGSERIAL PRIMARY KEY)")
        watcher = GapWatcher(setup)
        await first.execute("BEGIN; INSERT INTO events DEFAULT VALUES")  # takes 1
        await second.execute("BEGIN; INSERT INTO events DEFAULT VALUES; COMMIT")  # 2 commits first
        await watcher.read()  # sees 2 without 1
        await first.execute("COMMIT")
        await watcher.read()
        assert watcher.violations == ["after 0 saw [2]"]
        assert watcher.position == 2  # and revision 1, committed now, it will never read
    finally:
        for conn in (setup, first, second):
            await conn.close()


async def test_a_later_writer_waits_for_the_earlier_commit(
    brokers: list[PostgresStore], postgres_dsn: str
) -> None:
    a, b, _ = brokers
    admin = await asyncpg.connect(postgres_dsn)
    try:
        watcher = GapWatcher(admin)
        release = asyncio.Event()

        async def slow_writer() -> Domain:
            async with a.transaction() as tx:
                stored = await tx.put_domain(make_domain("a.example.com"))
                await release.wait()
            return stored

        first = asyncio.create_task(slow_writer())
        await eventually(lambda: _waiting_for_lock(admin, count=0, holding=1))
        second = asyncio.create_task(put(b, make_domain("b.example.com")))
        # b's transaction waits on the counter row a holds: it cannot even begin
        await eventually(lambda: _waiting_for_lock(admin, count=1, holding=1))
        await watcher.read()
        assert watcher.position == 0
        assert not second.done()

        release.set()
        assert (await first).revision == 1
        assert (await second).revision == 2
        await watcher.read()
        assert (watcher.position, watcher.violations) == (2, [])
    finally:
        await admin.close()


async def test_a_transaction_begun_while_another_is_open_reads_after_it_commits(
    brokers: list[PostgresStore], postgres_dsn: str
) -> None:
    """Two brokers add one name for two apps at once: the second sees the first's row.

    The writers' lock is taken when a transaction begins, so the second one's read
    waits for the first commit; were it taken at the first write, both would read
    "no such domain" and the second would overwrite the first's claim.
    """
    a, b, _ = brokers
    admin = await asyncpg.connect(postgres_dsn)
    try:
        release = asyncio.Event()
        seen_by_b: list[Domain | None] = []

        async def first() -> None:
            async with a.transaction() as tx:
                assert await tx.get_domain("x.example.com") is None
                await release.wait()
                await tx.put_domain(make_domain("x.example.com", app="app-a"))

        async def second() -> None:
            async with b.transaction() as tx:
                found = await tx.get_domain("x.example.com")
                seen_by_b.append(found)
                if found is None:
                    await tx.put_domain(make_domain("x.example.com", app="app-b"))

        one = asyncio.create_task(first())
        await eventually(lambda: _waiting_for_lock(admin, count=0, holding=1))
        two = asyncio.create_task(second())
        await eventually(lambda: _waiting_for_lock(admin, count=1, holding=1))
        assert seen_by_b == []  # b has not even read yet
        release.set()
        await asyncio.gather(one, two)
        (found,) = seen_by_b
        assert found is not None and found.app == "app-a"
        stored = await b.get_domain("x.example.com")
        assert stored is not None and stored.app == "app-a"
    finally:
        await admin.close()


async def _waiting_for_lock(
    admin: asyncpg.Connection[asyncpg.Record], *, count: int, holding: int
) -> bool:
    """``count`` broker sessions wait on a lock while ``holding`` sit in an open transaction."""
    rows = await admin.fetch(
        "SELECT wait_event_type, state FROM pg_stat_activity "
        "WHERE application_name = 'certbroker' AND datname = current_database()"
    )
    waiting = sum(1 for r in rows if r["wait_event_type"] == "Lock")
    in_tx = sum(1 for r in rows if (r["state"] or "").startswith("idle in transaction"))
    return waiting == count and in_tx == holding


async def test_concurrent_writers_on_several_brokers_never_show_a_gap_filled_later(
    postgres_dsn: str,
) -> None:
    """Four brokers, several writers each; a watcher polling all along sees 1, 2, 3, ... only."""
    stores = [await PostgresStore.open(postgres_dsn, poll_interval=60) for _ in range(4)]
    reader = await asyncpg.connect(postgres_dsn)
    watcher = GapWatcher(reader)
    done = asyncio.Event()
    writes_per_writer = 8

    async def write(store: PostgresStore, writer: int) -> list[int]:
        revisions = []
        for i in range(writes_per_writer):
            async with store.transaction() as tx:
                d = await tx.put_domain(make_domain(f"w{writer}-{i}.example.com"))
                # a moment between the event and the commit: where a sequence would let a
                # later transaction commit first
                await asyncio.sleep(random.uniform(0, 0.003))
                if i % 3 == 0:
                    d = await tx.put_domain(replace(d, le_state=LetsEncryptState.CREATING))
            revisions.append(d.revision)
        return revisions

    async def watch() -> None:
        while not done.is_set():
            await watcher.read()

    try:
        watching = asyncio.create_task(watch())
        writers = [
            write(store, n * 10 + k) for n, store in enumerate(stores) for k in range(3)
        ]  # three writer tasks per broker (each broker runs its writes one at a time)
        results = await asyncio.gather(*writers)
        done.set()
        await watching
        await watcher.read()
    finally:
        for store in stores:
            await store.close()
        await reader.close()
    per_writer = writes_per_writer + len(range(0, writes_per_writer, 3))
    total = len(writers) * per_writer
    assert watcher.violations == []
    assert watcher.position == total
    written = sorted(rev for r in results for rev in r)
    assert len(set(written)) == len(written)  # no revision handed out twice


async def test_a_write_through_one_broker_reaches_a_hub_on_another(
    brokers: list[PostgresStore],
) -> None:
    a, b, c = brokers
    hub_b, hub_c = EventHub(b), EventHub(c)
    await hub_b.start()
    await hub_c.start()
    try:
        stored = await put(a, make_domain("a.example.com"))
        for hub in (hub_b, hub_c):
            assert await hub.wait_beyond(0, 15) == stored.revision  # by NOTIFY: the poll is 60 s
            (event,) = await hub.events_after(0)
            assert (event.revision, event.domain) == (stored.revision, stored)

        # and back: b's write reaches a hub on a, in order after a's
        hub_a = EventHub(a)
        await hub_a.start()
        try:
            later = await put(b, replace(stored, le_state=LetsEncryptState.CREATING))
            assert await hub_a.wait_beyond(stored.revision, 15) == later.revision
            followed = []
            async for item in hub_c.follow(0, heartbeat=0.05):
                if isinstance(item, int):
                    continue
                followed.append(item.revision)
                if item.revision == later.revision:
                    break
            assert followed == [1, 2]
        finally:
            await hub_a.stop()
    finally:
        await hub_b.stop()
        await hub_c.stop()


async def test_another_brokers_write_replaces_the_cached_row(
    brokers: list[PostgresStore],
) -> None:
    a, b, _ = brokers
    v1 = await put(a, make_domain("a.example.com"))
    assert await b.get_domain("a.example.com") == v1
    assert b.cached_domain("a.example.com") == v1  # b now serves it from memory
    v2 = await put(a, replace(v1, le_state=LetsEncryptState.CREATING, updated_at=T0 + DAY))

    async def fresh() -> bool:
        return await b.get_domain("a.example.com") == v2

    await eventually(fresh)  # by NOTIFY: the poll is 60 s away
    async with a.transaction() as tx:
        await tx.delete_domain(v2)

    async def gone() -> bool:
        return await b.get_domain("a.example.com") is None

    await eventually(gone)


async def test_a_schedule_moved_by_another_broker_replaces_the_cached_row(
    brokers: list[PostgresStore],
) -> None:
    """put_schedule writes no event; a notification of its own drops the other copies."""
    a, b, _ = brokers
    v1 = await put(a, make_domain("a.example.com", next_run_at=T0))
    assert await b.get_domain("a.example.com") == v1  # cached on b
    moved = replace(v1, next_run_at=T0 + DAY)
    async with a.transaction() as tx:
        await tx.put_schedule(moved)

    async def fresh() -> bool:
        return await b.get_domain("a.example.com") == moved

    await eventually(fresh)  # the poll is 60 s away: this came by notification
    assert a.cached_domain("a.example.com") == moved  # a's own notification left a's copy


async def test_a_transaction_reads_the_row_another_broker_just_wrote(
    brokers: list[PostgresStore],
) -> None:
    """Never the cache: a write based on a stale row would undo the other broker's."""
    a, b, _ = brokers
    v1 = await put(a, make_domain("a.example.com"))
    assert await b.get_domain("a.example.com") == v1  # cached on b
    b._on_listener_lost(None)  # b hears nothing more for now (as when the listener drops)
    b._domains["a.example.com"] = v1  # and holds a stale row
    v2 = await put(a, replace(v1, le_state=LetsEncryptState.CREATING))
    async with b.transaction() as tx:
        assert await tx.get_domain("a.example.com") == v2


async def test_a_missed_notification_is_caught_by_the_poll(postgres_dsn: str) -> None:
    a = await PostgresStore.open(postgres_dsn, poll_interval=60)
    b = await PostgresStore.open(postgres_dsn, poll_interval=0.2)
    hub = EventHub(b)
    await hub.start()
    try:
        assert b._listener is not None
        await b._listener.remove_listener(EVENTS_CHANNEL, b._on_events)  # b hears nothing
        stored = await put(a, make_domain("a.example.com"))
        assert await hub.wait_beyond(0, 15) == stored.revision
        assert [e.revision for e in await hub.events_after(0)] == [stored.revision]
    finally:
        await hub.stop()
        await a.close()
        await b.close()


async def test_a_dropped_listen_connection_is_reopened(postgres_dsn: str) -> None:
    """The LISTEN connection is cut: the cache goes cold, then listening resumes."""
    a = await PostgresStore.open(postgres_dsn, poll_interval=60)
    b = await PostgresStore.open(postgres_dsn, poll_interval=60)
    admin = await asyncpg.connect(postgres_dsn)
    hub = EventHub(b)
    await hub.start()
    try:
        v1 = await put(a, make_domain("a.example.com"))
        assert await hub.wait_beyond(0, 15) == v1.revision
        assert await b.get_domain("a.example.com") == v1
        listener = b._listener
        assert listener is not None
        await admin.execute("SELECT pg_terminate_backend($1)", listener.get_server_pid())

        def reopened() -> bool:
            return b._listener is not None and b._listener is not listener

        await eventually(_is_true(reopened))
        # listening again: with the poll a minute away, only a notification is this quick
        v2 = await put(a, replace(v1, le_state=LetsEncryptState.CREATING))
        assert await hub.wait_beyond(v1.revision, 15) == v2.revision
        await eventually(_is_true(lambda: b.cached_domain("a.example.com") != v1))
        assert await b.get_domain("a.example.com") == v2
    finally:
        await hub.stop()
        await admin.close()
        await a.close()
        await b.close()


def _is_true(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def run() -> bool:
        return check()

    return run


async def test_compaction_by_another_broker_is_never_seen_as_a_gap(
    brokers: list[PostgresStore],
) -> None:
    a, b, _ = brokers
    assert b._listener is not None
    await b._listener.remove_listener(STORE_CHANNEL, b._on_store)  # b misses a's notification
    d = await put(a, make_domain("a.example.com"))
    for i in range(1, 5):
        d = await put(a, replace(d, updated_at=T0 + i * DAY))  # revisions 2..5
    assert await a.compact_events(T0 + 2 * DAY + timedelta(seconds=1)) == 3
    assert await b.compacted_through() == 0  # and its poll is a minute away
    # revision 1 is gone and 4 is there: b says nothing rather than skip 1 to 3 ...
    assert await b.events_after(0, 10) == []
    # ... and knows why, so its hub tells the watcher to re-snapshot
    assert await b.compacted_through() == 3
    hub = EventHub(b)
    await hub.start()
    try:
        with pytest.raises(RevisionCompacted):
            await hub.events_after(0)
        assert [e.revision for e in await hub.events_after(3)] == [4, 5]
    finally:
        await hub.stop()


async def test_compaction_is_announced_to_the_other_brokers(
    brokers: list[PostgresStore],
) -> None:
    a, b, c = brokers
    d = await put(a, make_domain("a.example.com"))
    await put(a, replace(d, updated_at=T0 + DAY))
    assert await a.compact_events(T0 + 10 * DAY) == 1
    for other in (b, c):
        await eventually(lambda other=other: _compacted(other, 1))  # type: ignore[misc]


async def _compacted(store: PostgresStore, through: int) -> bool:
    return await store.compacted_through() == through
