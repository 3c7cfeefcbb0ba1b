"""The store contract, run unchanged over SQLite and PostgreSQL (the ``backend`` fixture).

Migrations, the outbox, the cache, replays, orders, compaction (the limit records:
test_contract_limits.py): what every
backend must do the same way. What is checked on disk is read through a
separate, plain connection (``Backend.rows``). Backend-specific matters (SQLite's
WAL mode and query plans, PostgreSQL's commit order across brokers) live in
test_sqlite.py and test_postgres*.py.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta
from importlib import resources

import pytest

from certbroker.model import Domain, EventType, LetsEncryptState, RenewalPlan, RetryState, Source
from certbroker.store.base import NewCertificate, PendingOrder
from tests.store.backends import AnyStore, Backend
from tests.store.records import T0, make_cert, make_domain

T1 = T0.replace(microsecond=123456)  # times keep their microseconds
DAY = timedelta(days=1)


class Boom(Exception):
    pass


async def put(store: AnyStore, domain: Domain) -> Domain:
    async with store.transaction() as tx:
        return await tx.put_domain(domain)


def shipped(folder: str) -> list[int]:
    files = resources.files("certbroker.store").joinpath(*folder.split("/")).iterdir()
    return sorted(int(f.name.split("_")[0]) for f in files if f.name.endswith(".sql"))


# --- migrations ---------------------------------------------------------------------------


async def test_migrations_are_applied_once(backend: Backend) -> None:
    first = await backend.open()
    await first.close()
    applied = await backend.rows("SELECT version, applied_at FROM schema_migrations")
    assert [row[0] for row in applied] == shipped("migrations")
    again = await backend.open()  # would fail on CREATE TABLE if re-run
    await again.close()
    assert await backend.rows("SELECT version, applied_at FROM schema_migrations") == applied
    for table in ("domains", "events", "certificates", "issuances", "orders", "meta"):
        assert await backend.rows(f"SELECT COUNT(*) FROM {table}") == [(0,)]  # noqa: S608


def test_both_backends_have_the_same_numbered_migrations() -> None:
    """A schema version means the same columns on both (migrate-db relies on it)."""
    assert shipped("migrations")[:3] == [1, 2, 3]
    assert shipped("migrations/postgres") == shipped("migrations")


# --- the outbox ---------------------------------------------------------------------------


async def test_put_domain_writes_the_row_and_its_event_together(
    store: AnyStore, backend: Backend
) -> None:
    assert await store.current_revision() == 0
    stored = await put(store, make_domain("a.example.com", updated_at=T1))
    assert stored.revision == 1
    assert await backend.rows("SELECT name, revision FROM domains") == [("a.example.com", 1)]
    assert await backend.rows("SELECT revision, type, domain FROM events") == [
        (1, "DOMAIN_UPDATED", "a.example.com")
    ]
    assert await store.current_revision() == 1
    assert await store.get_domain("a.example.com") == stored


async def test_the_revision_grows_by_one_with_each_write(store: AnyStore) -> None:
    revisions = []
    for i in range(5):
        stored = await put(store, make_domain(f"d{i % 2}.example.com"))
        revisions.append(stored.revision)
    assert revisions == [1, 2, 3, 4, 5]
    async with store.transaction() as tx:
        a = await tx.put_domain(make_domain("x.example.com"))
        b = await tx.put_domain(make_domain("y.example.com"))
    assert (a.revision, b.revision) == (6, 7)
    assert await store.current_revision() == 7


async def test_a_transaction_sees_its_own_writes(store: AnyStore) -> None:
    async with store.transaction() as tx:
        stored = await tx.put_domain(make_domain("a.example.com"))
        assert await tx.get_domain("a.example.com") == stored
        assert await store.get_domain("a.example.com") is None  # not committed yet
    assert await store.get_domain("a.example.com") == stored


async def test_rollback_leaves_neither_row_nor_event(store: AnyStore, backend: Backend) -> None:
    with pytest.raises(Boom):
        async with store.transaction() as tx:
            await tx.put_domain(make_domain("a.example.com"))
            raise Boom
    assert await store.get_domain("a.example.com") is None
    assert await backend.rows("SELECT COUNT(*) FROM domains") == [(0,)]
    assert await backend.rows("SELECT COUNT(*) FROM events") == [(0,)]
    assert await store.current_revision() == 0
    assert await store.events_after(0, 10) == []
    # the failed write left no gap in the revisions
    assert (await put(store, make_domain("b.example.com"))).revision == 1


async def test_rollback_of_an_update_keeps_the_committed_row_in_the_cache(
    store: AnyStore,
) -> None:
    committed = await put(store, make_domain("a.example.com"))
    assert await store.get_domain("a.example.com") == committed  # now cached
    with pytest.raises(Boom):
        async with store.transaction() as tx:
            await tx.put_domain(replace(committed, le_state=LetsEncryptState.CREATING))
            raise Boom
    assert await store.get_domain("a.example.com") == committed
    (listed,) = await store.list_domains(None, "", 10)
    assert listed == committed


async def test_revision_and_rows_survive_close_and_reopen(backend: Backend) -> None:
    first = await backend.open()
    async with first.transaction() as tx:
        info = await tx.add_certificate(
            NewCertificate("a.example.com", Source.LETS_ENCRYPT, make_cert("a.example.com"), b"k")
        )
    written = await put(first, make_domain("a.example.com", le_cert=info, created_at=T1))
    await put(first, make_domain("b.example.com"))
    await first.close()

    second = await backend.open()
    try:
        assert await second.current_revision() == 2
        assert await second.get_domain("a.example.com") == written  # cold cache: from disk
        assert (await put(second, make_domain("c.example.com"))).revision == 3
    finally:
        await second.close()


async def test_put_schedule_moves_the_schedule_without_an_event(
    store: AnyStore, backend: Backend
) -> None:
    first = await put(store, make_domain("s.example.com"))
    later = T1 + timedelta(minutes=1)
    moved = replace(
        first,
        next_run_at=later,
        retry=replace(first.retry, next_attempt_at=later, forced_at=T1),
    )
    async with store.transaction() as tx:
        written = await tx.put_schedule(moved)
    assert written.revision == first.revision
    assert await store.current_revision() == first.revision
    assert await backend.rows("SELECT COUNT(*) FROM events") == [(1,)]
    assert await store.get_domain("s.example.com") == moved
    assert await store.due_names(T0, 10) == []
    assert await store.due_names(later, 10) == ["s.example.com"]
    reopened = await backend.open()  # from the database, not the cache
    try:
        assert await reopened.get_domain("s.example.com") == moved
    finally:
        await reopened.close()


# --- queries ------------------------------------------------------------------------------


async def test_list_domains_pages_by_name_and_filters_by_app(store: AnyStore) -> None:
    for name, app in [
        ("c.example.com", "a"),
        ("a.example.com", "a"),
        ("b.example.com", "b"),
        ("d.example.com", "a"),
        ("e.example.com", "b"),
    ]:
        await put(store, make_domain(name, app=app))
    page1 = await store.list_domains(None, "", 2)
    page2 = await store.list_domains(None, page1[-1].name, 2)
    page3 = await store.list_domains(None, page2[-1].name, 2)
    assert [d.name for d in page1 + page2 + page3] == [
        "a.example.com",
        "b.example.com",
        "c.example.com",
        "d.example.com",
        "e.example.com",
    ]
    assert len(page3) == 1
    assert [d.name for d in await store.list_domains("a", "", 10)] == [
        "a.example.com",
        "c.example.com",
        "d.example.com",
    ]
    assert [d.name for d in await store.list_domains("a", "a.example.com", 1)] == ["c.example.com"]
    assert await store.list_domains("nobody", "", 10) == []


async def test_due_domains_returns_only_due_rows_in_next_run_order(store: AnyStore) -> None:
    now = T0 + DAY
    for name, when in [
        ("late.example.com", now + timedelta(seconds=1)),
        ("second.example.com", now - timedelta(minutes=1)),
        ("idle.example.com", None),
        ("first.example.com", now - DAY),
        ("exact.example.com", now),
    ]:
        await put(store, make_domain(name, next_run_at=when))
    due = await store.due_domains(now, 10)
    assert [d.name for d in due] == ["first.example.com", "second.example.com", "exact.example.com"]
    assert [d.name for d in await store.due_domains(now, 2)] == [
        "first.example.com",
        "second.example.com",
    ]
    assert await store.next_due_time() == now - DAY


async def test_due_names_skip_domains_being_worked(store: AnyStore) -> None:
    now = T0 + DAY
    for i in range(4):
        await put(store, make_domain(f"d{i}.example.com", next_run_at=now - i * DAY))
    await put(store, make_domain("later.example.com", next_run_at=now + DAY))
    busy = {"d3.example.com", "d1.example.com"}
    assert await store.due_names(now, 10, exclude=busy) == ["d2.example.com", "d0.example.com"]
    assert await store.due_names(now, 1) == ["d3.example.com"]
    assert await store.next_due_time(exclude=busy) == now - 2 * DAY


async def test_names_with_last_error_finds_the_held_domains(store: AnyStore) -> None:
    held = RetryState(last_error_reason="NOT_CONFIGURED")
    await put(store, make_domain("b.example.com", retry=held))
    await put(store, make_domain("a.example.com", retry=held))
    await put(store, make_domain("c.example.com", retry=RetryState(last_error_reason="X")))
    assert await store.names_with_last_error("NOT_CONFIGURED") == [
        "a.example.com",
        "b.example.com",
    ]
    assert await store.names_with_last_error("NOTHING") == []


async def test_the_renewal_plan_round_trips_and_its_check_time_is_scheduling_only(
    store: AnyStore,
) -> None:
    plan = RenewalPlan(at=T1 + 50 * DAY, next_check=T1 + DAY)
    stored = await put(store, make_domain("ari.example.com", renewal=plan))
    assert (await store.get_domain("ari.example.com")) == stored
    assert [e.domain.renewal for e in await store.events_after(0, 10) if e.domain] == [plan]
    moved = replace(stored, renewal=replace(plan, next_check=T1 + 2 * DAY))
    async with store.transaction() as tx:
        await tx.put_schedule(moved)
    store_again = await store.get_domain("ari.example.com")
    assert store_again is not None and store_again.renewal.next_check == T1 + 2 * DAY
    assert await store.current_revision() == stored.revision  # no event for it


async def test_next_due_time_is_none_when_nothing_is_scheduled(store: AnyStore) -> None:
    assert await store.next_due_time() is None
    await put(store, make_domain("idle.example.com", next_run_at=None))
    assert await store.next_due_time() is None


async def test_domains_under_finds_other_apps_names_at_any_depth(store: AnyStore) -> None:
    await put(store, make_domain("a.shop.example", app="mine"))
    theirs = await put(store, make_domain("b.c.shop.example", app="theirs"))
    await put(store, make_domain("shop.example", app="theirs"))  # the base itself: not under
    await put(store, make_domain("xshop.example", app="theirs"))  # a suffix, not a subdomain
    async with store.transaction() as tx:
        assert await tx.domains_under("shop.example", "mine") == [theirs]


# --- events -------------------------------------------------------------------------------


async def test_events_after_replays_the_domain_as_of_each_revision(store: AnyStore) -> None:
    v1 = await put(store, make_domain("a.example.com"))
    v2 = await put(store, replace(v1, le_state=LetsEncryptState.CREATING, updated_at=T0 + DAY))
    async with store.transaction() as tx:
        info = await tx.add_certificate(
            NewCertificate("a.example.com", Source.LETS_ENCRYPT, make_cert("a.example.com"), b"k")
        )
        v3 = await tx.put_domain(
            replace(
                v2,
                le_cert=info,
                le_state=LetsEncryptState.IN_USE,
                serving=Source.LETS_ENCRYPT,
                updated_at=T0 + 2 * DAY,
            )
        )
    events = await store.events_after(0, 100)
    assert [e.revision for e in events] == [1, 2, 3]
    assert [e.type for e in events] == [EventType.DOMAIN_UPDATED] * 3
    assert [e.domain for e in events] == [v1, v2, v3]
    assert [e.at for e in events] == [T0, T0 + DAY, T0 + 2 * DAY]
    assert all(e.domain_name == "a.example.com" for e in events)
    assert [e.revision for e in await store.events_after(1, 1)] == [2]
    assert await store.events_after(3, 100) == []


async def test_challenge_events_carry_the_token(store: AnyStore) -> None:
    async with store.transaction() as tx:
        revision = await tx.add_challenge_event(
            "a.example.com", EventType.CHALLENGE_ADDED, "tok", "tok.thumb", T0
        )
    (event,) = await store.events_after(0, 10)
    assert event.revision == revision == 1
    assert event.type is EventType.CHALLENGE_ADDED
    assert (event.challenge_token, event.challenge_key_authorization) == ("tok", "tok.thumb")
    assert event.domain is None


async def test_compact_events_drops_old_events_and_keeps_the_newest(store: AnyStore) -> None:
    d = await put(store, make_domain("a.example.com"))
    for i in range(1, 5):
        d = await put(store, replace(d, updated_at=T0 + i * DAY))  # revisions 2..5
    assert await store.compacted_through() == 0
    deleted = await store.compact_events(T0 + 2 * DAY + timedelta(seconds=1))
    assert deleted == 3
    assert await store.compacted_through() == 3
    assert [e.revision for e in await store.events_after(0, 10)] == [4, 5]
    assert await store.current_revision() == 5

    # everything old: the newest event still stays, so the revision never goes back
    assert await store.compact_events(T0 + 100 * DAY) == 1
    assert await store.compacted_through() == 4
    assert [e.revision for e in await store.events_after(0, 10)] == [5]
    assert await store.compact_events(T0 + 100 * DAY) == 0
    assert await store.compacted_through() == 4
    assert (await put(store, replace(d, updated_at=T0 + 101 * DAY))).revision == 6


async def test_compaction_point_and_revision_survive_reopen(backend: Backend) -> None:
    first = await backend.open()
    d = await put(first, make_domain("a.example.com"))
    await put(first, replace(d, updated_at=T0 + DAY))
    await first.compact_events(T0 + 10 * DAY)
    await first.close()
    second = await backend.open()
    try:
        assert await second.compacted_through() == 1
        assert await second.current_revision() == 2
    finally:
        await second.close()


# --- certificates and deletion ------------------------------------------------------------


async def test_add_certificate_and_load_key_round_trip(store: AnyStore) -> None:
    cert = make_cert("a.example.com", serial="0a")
    async with store.transaction() as tx:
        info = await tx.add_certificate(
            NewCertificate("a.example.com", Source.CUSTOM, cert, b"\x00sealed\xff")
        )
    assert info.id > 0
    assert info == replace(cert, id=info.id, received_at=cert.not_before)  # stored as received
    assert await store.load_key(info.id) == b"\x00sealed\xff"
    assert await store.load_key(info.id + 100) is None


async def test_load_keys_returns_each_certificates_key_and_leaves_out_missing_ones(
    store: AnyStore,
) -> None:
    async with store.transaction() as tx:
        infos = [
            await tx.add_certificate(
                NewCertificate(f"{n}.example.com", Source.CUSTOM, make_cert(n, f"0{i}"), key)
            )
            for i, (n, key) in enumerate([("a", b"\x00key-a"), ("b", b"key-b\xff")])
        ]
    a, b = (info.id for info in infos)
    assert await store.load_keys([a, b + 100, b]) == {a: b"\x00key-a", b: b"key-b\xff"}
    assert await store.load_keys([b + 100]) == {}
    assert await store.load_keys([]) == {}
    many = [a, *range(b + 1, b + 1200)]  # more ids than one SQLite IN list takes
    assert await store.load_keys(many) == {a: b"\x00key-a"}


async def test_list_domains_gives_each_row_its_certificates(
    store: AnyStore, backend: Backend
) -> None:
    for i in range(6):
        name = f"d{i}.example.com"
        async with store.transaction() as tx:
            le = await tx.add_certificate(
                NewCertificate(name, Source.LETS_ENCRYPT, make_cert(name, f"1{i}"), b"1")
            )
            custom = await tx.add_certificate(
                NewCertificate(name, Source.CUSTOM, make_cert(name, f"2{i}"), b"2")
            )
            await tx.put_domain(
                make_domain(name, le_cert=le if i % 2 else None, custom_cert=custom)
            )
    await put(store, make_domain("none.example.com"))
    await store.close()
    fresh = await backend.open()  # nothing cached: every certificate comes from the page query
    try:
        listed = await fresh.list_domains(None, "", 10)
        assert fresh.cached_certificate_ids() == []  # a scan does not fill the cache
        assert [d.name for d in listed] == [
            *(f"d{i}.example.com" for i in range(6)),
            "none.example.com",
        ]
        assert listed == [await fresh.get_domain(d.name) for d in listed]
        assert sum(d.le_cert is not None for d in listed) == 3
        assert all(d.custom_cert is not None for d in listed[:6])
        assert listed[6].le_cert is None and listed[6].custom_cert is None
    finally:
        await fresh.close()


async def test_delete_domain_removes_certificates_and_writes_a_removed_event(
    store: AnyStore, backend: Backend
) -> None:
    async with store.transaction() as tx:
        le = await tx.add_certificate(
            NewCertificate("a.example.com", Source.LETS_ENCRYPT, make_cert("a.example.com"), b"1")
        )
        custom = await tx.add_certificate(
            NewCertificate("a.example.com", Source.CUSTOM, make_cert("a.example.com", "02"), b"2")
        )
        stored = await tx.put_domain(make_domain("a.example.com", le_cert=le, custom_cert=custom))
        await tx.put_order(
            PendingOrder("a.example.com", "example.com", ("a.example.com",), b"k", T0)
        )
    other = await put(store, make_domain("b.example.com"))
    assert await store.get_domain("a.example.com") == stored

    async with store.transaction() as tx:
        revision = await tx.delete_domain(stored)
    assert revision == 3
    assert await store.get_domain("a.example.com") is None
    assert await store.load_key(le.id) is None
    assert await store.load_key(custom.id) is None
    assert await store.get_order("a.example.com") is None
    assert await backend.rows("SELECT COUNT(*) FROM certificates") == [(0,)]
    assert await store.get_domain("b.example.com") == other
    last = (await store.events_after(2, 10))[-1]
    assert (last.revision, last.type, last.domain_name) == (
        3,
        EventType.DOMAIN_REMOVED,
        "a.example.com",
    )


async def test_replacing_a_certificate_marks_the_old_one_retired(
    store: AnyStore, backend: Backend
) -> None:
    async with store.transaction() as tx:
        first = await tx.add_certificate(
            NewCertificate("a.example.com", Source.LETS_ENCRYPT, make_cert("a.example.com"), b"1")
        )
        d = await tx.put_domain(make_domain("a.example.com", le_cert=first))
    renewed_at = T0 + 60 * DAY
    async with store.transaction() as tx:
        latest = await tx.get_domain("a.example.com")
        assert latest == d
        second = await tx.add_certificate(
            NewCertificate(
                "a.example.com", Source.LETS_ENCRYPT, make_cert("a.example.com", "02"), b"2"
            )
        )
        renewed = await tx.put_domain(replace(latest, le_cert=second, updated_at=renewed_at))
    rows = await backend.rows(
        "SELECT id, retired_at, retired_revision FROM certificates ORDER BY id"
    )
    assert rows == [
        (first.id, int(renewed_at.timestamp()) * 1_000_000, renewed.revision),
        (second.id, None, None),
    ]


# --- orders, meta -----------------------------------------------------------------


async def test_orders_round_trip(store: AnyStore) -> None:
    order = PendingOrder(
        "a.example.com",
        "example.com",
        ("a.example.com", "www.a.example.com"),
        b"sealed",
        T0,
        "https://ca/order/1",
    )
    async with store.transaction() as tx:
        await tx.put_order(order)
        assert await tx.get_order("a.example.com") == order
    assert await store.get_order("a.example.com") == order
    async with store.transaction() as tx:
        await tx.put_order(replace(order, order_url="https://ca/order/2"))
    assert await store.get_order("a.example.com") == replace(order, order_url="https://ca/order/2")
    async with store.transaction() as tx:
        await tx.delete_order("a.example.com")
    assert await store.get_order("a.example.com") is None


async def test_a_kept_backoff_is_taken_once_and_only_until_it_runs_out(
    store: AnyStore, backend: Backend
) -> None:
    """A removed domain's backoff, kept for the name (certbroker.app.remove_domain)."""

    def retry(until: timedelta) -> RetryState:
        return RetryState(2, T1 + until, "ACME_UNAUTHORIZED", "404", T1, forced_at=T1)

    minute = timedelta(minutes=1)
    async with store.transaction() as tx:
        await tx.keep_backoff("a.example.com", "shop", retry(4 * minute), T1)
        await tx.keep_backoff("b.example.com", "shop", retry(2 * minute), T1)
    async with store.transaction() as tx:
        taken = await tx.take_backoff("a.example.com", T1 + minute)
        assert taken == ("shop", retry(4 * minute))
        assert await tx.take_backoff("a.example.com", T1) is None  # taken: gone
        assert await tx.take_backoff("b.example.com", T1 + 3 * minute) is None  # run out
    # what ran out is dropped by the next keep: the table holds only live backoffs
    async with store.transaction() as tx:
        await tx.keep_backoff("c.example.com", "shop", retry(60 * minute), T1)
        await tx.keep_backoff("d.example.com", "shop", retry(180 * minute), T1)
        await tx.keep_backoff("e.example.com", "x", retry(180 * minute), T1 + 120 * minute)
    rows = await backend.rows("SELECT name FROM removed_backoff ORDER BY name")
    assert rows == [("d.example.com",), ("e.example.com",)]


