"""Claims, leases and shared HTTP-01 answers, run unchanged over SQLite and PostgreSQL.

What several brokers on one store rely on (``Store.claim_due`` and its friends):
a due domain is leased to one broker at a time, the lease lapses by time when its
owner stops renewing it, domain writes leave it alone, and claiming writes no
event. Named leases make a job run once across the cluster; published challenge
answers are readable by every broker. PostgreSQL-only matters (a claim neither
waits for the writers' lock nor for a row another broker locked) are in
test_postgres_leases.py.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta

from certbroker.model import Domain
from tests.store.backends import AnyStore, Backend
from tests.store.claiming import claim
from tests.store.records import T0, make_domain

LEASE = timedelta(seconds=30)
SECOND = timedelta(seconds=1)


async def put(store: AnyStore, domain: Domain) -> Domain:
    async with store.transaction() as tx:
        return await tx.put_domain(domain)


async def due(store: AnyStore, *names: str, at: timedelta = timedelta(0)) -> None:
    """Add ``names``, due ``at`` after T0, one second apart in the given order."""
    for i, name in enumerate(names):
        await put(store, make_domain(name, next_run_at=T0 + at + i * SECOND))


# --- claims ---------------------------------------------------------------------------


async def test_a_claim_leases_due_domains_earliest_first_up_to_the_limit(
    store: AnyStore, backend: Backend
) -> None:
    await due(store, "b.example.com", "a.example.com", "c.example.com")
    await put(store, make_domain("later.example.com", next_run_at=T0 + timedelta(hours=1)))
    await put(store, make_domain("idle.example.com"))  # never due
    now = T0 + 10 * SECOND
    assert await claim(store, "one", now, 2) == ["b.example.com", "a.example.com"]
    assert await claim(store, "one", now, 10, exclude=["b.example.com"]) == [
        "a.example.com",  # its own lease: claimable again by its owner (exclude says no)
        "c.example.com",
    ]
    until = (now + LEASE).timestamp() * 1_000_000
    assert await backend.rows(
        "SELECT name, lease_owner, lease_until FROM domains WHERE lease_owner <> '' ORDER BY name"
    ) == [
        ("a.example.com", "one", until),
        ("b.example.com", "one", until),
        ("c.example.com", "one", until),
    ]


async def test_another_owner_gets_a_leased_domain_only_once_the_lease_lapsed(
    store: AnyStore,
) -> None:
    await due(store, "a.example.com", "b.example.com")
    assert await claim(store, "one", T0, 1) == ["a.example.com"]
    assert await claim(store, "two", T0 + SECOND, 10) == ["b.example.com"]
    assert await claim(store, "two", T0 + LEASE - SECOND, 10) == ["b.example.com"]
    # "one" stopped renewing (it died): its lease lapses by time alone
    assert await claim(store, "two", T0 + LEASE, 10, exclude=["b.example.com"]) == ["a.example.com"]
    assert await claim(store, "one", T0 + LEASE, 10) == []


async def test_claims_write_no_event_and_domain_writes_keep_the_lease(
    store: AnyStore, backend: Backend
) -> None:
    await due(store, "a.example.com")
    revision = await store.current_revision()
    assert await claim(store, "one", T0, 10) == ["a.example.com"]
    assert await store.renew_leases("one", ["a.example.com"], T0, LEASE) == ["a.example.com"]
    await store.release("one", ["a.example.com"])
    assert await claim(store, "one", T0, 10) == ["a.example.com"]
    assert await store.current_revision() == revision
    assert await backend.rows("SELECT COUNT(*) FROM events") == [(revision,)]
    # the owner's step writes the domain (an event, the schedule): the lease stays
    stored = await store.get_domain("a.example.com")
    assert stored is not None
    await put(store, replace(stored, action_required="working"))
    async with store.transaction() as tx:
        await tx.put_schedule(replace(stored, next_run_at=T0 + 2 * SECOND))
    assert await claim(store, "two", T0 + 5 * SECOND, 10) == []
    async with store.transaction() as tx:
        assert await tx.lease_holder("a.example.com", T0 + 5 * SECOND) == "one"
        assert await tx.lease_holder("a.example.com", T0 + LEASE) is None  # lapsed by then
        assert await tx.lease_holder("nope.example.com", T0) is None


async def test_renewal_extends_held_leases_and_reports_the_ones_taken_over(
    store: AnyStore,
) -> None:
    await due(store, "a.example.com", "b.example.com")
    start = T0 + SECOND
    assert await claim(store, "one", start, 10) == ["a.example.com", "b.example.com"]
    later = start + LEASE - SECOND
    assert await store.renew_leases("one", ["a.example.com"], later, LEASE) == ["a.example.com"]
    # b lapsed at start + LEASE and "two" took it; a is held until later + LEASE
    assert await claim(store, "two", start + LEASE, 10) == ["b.example.com"]
    assert await store.renew_leases(
        "one", ["a.example.com", "b.example.com"], start + LEASE, LEASE
    ) == ["a.example.com"]
    assert await store.renew_leases("one", [], T0, LEASE) == []


async def test_release_frees_a_domain_at_once_but_only_the_owners(store: AnyStore) -> None:
    await due(store, "a.example.com")
    assert await claim(store, "one", T0, 10) == ["a.example.com"]
    await store.release("two", ["a.example.com"])  # not its lease: nothing happens
    assert await claim(store, "two", T0, 10) == []
    await store.release("one", ["a.example.com"])
    assert await claim(store, "two", T0, 10) == ["a.example.com"]
    await store.release("one", [])


async def test_a_removed_and_re_added_domain_carries_no_old_lease(store: AnyStore) -> None:
    await due(store, "a.example.com")
    assert await claim(store, "one", T0, 10) == ["a.example.com"]
    stored = await store.get_domain("a.example.com")
    assert stored is not None
    async with store.transaction() as tx:
        await tx.delete_domain(stored)
    await due(store, "a.example.com")
    assert await claim(store, "two", T0, 10) == ["a.example.com"]


async def test_next_claim_time_is_the_first_claimable_due_time_or_a_lease_lapse(
    store: AnyStore,
) -> None:
    assert await store.next_claim_time("one", T0) is None
    await put(store, make_domain("idle.example.com"))
    assert await store.next_claim_time("one", T0) is None
    await due(store, "a.example.com", at=timedelta(minutes=5))
    await due(store, "b.example.com")
    assert await store.next_claim_time("one", T0) == T0
    assert await claim(store, "two", T0, 10) == ["b.example.com"]
    # b is "two"'s until T0 + LEASE (then "one" may take it over); a is due later
    assert await store.next_claim_time("one", T0) == T0 + LEASE
    assert await store.next_claim_time("two", T0, exclude=["b.example.com"]) == T0 + timedelta(
        minutes=5
    )
    assert await store.next_claim_time("two", T0) == T0  # its own lease hides nothing
    await store.release("two", ["b.example.com"])
    assert await store.next_claim_time("one", T0) == T0


async def test_next_claim_time_after_skips_what_is_due_already(store: AnyStore) -> None:
    """Due domains waiting for a token must not look due (``after``, as next_due_time)."""
    await due(store, "a.example.com")
    await due(store, "b.example.com", at=timedelta(minutes=5))
    assert await store.next_claim_time("one", T0 + SECOND) == T0
    assert await store.next_claim_time("one", T0 + SECOND, after=T0 + SECOND) == T0 + timedelta(
        minutes=5
    )


async def test_concurrent_claims_of_several_stores_share_out_every_domain_once(
    backend: Backend,
) -> None:
    stores = [await backend.open() for _ in range(3)]
    try:
        names = [f"d{i:02d}.example.com" for i in range(30)]
        await due(stores[0], *names)
        now = T0 + timedelta(minutes=1)
        got: dict[str, list[str]] = {f"b{i}": [] for i in range(3)}

        async def claim_all(owner: str, store: AnyStore) -> None:
            while claimed := await claim(store, owner, now, 4, exclude=got[owner]):
                got[owner].extend(claimed)
                await asyncio.sleep(0)

        await asyncio.gather(*(claim_all(f"b{i}", s) for i, s in enumerate(stores)))
        every = [n for claimed in got.values() for n in claimed]
        assert sorted(every) == names  # each claimed, and by one owner only
    finally:
        for store in stores:
            await store.close()


async def test_a_claim_leases_only_the_named_domains_still_due_and_free(store: AnyStore) -> None:
    await due(store, "free.example.com", "taken.example.com")
    await put(store, make_domain("later.example.com", next_run_at=T0 + timedelta(hours=1)))
    now = T0 + SECOND
    assert await store.claim_due("two", ["taken.example.com"], now, LEASE) == ["taken.example.com"]
    names = ["taken.example.com", "later.example.com", "free.example.com", "gone.example.com"]
    assert await store.claim_due("one", names, now, LEASE) == ["free.example.com"]
    assert await store.claim_due("one", [], now, LEASE) == []


async def test_candidates_leave_out_domains_leased_to_another_broker(store: AnyStore) -> None:
    await due(store, "a.example.com", "b.example.com")
    assert await store.claim_due("two", ["a.example.com"], T0, LEASE) == ["a.example.com"]
    now = T0 + SECOND

    async def offered(owner: str) -> list[str]:
        return [c.name for c in await store.due_candidates(now, 10, owner=owner)]

    assert await offered("one") == ["b.example.com"]
    assert await offered("two") == ["a.example.com", "b.example.com"]  # its own stays
    assert [c.name for c in await store.due_candidates(T0 + LEASE, 10, owner="one")] == [
        "a.example.com",
        "b.example.com",
    ]  # lapsed


# --- named leases -------------------------------------------------------------------------


async def test_a_named_lease_has_one_owner_until_it_lapses_or_is_dropped(store: AnyStore) -> None:
    assert await store.take_lease("job:compaction", "one", T0, LEASE)
    assert await store.take_lease("job:compaction", "one", T0 + SECOND, LEASE)  # renewed
    assert not await store.take_lease("job:compaction", "two", T0 + LEASE, LEASE)
    assert await store.take_lease("job:compaction", "two", T0 + LEASE + SECOND, LEASE)
    assert not await store.take_lease("job:compaction", "one", T0 + LEASE + SECOND, LEASE)
    await store.drop_lease("job:compaction", "one")  # not its own: stays
    assert not await store.take_lease("job:compaction", "one", T0 + LEASE + SECOND, LEASE)
    await store.drop_lease("job:compaction", "two")
    assert await store.take_lease("job:compaction", "one", T0 + LEASE + SECOND, LEASE)


async def test_lease_owners_lists_the_live_holders_under_a_prefix(store: AnyStore) -> None:
    assert await store.take_lease("watch:one", "one", T0, LEASE)
    assert await store.take_lease("watch:two", "two", T0 + SECOND, LEASE)
    assert await store.take_lease("job:x", "three", T0, LEASE)
    assert await store.lease_owners("watch:", T0 + SECOND) == ["one", "two"]
    assert await store.lease_owners("watch:", T0 + LEASE) == ["two"]
    assert await store.lease_owners("nothing:", T0) == []


# --- challenges ---------------------------------------------------------------------------


async def test_a_published_answer_is_read_by_any_store_until_withdrawn_or_expired(
    backend: Backend,
) -> None:
    one, two = await backend.open(), await backend.open()
    try:
        await one.put_challenge("tok", "tok.thumb", "one", T0 + LEASE)
        assert await two.get_challenge("tok", T0) == "tok.thumb"
        assert await two.get_challenge("tok", T0 + LEASE) is None  # expired
        assert await two.get_challenge("other", T0) is None
        # a second broker answering the same authorization (a takeover) publishes too:
        # the first one's withdrawal leaves the answer up
        await two.put_challenge("tok", "tok.thumb", "two", T0 + LEASE)
        await one.remove_challenge("tok", "one")
        assert await one.get_challenge("tok", T0) == "tok.thumb"
        await two.remove_challenge("tok", "two")
        assert await one.get_challenge("tok", T0) is None
    finally:
        await one.close()
        await two.close()


async def test_purge_deletes_expired_challenges_and_leases_only(
    store: AnyStore, backend: Backend
) -> None:
    await store.put_challenge("old", "old.k", "one", T0)
    await store.put_challenge("new", "new.k", "one", T0 + LEASE)
    await store.put_challenge("new", "new.k", "one", T0 + LEASE)  # again: one row
    assert await store.take_lease("job:old", "one", T0 - LEASE, LEASE)
    assert await store.take_lease("job:new", "one", T0, LEASE)
    assert await store.purge_expired(T0 + SECOND) == 2
    assert await backend.rows("SELECT token FROM challenges") == [("new",)]
    assert await backend.rows("SELECT name FROM leases") == [("job:new",)]
