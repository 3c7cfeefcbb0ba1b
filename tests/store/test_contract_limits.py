"""The limits ledger's records, run unchanged over SQLite and PostgreSQL (the ``backend``
fixture): spends, pauses, refunds, a restart, and the prioritised due-work query.
Migration 007's backfill of older databases: test_migration_007.py."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from certbroker.clock import FakeClock
from certbroker.housekeeping import Compactor
from certbroker.limits import (
    ACCOUNT_ORDERS,
    MAX_PERIOD,
    NAME_SET,
    QUOTA_REGISTERED_DOMAIN,
    RECORDS_KEPT,
    REGISTERED_DOMAIN,
    Bucket,
    Hold,
    Limits,
    LimitsLedger,
    OrderRequest,
)
from certbroker.model import CertificateInfo, Domain, LetsEncryptState, Source
from certbroker.priorities import Kind
from certbroker.store.base import NewCertificate, PendingOrder
from tests.store.backends import AnyStore, Backend

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


def request(name: str, registered: str = "example.com") -> OrderRequest:
    return OrderRequest(name, "shop", registered, (name,), False, None)


# --- spends and pauses -------------------------------------------------------------------


async def test_spends_after_since_come_with_the_newest_before_it(store: AnyStore) -> None:
    async with store.transaction() as tx:
        for hours in (0, 1, 2, 5, 6):
            await tx.add_limit_spend(NAME_SET, "a.example.com", "a.example.com", T0 + hours * HOUR)
        await tx.add_limit_spend(NAME_SET, "b.example.com", "b.example.com", T0 + 3 * HOUR)
        await tx.add_limit_spend(ACCOUNT_ORDERS, "", "a.example.com", T0 + 3 * HOUR)
    since = T0 + 4 * HOUR
    spends = await store.limit_spends(NAME_SET, "a.example.com", since, 10)
    assert spends == [T0 + 2 * HOUR, T0 + 5 * HOUR, T0 + 6 * HOUR]  # anchor, then the window
    assert await store.limit_spends(NAME_SET, "a.example.com", since, 2) == [
        T0 + 5 * HOUR,
        T0 + 6 * HOUR,
    ]  # capped: the newest kept
    assert await store.limit_spends(NAME_SET, "a.example.com", T0 - HOUR, 10) == [
        T0 + h * HOUR for h in (0, 1, 2, 5, 6)
    ]  # nothing before: no anchor
    assert await store.limit_spends(NAME_SET, "c.example.com", since, 10) == []
    async with store.transaction() as tx:  # the transaction reads the same
        assert await tx.limit_spends(NAME_SET, "a.example.com", since, 10) == spends


async def test_spends_of_several_buckets_are_read_together_as_one_by_one(
    store: AnyStore,
) -> None:
    async with store.transaction() as tx:
        for hours in (0, 1, 2, 5, 6):
            await tx.add_limit_spend(NAME_SET, "a.example.com", "a.example.com", T0 + hours * HOUR)
        await tx.add_limit_spend(NAME_SET, "b.example.com", "b.example.com", T0 + 3 * HOUR)
        await tx.add_limit_spend(ACCOUNT_ORDERS, "", "a.example.com", T0 + 3 * HOUR)
        await tx.add_limit_spend(ACCOUNT_ORDERS, "", "b.example.com", T0 + 7 * HOUR)
    since = T0 + 4 * HOUR
    queries = [
        (NAME_SET, "a.example.com", since, 10),
        (NAME_SET, "a.example.com", since, 2),  # capped: the newest kept
        (NAME_SET, "a.example.com", T0 - HOUR, 10),  # nothing before: no anchor
        (NAME_SET, "c.example.com", since, 10),  # none at all
        (ACCOUNT_ORDERS, "", since, 10),
    ]
    one_by_one = [await store.limit_spends(*query) for query in queries]
    assert one_by_one[0] == [T0 + 2 * HOUR, T0 + 5 * HOUR, T0 + 6 * HOUR]
    assert one_by_one[4] == [T0 + 3 * HOUR, T0 + 7 * HOUR]
    assert await store.limit_spends_of(queries) == one_by_one
    assert await store.limit_spends_of([]) == []
    async with store.transaction() as tx:  # the transaction reads the same
        assert await tx.limit_spends_of(queries) == one_by_one


async def test_pauses_keep_the_later_end_and_only_active_ones_are_read(store: AnyStore) -> None:
    async with store.transaction() as tx:
        await tx.pause_limit(REGISTERED_DOMAIN, "example.com", T0 + 2 * HOUR)
        await tx.pause_limit(REGISTERED_DOMAIN, "example.com", T0 + HOUR)
        await tx.pause_limit("account", "", T0 + HOUR)
    keys = [(REGISTERED_DOMAIN, "example.com"), ("account", ""), (NAME_SET, "x")]
    assert await store.limit_pauses(keys, T0) == {
        (REGISTERED_DOMAIN, "example.com"): T0 + 2 * HOUR,
        ("account", ""): T0 + HOUR,
    }
    assert await store.limit_pauses(keys, T0 + HOUR) == {
        (REGISTERED_DOMAIN, "example.com"): T0 + 2 * HOUR
    }
    assert await store.limit_pauses([], T0) == {}


async def test_a_refund_takes_only_what_was_spent_after_the_domains_last_issuance(
    store: AnyStore,
) -> None:
    async with store.transaction() as tx:
        await tx.add_limit_spend(REGISTERED_DOMAIN, "example.com", "a.example.com", T0)
        await tx.record_issuance("a.example.com", "example.com", ("a.example.com",), "1", T0 + HOUR)
        for bucket, key in ((REGISTERED_DOMAIN, "example.com"), (NAME_SET, "a.example.com")):
            await tx.add_limit_spend(bucket, key, "a.example.com", T0 + 2 * HOUR)
        await tx.add_limit_spend(ACCOUNT_ORDERS, "", "a.example.com", T0 + 2 * HOUR)
        await tx.add_limit_spend(REGISTERED_DOMAIN, "example.com", "b.example.com", T0 + 2 * HOUR)
        assert await tx.refund_limit_spends("a.example.com", (REGISTERED_DOMAIN, NAME_SET)) == 2
        assert await tx.refund_limit_spends("a.example.com", (REGISTERED_DOMAIN, NAME_SET)) == 0
    spends = await store.limit_spends(REGISTERED_DOMAIN, "example.com", T0 - HOUR, 10)
    assert spends == [T0, T0 + 2 * HOUR]  # the issued one's and b's stay
    assert await store.limit_spends(ACCOUNT_ORDERS, "", T0 - HOUR, 10) == [T0 + 2 * HOUR]


async def test_a_renewal_is_an_issuance_of_the_same_names_in_the_window(
    store: AnyStore,
) -> None:
    names = ("www.example.com", "example.com")
    async with store.transaction() as tx:
        await tx.record_issuance("www.example.com", "example.com", names, "1", T0)
        assert await tx.names_issued_since(("example.com", "www.example.com"), T0 - DAY)
        assert not await tx.names_issued_since(names, T0)
        assert not await tx.names_issued_since(("www.example.com",), T0 - DAY)


async def test_old_records_are_pruned(store: AnyStore) -> None:
    async with store.transaction() as tx:
        await tx.add_limit_spend(NAME_SET, "a", "a", T0)
        await tx.add_limit_spend(NAME_SET, "a", "a", T0 + DAY)
        await tx.pause_limit("account", "", T0 + HOUR)
        assert await tx.prune_limit_records(T0 + 2 * HOUR) == 2
    assert await store.limit_spends(NAME_SET, "a", T0 - DAY, 10) == [T0 + DAY]


async def test_the_compactor_prunes_what_no_bucket_reads_any_more(store: AnyStore) -> None:
    now = T0 + 60 * DAY
    async with store.transaction() as tx:
        await tx.add_limit_spend(NAME_SET, "a", "a", now - RECORDS_KEPT - HOUR)
        await tx.add_limit_spend(NAME_SET, "a", "a", now - MAX_PERIOD)  # the longest period
    await Compactor(store, FakeClock(now), 7 * DAY, HOUR).compact_once()
    assert await store.limit_spends(NAME_SET, "a", T0, 10) == [now - MAX_PERIOD]


# --- the ledger on the store, across a restart ----------------------------------------


async def _reserve(
    store: AnyStore, ledger: LimitsLedger, order: OrderRequest, at: datetime
) -> Hold | None:
    """The scheduler's reserve: the spends and the order row in one transaction."""
    async with store.transaction() as tx:
        hold = await ledger.reserve(tx, order, at)
        if hold is None:
            pending = PendingOrder(order.domain, order.registered_domain, order.names, b"k", at)
            await tx.put_order(pending)
        return hold


