"""The event hub over a real SqliteStore: replay, then the live tail, heartbeats, compaction."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from certbroker.errors import OutOfRange, StoreUnavailable
from certbroker.events import EventHub, RevisionCompacted
from certbroker.model import Domain, Event, LetsEncryptState, Source
from certbroker.store.sqlite import SqliteStore

T0 = datetime(2026, 3, 1, tzinfo=UTC)
HEARTBEAT = 0.05
DEADLINE = 5.0


def make_domain(name: str, at: datetime = T0) -> Domain:
    return Domain(
        name=name,
        app="app",
        letsencrypt_enabled=True,
        le_state=LetsEncryptState.PENDING_DNS,
        serving=Source.NONE,
        created_at=T0,
        updated_at=at,
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = await SqliteStore.open(str(tmp_path / "events.sqlite3"))
    try:
        yield s
    finally:
        await s.close()


async def write(store: SqliteStore, count: int, at: datetime = T0) -> list[int]:
    revisions = []
    for _ in range(count):
        async with store.transaction() as tx:
            revision = await store.current_revision() + 1
            stored = await tx.put_domain(make_domain(f"d{revision}.example.com", at))
            revisions.append(stored.revision)
    return revisions


async def started(store: SqliteStore, window: int = 4096) -> EventHub:
    hub = EventHub(store, window=window)
    await hub.start()
    return hub


async def take_events(stream: AsyncIterator[Event | int], count: int) -> list[Event]:
    """The next ``count`` events, skipping heartbeats, within a deadline."""
    out: list[Event] = []
    async with asyncio.timeout(DEADLINE):
        while len(out) < count:
            item = await anext(stream)
            if isinstance(item, Event):
                out.append(item)
    return out


async def test_follow_replays_exactly_the_events_after_n_then_follows_live(
    store: SqliteStore,
) -> None:
    await write(store, 5)  # before the hub: only in the store's log
    hub = await started(store)
    try:
        async with aclosing(hub.follow(2, HEARTBEAT)) as stream:
            replayed = await take_events(stream, 3)
            assert [e.revision for e in replayed] == [3, 4, 5]
            assert [e.domain_name for e in replayed] == [
                "d3.example.com",
                "d4.example.com",
                "d5.example.com",
            ]
            live_writes = asyncio.create_task(write(store, 2))
            live = await take_events(stream, 2)
            assert [e.revision for e in live] == await live_writes == [6, 7]
            assert live[0].domain is not None and live[0].domain.revision == 6
    finally:
        await hub.stop()


async def test_follow_from_the_window(store: SqliteStore) -> None:
    hub = await started(store)
    try:
        await write(store, 5)
        async with asyncio.timeout(DEADLINE):
            while hub.revision < 5:
                await hub.wait_beyond(hub.revision, HEARTBEAT)
        async with aclosing(hub.follow(0, HEARTBEAT)) as stream:
            assert [e.revision for e in await take_events(stream, 5)] == [1, 2, 3, 4, 5]
        async with aclosing(hub.follow(3, HEARTBEAT)) as stream:
            assert [e.revision for e in await take_events(stream, 2)] == [4, 5]
    finally:
        await hub.stop()


async def test_a_follower_behind_the_window_reads_the_log(store: SqliteStore) -> None:
    hub = await started(store, window=3)
    try:
        await write(store, 10)
        async with aclosing(hub.follow(0, HEARTBEAT)) as stream:
            assert [e.revision for e in await take_events(stream, 10)] == list(range(1, 11))
    finally:
        await hub.stop()


async def test_heartbeats_carry_the_revision_when_idle(store: SqliteStore) -> None:
    await write(store, 2)
    hub = await started(store)
    try:
        async with aclosing(hub.follow(2, HEARTBEAT)) as stream:
            async with asyncio.timeout(DEADLINE):
                beats = [await anext(stream) for _ in range(3)]
            assert beats == [2, 2, 2]
            await write(store, 1)
            async with asyncio.timeout(DEADLINE):
                item = await anext(stream)
                while isinstance(item, int):
                    assert item == 2
                    item = await anext(stream)
            assert isinstance(item, Event) and item.revision == 3
            async with asyncio.timeout(DEADLINE):
                assert await anext(stream) == 3
    finally:
        await hub.stop()


async def test_resuming_from_before_the_compaction_point_is_refused(store: SqliteStore) -> None:
    await write(store, 3, at=T0)
    await write(store, 2, at=T0 + timedelta(days=10))
    assert await store.compact_events(T0 + timedelta(days=1)) == 3
    assert await store.compacted_through() == 3
    hub = await started(store)
    try:
        for after in (0, 2):
            async with aclosing(hub.follow(after, HEARTBEAT)) as stream:
                with pytest.raises(RevisionCompacted) as caught:
                    async with asyncio.timeout(DEADLINE):
                        await anext(stream)
            assert caught.value.reason == "REVISION_COMPACTED"
            assert isinstance(caught.value, OutOfRange)
        async with aclosing(hub.follow(3, HEARTBEAT)) as stream:
            assert [e.revision for e in await take_events(stream, 2)] == [4, 5]
    finally:
        await hub.stop()


async def test_resuming_behind_the_window_and_the_compaction_point_is_refused(
    store: SqliteStore,
) -> None:
    hub = await started(store, window=2)
    try:
        await write(store, 4, at=T0)
        await write(store, 2, at=T0 + timedelta(days=10))
        async with asyncio.timeout(DEADLINE):
            while hub.revision < 6:
                await hub.wait_beyond(hub.revision, HEARTBEAT)
        await store.compact_events(T0 + timedelta(days=1))
        async with aclosing(hub.follow(1, HEARTBEAT)) as stream:
            with pytest.raises(RevisionCompacted):
                async with asyncio.timeout(DEADLINE):
                    await anext(stream)
    finally:
        await hub.stop()


async def test_many_concurrent_followers_all_see_every_event(store: SqliteStore) -> None:
    await write(store, 3)
    hub = await started(store, window=16)
    total = 40

    async def follower(after: int) -> list[int]:
        async with aclosing(hub.follow(after, HEARTBEAT)) as stream:
            return [e.revision for e in await take_events(stream, total - after)]

    try:
        followers = [asyncio.create_task(follower(n % 4)) for n in range(60)]
        await asyncio.sleep(0)
        writers = [asyncio.create_task(write(store, 1)) for _ in range(total - 3)]
        await asyncio.gather(*writers)
        async with asyncio.timeout(DEADLINE):
            results = await asyncio.gather(*followers)
        for n, seen in enumerate(results):
            assert seen == list(range(n % 4 + 1, total + 1))
    finally:
        await hub.stop()


async def test_the_hub_revision_follows_commits(store: SqliteStore) -> None:
    await write(store, 2)
    hub = await started(store)
    try:
        assert hub.revision == 2
        await write(store, 1)
        async with asyncio.timeout(DEADLINE):
            assert await hub.wait_beyond(2, DEADLINE) == 3
    finally:
        await hub.stop()


async def test_replayed_events_carry_the_domain_as_of_their_revision(store: SqliteStore) -> None:
    hub = await started(store)
    try:
        async with store.transaction() as tx:
            first = await tx.put_domain(make_domain("a.example.com"))
        async with store.transaction() as tx:
            second = await tx.put_domain(replace(first, le_state=LetsEncryptState.CREATING))
        async with aclosing(hub.follow(0, HEARTBEAT)) as stream:
            events = await take_events(stream, 2)
        assert [e.domain for e in events] == [first, second]
    finally:
        await hub.stop()


class _Unreadable:
    """The real store, except that reading events fails while ``failing`` is set."""

    def __init__(self, store: SqliteStore) -> None:
        self._store = store
        self.failing = False
        self.tries = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)

    async def events_after(self, revision: int, limit: int) -> list[Event]:
        if self.failing:
            self.tries += 1
            raise StoreUnavailable(
                "the broker's database cannot be read or written; try again shortly",
                reason="STORE_IO_ERROR",
            )
        return await self._store.events_after(revision, limit)


class _Lagging:
    """The real store, except that the next ``stale`` event reads show nothing new (a
    read snapshot from before the commit, as SQLite keeps while a statement is active)."""

    def __init__(self, store: SqliteStore) -> None:
        self._store = store
        self.stale = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)

    async def events_after(self, revision: int, limit: int) -> list[Event]:
        if self.stale:
            self.stale -= 1
            return []
        return await self._store.events_after(revision, limit)


async def test_an_announced_commit_a_read_does_not_show_yet_is_read_again(
    store: SqliteStore,
) -> None:
    """Used to wait for the next commit, however long: watchers stalled on a quiet broker."""
    lagging = _Lagging(store)
    hub = EventHub(lagging)  # type: ignore[arg-type]
    await hub.start()
    try:
        lagging.stale = 2
        (revision,) = await write(store, 1)  # announced once, and nothing after it
        async with asyncio.timeout(DEADLINE):
            assert await hub.wait_beyond(0, DEADLINE) == revision
        assert lagging.stale == 0
    finally:
        await hub.stop()


async def test_a_store_that_cannot_be_read_is_retried_with_backoff_and_logged_once(
    store: SqliteStore, caplog: pytest.LogCaptureFixture
) -> None:
    """Used to be ten tracebacks a second, for as long as the database could not be read."""
    unreadable = _Unreadable(store)
    hub = EventHub(unreadable)  # type: ignore[arg-type]
    await hub.start()
    try:
        unreadable.failing = True
        (revision,) = await write(store, 1)
        await asyncio.sleep(1.0)  # retries at 0.1, 0.3, 0.7 s: a handful, not ten
        assert 1 <= unreadable.tries <= 5
        unreadable.failing = False
        async with asyncio.timeout(DEADLINE):
            while hub.revision < revision:  # nothing lost once it reads again
                await asyncio.sleep(0.01)
    finally:
        await hub.stop()
    records = [r for r in caplog.records if r.name == "certbroker.events"]
    assert len(records) == 1 and "STORE_IO_ERROR" in records[0].getMessage()
    assert not records[0].exc_info  # a known store failure: no traceback
