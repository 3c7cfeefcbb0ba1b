"""What only the SQLite store does: its schema on file, WAL mode, the query plans.

The behaviour both backends share is in test_contract.py.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from certbroker.model import Domain, EventType, LetsEncryptState, Source
from certbroker.store.base import NewCertificate, PendingOrder
from certbroker.store.sqlite import SqliteStore
from tests.store.records import make_cert, make_domain, raw

T0 = datetime(2026, 3, 1, 8, 0, 0, 123456, tzinfo=UTC)
DAY = timedelta(days=1)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "broker.sqlite3"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[SqliteStore]:
    s = await SqliteStore.open(str(db_path))
    try:
        yield s
    finally:
        await s.close()


async def put(store: SqliteStore, domain: Domain) -> Domain:
    async with store.transaction() as tx:
        return await tx.put_domain(domain)


async def test_migrations_are_applied_once(db_path: Path) -> None:
    first = await SqliteStore.open(str(db_path))
    await first.close()
    applied = raw(db_path, "SELECT version, applied_at FROM schema_migrations")
    folder = resources.files("certbroker.store") / "migrations"
    shipped = sorted(int(f.name.split("_")[0]) for f in folder.iterdir() if f.name.endswith(".sql"))
    assert shipped[:3] == [1, 2, 3]
    assert [row[0] for row in applied] == shipped
    tables = {r[0] for r in raw(db_path, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"domains", "events", "certificates", "issuances", "orders", "meta"} <= tables

    again = await SqliteStore.open(str(db_path))  # would fail on CREATE TABLE if re-run
    await again.close()
    assert raw(db_path, "SELECT version, applied_at FROM schema_migrations") == applied


async def test_the_file_is_in_wal_mode(store: SqliteStore, db_path: Path) -> None:
    assert raw(db_path, "PRAGMA journal_mode") == [("wal",)]


async def test_due_names_uses_the_partial_index(store: SqliteStore, db_path: Path) -> None:
    now = T0 + DAY
    for i in range(4):
        await put(store, make_domain(f"d{i}.example.com", next_run_at=now - i * DAY))
    busy = {"d3.example.com", "d1.example.com"}
    statements: list[str] = []
    await store._reader.set_trace_callback(statements.append)
    try:
        await store.due_names(now, 5, exclude=busy)
    finally:
        await store._reader.set_trace_callback(None)
    (query,) = [s for s in statements if "FROM domains" in s]
    plan = " ".join(str(row[-1]) for row in raw(db_path, f"EXPLAIN QUERY PLAN {query}"))
    assert "USING INDEX domains_due" in plan  # idle domains cost nothing


async def test_due_domains_uses_the_partial_index(store: SqliteStore, db_path: Path) -> None:
    for i in range(20):
        await put(store, make_domain(f"d{i}.example.com", next_run_at=T0 + i * DAY))
    statements: list[str] = []
    await store._reader.set_trace_callback(statements.append)
    try:
        await store.due_domains(T0 + DAY, 5)
    finally:
        await store._reader.set_trace_callback(None)
    (query,) = [s for s in statements if "FROM domains" in s]
    plan = " ".join(str(row[-1]) for row in raw(db_path, f"EXPLAIN QUERY PLAN {query}"))
    # a range search on the partial index, already in next_run_at order
    assert "SEARCH domains USING INDEX domains_due (next_run_at<?)" in plan
    assert "SCAN" not in plan
    assert "TEMP B-TREE" not in plan


async def test_the_family_lookups_search_indexes_only(store: SqliteStore, db_path: Path) -> None:
    """They run holding the write lock: at 100,000 domains a scan stalled every writer.
    Another app's covered rows are the two ranges of app around the caller's in
    domains_exact_parent, so an app's own names under its new wildcard are not walked
    either, even when the statistics say most rows are there."""
    async with store.transaction() as tx:
        for i in range(2000):
            await tx.put_domain(make_domain(f"d{i}.shop.example", app="mine" if i % 50 else "x"))
    raw(db_path, "ANALYZE")
    statements: list[str] = []
    await store._writer.set_trace_callback(statements.append)
    try:
        async with store.transaction() as tx:
            names = ("shop.example", "*.shop.example", "*.example")
            await tx.family_rows(names, "shop.example", "mine", 1)
    finally:
        await store._writer.set_trace_callback(None)
    (query,) = [s for s in statements if "exact_parent" in s]
    plan = " ".join(str(row[-1]) for row in raw(db_path, f"EXPLAIN QUERY PLAN {query}"))
    assert "USING INDEX sqlite_autoindex_domains_1 (name=?)" in plan
    assert "USING INDEX domains_exact_parent (exact_parent=? AND app>?)" in plan
    assert "USING INDEX domains_exact_parent (exact_parent=? AND app<?)" in plan
    assert "SCAN domains" not in plan
    assert "TEMP B-TREE" not in plan


# --- a page costs a fixed number of queries ------------------------------------------------


async def _traced(store: SqliteStore, work: Callable[[], Awaitable[object]]) -> list[str]:
    statements: list[str] = []
    await store._reader.set_trace_callback(statements.append)
    try:
        await work()
    finally:
        await store._reader.set_trace_callback(None)
    return statements


async def test_load_keys_reads_many_ids_in_a_few_queries(store: SqliteStore) -> None:
    async with store.transaction() as tx:
        info = await tx.add_certificate(
            NewCertificate("a.example.com", Source.CUSTOM, make_cert("a.example.com"), b"k")
        )
    asked = [info.id, *range(info.id + 1, info.id + 1200)]
    statements = await _traced(store, lambda: store.load_keys(asked))
    assert len(statements) == 3  # slices of 500 ids (SQLite's bound-value limit), not 1,200


async def test_list_domains_reads_the_page_certificates_in_one_query(db_path: Path) -> None:
    store = await SqliteStore.open(str(db_path))
    try:
        for i in range(6):
            name = f"d{i}.example.com"
            async with store.transaction() as tx:
                custom = await tx.add_certificate(
                    NewCertificate(name, Source.CUSTOM, make_cert(name, f"2{i}"), b"2")
                )
                await tx.put_domain(make_domain(name, custom_cert=custom))
    finally:
        await store.close()
    store = await SqliteStore.open(str(db_path))  # nothing cached
    try:
        statements = await _traced(store, lambda: store.list_domains(None, "", 10))
    finally:
        await store.close()
    assert len(statements) == 2  # the rows, then their 6 certificates together
    assert "FROM certificates WHERE id IN" in statements[1]


async def test_claims_and_the_next_claim_time_use_the_indexes(
    store: SqliteStore, db_path: Path
) -> None:
    """At 100,000 domains neither may scan them: a claim looks its names up by key, the
    next claim time walks the due index (in order, stopping at once) and the leased one."""
    for i in range(20):
        await put(store, make_domain(f"d{i}.example.com", next_run_at=T0 + i * DAY))
    writes: list[str] = []
    reads: list[str] = []
    await store._writer.set_trace_callback(writes.append)
    await store._reader.set_trace_callback(reads.append)
    try:
        await store.claim_due("one", ["d0.example.com", "d1.example.com"], T0 + DAY, DAY)
        await store.next_claim_time("one", T0, exclude=["d1.example.com"])
    finally:
        await store._writer.set_trace_callback(None)
        await store._reader.set_trace_callback(None)
    (claim,) = [s for s in writes if s.startswith("UPDATE domains")]
    plan = " ".join(str(row[-1]) for row in raw(db_path, f"EXPLAIN QUERY PLAN {claim}"))
    assert "USING INDEX sqlite_autoindex_domains_1 (name=?)" in plan
    assert "SCAN" not in plan
    (nxt,) = [s for s in reads if "lease_until" in s]
    plan = " ".join(str(row[-1]) for row in raw(db_path, f"EXPLAIN QUERY PLAN {nxt}"))
    assert "USING INDEX domains_due" in plan
    assert "USING INDEX domains_leased (lease_until>?)" in plan
    assert "SCAN domains " not in plan + " "


async def test_a_read_in_progress_does_not_hide_commits_from_the_next_read(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite keeps a connection's snapshot while any statement on it is active, and
    aiosqlite runs execute, fetch and close as separate jobs: a read paused between them
    (here: held before its fetch) made every read interleaved there see the database from
    before commits that had already returned, e.g. the event hub's (a watcher then waited
    for the next commit). Reads are now one ``execute_fetchall`` job each."""
    await put(store, make_domain("a.example.com"))
    held, release, first = asyncio.Event(), asyncio.Event(), [True]
    fetchone = aiosqlite.Cursor.fetchone

    async def held_fetchone(cursor: aiosqlite.Cursor) -> Any:
        if first[0] and cursor._conn is store._reader:  # the first reader fetch only
            first[0] = False
            held.set()
            await release.wait()
        return await fetchone(cursor)

    monkeypatch.setattr(aiosqlite.Cursor, "fetchone", held_fetchone)
    reading = asyncio.create_task(store.get_domain("a.example.com"))
    await asyncio.wait(
        [reading, asyncio.create_task(held.wait())], return_when=asyncio.FIRST_COMPLETED
    )
    try:
        async with asyncio.timeout(10):  # the old reads also stalled the writer here
            written = await put(store, make_domain("b.example.com"))
            assert await store.current_revision() == written.revision
            events = await store.events_after(written.revision - 1, 10)
            assert [e.revision for e in events] == [written.revision]
    finally:
        release.set()
        await reading