async def test_a_restart_forgets_no_spend_and_no_pause(backend: Backend) -> None:
    ledger = LimitsLedger(Limits(registered_domain=Bucket(3, timedelta(days=3))))
    store = await backend.open()
    try:
        for i in range(3):
            assert await _reserve(store, ledger, request(f"n{i}.example.com"), T0) is None
        async with store.transaction() as tx:
            await ledger.rate_limited(
                tx, request("x.example.org", "example.org"), "registered_domain", T0 + DAY, T0
            )
    finally:
        await store.close()

    store = await backend.open()  # a new process
    try:
        hold = await _reserve(store, ledger, request("n3.example.com"), T0 + HOUR)
        assert hold is not None and hold.reason == QUOTA_REGISTERED_DOMAIN
        assert hold.until == T0 + DAY  # the first token back: one period / capacity
        paused = await _reserve(store, ledger, request("y.example.org", "example.org"), T0 + HOUR)
        assert paused is not None and paused.until == T0 + DAY
        assert await _reserve(store, ledger, request("n3.example.com"), T0 + DAY) is None
    finally:
        await store.close()


async def test_a_failed_order_gives_its_certificate_tokens_back_on_the_store(
    store: AnyStore,
) -> None:
    ledger = LimitsLedger(Limits(registered_domain=Bucket(1, timedelta(days=7))))
    order = request("a.example.com")
    assert await _reserve(store, ledger, order, T0) is None
    assert await _reserve(store, ledger, request("b.example.com"), T0) is not None
    async with store.transaction() as tx:
        await tx.delete_order("a.example.com")
        await ledger.order_failed(tx, order, 1, T0 + HOUR, identifier="a.example.com")
    assert await _reserve(store, ledger, request("b.example.com"), T0 + HOUR) is None
    failed = await store.limit_spends("failed_authorizations", "a.example.com", T0, 10)
    assert failed == [T0 + HOUR]


