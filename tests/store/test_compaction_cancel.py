"""Compaction stopped half-way (the broker stopping, the compactor cancelled) leaves no
transaction behind on the writer, and the next compaction and write go through.

A compaction cancelled while its ``BEGIN IMMEDIATE`` was in flight on aiosqlite's
thread used to leave that transaction open after the write lock was released: the
next compaction failed ("cannot start a transaction within a transaction"), and a
``ROLLBACK`` statement in the error path could fail on its own ("cannot rollback -
no transaction is active"), each a traceback from the compactor.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from certbroker.model import EventType
from certbroker.store.sqlite import SqliteStore

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


class _StallingBegin:
    """The writer, except that a caller awaiting ``BEGIN IMMEDIATE`` waits until cancelled.

    The statement itself runs on the connection's thread as usual: exactly what
    happens when a task is cancelled while aiosqlite executes for it.
    """

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn
        self.stall = False
        self.began = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def execute(self, sql: str, parameters: Any = None) -> Any:
        if self.stall and sql.strip().upper() == "BEGIN IMMEDIATE":
            return self._stalled(self._conn.execute(sql, parameters))
        return self._conn.execute(sql, parameters)

    async def _stalled(self, statement: Any) -> None:
        await statement  # BEGIN has run: the writer is in a transaction now
        self.began.set()
        await asyncio.Event().wait()  # until cancelled


@pytest.fixture
async def stalling(tmp_path: Path) -> AsyncIterator[tuple[SqliteStore, _StallingBegin]]:
    wrappers: list[_StallingBegin] = []

    def wrap(conn: aiosqlite.Connection) -> aiosqlite.Connection:
        wrappers.append(_StallingBegin(conn))
        return wrappers[-1]  # type: ignore[return-value]

    store = await SqliteStore.open(str(tmp_path / "broker.sqlite3"), wrap_writer=wrap)
    try:
        yield store, wrappers[0]
    finally:
        await store.close()


async def _event(store: SqliteStore, at: datetime) -> None:
    async with store.transaction() as tx:
        await tx.add_challenge_event("", EventType.CHALLENGE_ADDED, "t", "k", at)


@pytest.mark.parametrize("which", ["events", "certificates"])
async def test_a_compaction_cancelled_during_begin_leaves_no_transaction_open(
    stalling: tuple[SqliteStore, _StallingBegin], tmp_path: Path, which: str
) -> None:
    store, writer = stalling
    for minutes in range(3):
        await _event(store, T0 + timedelta(minutes=minutes))
    later = T0 + timedelta(days=1)

    async def compact() -> int:
        if which == "events":
            return await store.compact_events(later)
        return await store.compact_certificates(later, later)

    writer.stall = True
    task = asyncio.create_task(compact())
    await asyncio.wait_for(writer.began.wait(), timeout=10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    writer.stall = False

    # The writer holds no transaction, so another process can take the write lock ...
    await store.get_domain("nothing.example.com")  # a round trip after the cancelled ones
    assert not writer.in_transaction
    other = sqlite3.connect(tmp_path / "broker.sqlite3", isolation_level=None, timeout=0)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
    finally:
        other.close()
    # ... and the next compaction and write go through.
    assert await store.compact_events(later) == 2
    assert await store.compact_certificates(later, later) == 0
    await _event(store, later)
    assert [e.at for e in await store.events_after(0, 10)] == [T0 + timedelta(minutes=2), later]