async def _history(store: SqliteStore, name: str) -> None:
    """An addition with a certificate, an update, a challenge event and the removal."""
    async with store.transaction() as tx:
        custom = await tx.add_certificate(
            NewCertificate(name, Source.CUSTOM, make_cert(name, "3a"), b"k")
        )
        added = await tx.put_domain(make_domain(name, custom_cert=custom))
    async with store.transaction() as tx:
        updated = await tx.put_domain(replace(added, serving=Source.CUSTOM, updated_at=T0 + DAY))
        await tx.add_challenge_event(name, EventType.CHALLENGE_ADDED, "tok", "tok.ka", T0)
    async with store.transaction() as tx:
        await tx.delete_domain(replace(updated, updated_at=T0 + 2 * DAY))


async def test_events_just_committed_are_read_without_a_query_and_as_the_log_has_them(
    db_path: Path,
) -> None:
    """The event hub reads after every commit: its own commits' rows come from memory
    (a query is a thread hop), decoded exactly as the log's rows are."""
    store = await SqliteStore.open(str(db_path))
    try:
        await _history(store, "a.example.com")
        statements = await _traced(store, lambda: store.events_after(0, 100))
        assert not [s for s in statements if "FROM events" in s]  # no query of the log
        recent_events = await store.events_after(0, 100)
        assert await store.events_after(1, 2) == recent_events[1:3]  # a page of them
    finally:
        await store.close()
    reopened = await SqliteStore.open(str(db_path))  # nothing in memory: the log
    try:
        statements = await _traced(reopened, lambda: reopened.events_after(0, 100))
        assert [s for s in statements if "FROM events" in s]
        assert await reopened.events_after(0, 100) == recent_events
        assert [e.type for e in recent_events] == [
            EventType.DOMAIN_UPDATED,
            EventType.DOMAIN_UPDATED,
            EventType.CHALLENGE_ADDED,
            EventType.DOMAIN_REMOVED,
        ]
    finally:
        await reopened.close()