# --- due work, prioritised ---------------------------------------------------------------


def _domain(name: str, app: str, due: datetime, **changes: object) -> Domain:
    base = Domain(
        name=name,
        app=app,
        letsencrypt_enabled=True,
        le_state=LetsEncryptState.CREATING,
        serving=Source.NONE,
        created_at=T0,
        updated_at=T0,
        next_run_at=due,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def _cert(name: str, not_after: datetime) -> NewCertificate:
    info = CertificateInfo(
        id=0, sans=(name,), subject=f"CN={name}", issuer="CN=CA", serial=name,
        not_before=not_after - 90 * DAY, not_after=not_after, sha256_fingerprint=name,
        chain_pem="pem", key_algorithm="ECDSA_P256",
    )  # fmt: skip
    return NewCertificate(name, Source.LETS_ENCRYPT, info, b"k")


async def test_due_candidates_put_renewals_first_then_apps_in_turn(store: AnyStore) -> None:
    async with store.transaction() as tx:
        for i in range(4):  # a big import, due long ago, ready to order
            await tx.put_domain(_domain(f"b{i}.big.test", "big", T0 - (10 - i) * HOUR))
        await tx.put_domain(_domain("s0.small.test", "small", T0 - HOUR))
        checking = _domain("dns.small.test", "small", T0, le_state=LetsEncryptState.PENDING_DNS)
        await tx.put_domain(checking)
        for name, expiry in (("r-late.test", T0 + 9 * DAY), ("r-soon.test", T0 + DAY)):
            cert = await tx.add_certificate(_cert(name, expiry))
            await tx.put_domain(
                _domain(name, "other", T0, le_cert=cert, le_state=LetsEncryptState.IN_USE)
            )
        await tx.put_domain(_domain("later.big.test", "big", T0 + HOUR))  # not due yet
    due = await store.due_candidates(T0, 100)
    assert [c.name for c in due] == [
        "r-soon.test", "r-late.test",  # renewals, by expiry
        "dns.small.test",  # no token needed
        "b0.big.test", "s0.small.test", "b1.big.test", "b2.big.test", "b3.big.test",
    ]  # fmt: skip
    assert due[0].kind is Kind.RENEWAL and due[0].expires_at == T0 + DAY
    assert [c.needs_token for c in due[2:4]] == [False, True]
    assert (due[3].app, due[3].due_at) == ("big", T0 - 10 * HOUR)
    # the cut keeps every app's first before any app's second
    assert [c.name for c in await store.due_candidates(T0, 5, exclude={"r-soon.test"})] == [
        "r-late.test", "dns.small.test", "b0.big.test", "s0.small.test", "b1.big.test",
    ]  # fmt: skip


async def test_next_due_time_after_skips_what_is_due_already(store: AnyStore) -> None:
    async with store.transaction() as tx:
        await tx.put_domain(_domain("waiting.test", "a", T0 - HOUR))
        await tx.put_domain(_domain("later.test", "a", T0 + HOUR))
    assert await store.next_due_time() == T0 - HOUR
    assert await store.next_due_time(after=T0) == T0 + HOUR
    assert await store.next_due_time(exclude={"later.test"}, after=T0) is None