async def test_meta_round_trip(store: AnyStore) -> None:
    assert await store.get_meta("k") is None
    async with store.transaction() as tx:
        await tx.set_meta("k", b"one")
    async with store.transaction() as tx:
        await tx.set_meta("k", b"two")
    assert await store.get_meta("k") == b"two"
    async with store.transaction() as tx:
        assert await tx.ensure_meta("k", b"three") == b"two"  # the first writer's value stays
        assert await tx.ensure_meta("new", b"\x00\xff") == b"\x00\xff"
    assert await store.get_meta("new") == b"\x00\xff"


# --- commit listeners ---------------------------------------------------------------------


async def test_on_commit_is_called_with_the_newest_revision_after_commit_only(
    store: AnyStore,
) -> None:
    seen: list[int] = []
    store.on_commit(seen.append)
    async with store.transaction() as tx:
        await tx.put_domain(make_domain("a.example.com"))
        await tx.put_domain(make_domain("b.example.com"))
        assert seen == []  # not before the commit
    assert seen == [2]

    with pytest.raises(Boom):
        async with store.transaction() as tx:
            await tx.put_domain(make_domain("c.example.com"))
            raise Boom
    assert seen == [2]  # a rollback announces nothing

    async with store.transaction() as tx:
        await tx.set_meta("k", b"v")  # no event written
    assert seen == [2]

    await put(store, make_domain("c.example.com"))
    assert seen == [2, 3]


async def test_on_commit_listener_sees_committed_data(store: AnyStore, backend: Backend) -> None:
    reads: list[asyncio.Task[list[tuple[object, ...]]]] = []
    store.on_commit(
        lambda revision: reads.append(
            asyncio.create_task(
                backend.rows("SELECT revision FROM events WHERE revision = ?", revision)
            )
        )
    )
    await put(store, make_domain("a.example.com"))
    assert [await read for read in reads] == [[(1,)]]