async def test_events_another_process_wrote_between_ours_are_read_from_the_log(
    db_path: Path,
) -> None:
    """Revisions with a gap (another writer on the file): never answered from memory."""
    ours = await SqliteStore.open(str(db_path))
    other = await SqliteStore.open(str(db_path))
    try:
        await _history(ours, "a.example.com")
        await _history(other, "b.example.com")
        await _history(ours, "c.example.com")
        names = [e.domain_name for e in await ours.events_after(0, 100)]
        assert names == ["a.example.com"] * 4 + ["b.example.com"] * 4 + ["c.example.com"] * 4
        head = (await ours.events_after(0, 100))[-1].revision
        await _history(other, "d.example.com")  # after our last: read from the log too
        assert [e.domain_name for e in await ours.events_after(head, 100)] == ["d.example.com"] * 4
        compacted = await ours.compact_events(T0 + DAY)  # the log's compaction is followed
        assert compacted > 0
        assert [e.revision for e in await ours.events_after(0, 100)] == [
            e.revision for e in await other.events_after(0, 100)
        ]
    finally:
        await ours.close()
        await other.close()


async def _hops(store: SqliteStore, work: Callable[[], Awaitable[object]]) -> int:
    """Crossings to the writer's thread (aiosqlite's queue) while ``work`` runs."""
    writer = store._raw_writer
    real = writer._execute
    count = 0

    async def counted(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        nonlocal count
        count += 1
        return await real(fn, *args, **kwargs)

    writer._execute = counted  # type: ignore[method-assign]
    try:
        await work()
    finally:
        writer._execute = real  # type: ignore[method-assign]
    return count


async def test_a_transactions_writes_ride_with_its_next_answer_in_one_hop(
    store: SqliteStore, db_path: Path
) -> None:
    """A reservation's writes (three spends, the order row, the domain row after its
    event) cross to the writer's thread with the statement that must answer, not one
    hop each; what commits is the same."""
    domain = await put(store, make_domain("a.example.com"))

    async def reserve() -> None:
        async with store.transaction() as tx:
            for bucket in ("name_set", "account_orders", "registered_domain"):
                await tx.add_limit_spend(bucket, "k", "a.example.com", T0)
            await tx.put_order(PendingOrder("a.example.com", "example.com", ("a",), b"s", T0))
            await tx.put_domain(replace(domain, le_state=LetsEncryptState.CREATING))

    # the event's insert carries the 4 writes before it and the domain row after it
    assert await _hops(store, reserve) == 2  # event (+4, +row), commit
    assert raw(db_path, "SELECT COUNT(*) FROM limit_spends") == [(3,)]
    assert raw(db_path, "SELECT order_url FROM orders") == [("",)]
    assert raw(db_path, "SELECT le_state FROM domains") == [("CREATING",)]
    assert (await store.get_domain("a.example.com")) == replace(
        domain, le_state=LetsEncryptState.CREATING, revision=2
    )


async def test_a_deferred_write_that_fails_rolls_the_whole_transaction_back(
    store: SqliteStore, db_path: Path
) -> None:
    """The domain row names a certificate that does not exist (a foreign key): it fails
    as it goes to the thread before COMMIT, and nothing of the transaction stays."""
    ghost = replace(make_cert("a.example.com"), id=999)
    with pytest.raises(sqlite3.IntegrityError):
        async with store.transaction() as tx:
            await tx.add_limit_spend("name_set", "k", "a.example.com", T0)
            await tx.put_domain(make_domain("a.example.com", custom_cert=ghost))
    assert raw(db_path, "SELECT COUNT(*) FROM limit_spends") == [(0,)]
    assert raw(db_path, "SELECT COUNT(*) FROM events") == [(0,)]
    assert raw(db_path, "SELECT COUNT(*) FROM domains") == [(0,)]
    assert await store.get_domain("a.example.com") is None
    assert await store.events_after(0, 10) == []
    await put(store, make_domain("b.example.com"))  # the next transaction is clean
    assert raw(db_path, "SELECT name FROM domains") == [("b.example.com",)]
