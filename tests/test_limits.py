"""The limits ledger: GCRA buckets, exemptions, refunds, pauses, and agreement with a fake CA.

The ledger runs here on in-memory records (tests/fakes/records.py); the same
records on SQLite, across restarts, are in tests/store/test_sqlite_limits.py.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certbroker.acme.problems import AcmeProblem, rate_limit_scope
from certbroker.limits import (
    CA_RATE_LIMITED,
    NAME_SET,
    QUOTA_ACCOUNT_ORDERS,
    QUOTA_FAILED_AUTHORIZATIONS,
    QUOTA_NAME_SET,
    QUOTA_REGISTERED_DOMAIN,
    REGISTERED_DOMAIN,
    Bucket,
    BucketState,
    Limits,
    LimitsLedger,
    OrderRequest,
    replay,
)
from tests.fakes.ca import FakeCA, RateLimited
from tests.fakes.records import MemoryLimitRecords

T0 = datetime(2026, 3, 1, tzinfo=UTC)
ORDERS = Bucket(300, timedelta(hours=3))


def request(
    name: str,
    registered: str = "example.com",
    *,
    app: str = "shop",
    renewal: bool = False,
    replaces: str | None = None,
) -> OrderRequest:
    return OrderRequest(name, app, registered, (name,), renewal, replaces)


# --- the bucket maths -----------------------------------------------------------------


def test_lets_encrypt_refill_rates_follow_from_capacity_and_period() -> None:
    limits = Limits()
    assert limits.account_orders.interval == timedelta(seconds=36)
    assert limits.registered_domain.interval == timedelta(minutes=201.6)  # LE: "202 min"
    assert limits.name_set.interval == timedelta(hours=33.6)  # LE: "34 h"
    assert limits.failed_authorizations.interval == timedelta(minutes=12)
    assert limits.account_orders.describe() == "300 per 3 h (1 more every 36 s)"


@pytest.mark.parametrize(("capacity", "period"), [(0, timedelta(hours=1)), (5, timedelta(0))])
def test_a_bucket_needs_a_token_and_a_period(capacity: int, period: timedelta) -> None:
    with pytest.raises(ValueError):
        Bucket(capacity, period)


def test_a_full_bucket_bursts_its_capacity_then_refills_one_per_interval() -> None:
    state = replay(ORDERS, [T0] * 299, complete=True)
    assert state.tokens(T0) == 1
    assert state.next_token_at(T0) is None
    empty = state.spend(T0)
    assert empty.tokens(T0) == 0
    assert empty.next_token_at(T0) == T0 + timedelta(seconds=36)
    assert empty.tokens(T0 + timedelta(seconds=35)) == 0
    assert empty.tokens(T0 + timedelta(seconds=36)) == 1
    assert empty.tokens(T0 + timedelta(minutes=30)) == 50
    assert empty.tokens(T0 + timedelta(hours=3)) == 300
    assert empty.tokens(T0 + timedelta(days=3)) == 300  # never beyond capacity


def test_spends_at_the_refill_rate_keep_an_empty_bucket_empty() -> None:
    burst = [T0] * 300
    steady = [T0 + timedelta(seconds=36 * i) for i in range(1, 100)]
    state = replay(ORDERS, burst + steady, complete=True)
    last = steady[-1]
    assert state.tokens(last) == 0
    assert state.next_token_at(last) == last + timedelta(seconds=36)


def _gcra(bucket: Bucket, arrivals: list[datetime]) -> tuple[list[datetime], datetime | None]:
    """Boulder's GCRA from an empty history: what it admits, and its final TAT."""
    tat: datetime | None = None
    admitted = []
    for now in arrivals:
        base = max(tat or now, now)
        if base + bucket.interval - now <= bucket.period:
            tat = base + bucket.interval
            admitted.append(now)
    return admitted, tat


arrival_gaps = st.lists(st.integers(0, 4 * 3600), min_size=1, max_size=120)


@settings(max_examples=150, deadline=None)
@given(gaps=arrival_gaps, look=st.integers(0, 6 * 3600))
def test_a_replay_of_the_last_period_never_believes_in_a_token_the_ca_has_not(
    gaps: list[int], look: int
) -> None:
    """Whatever happened earlier, the last period (plus the spend before it) is enough
    to never overstate the tokens: the CA never refuses what the ledger allows."""
    bucket = Bucket(5, timedelta(hours=1))
    arrivals = []
    at = T0
    for gap in gaps:
        at += timedelta(seconds=gap)
        arrivals.append(at)
    admitted, tat = _gcra(bucket, arrivals)
    now = arrivals[-1] + timedelta(seconds=look)
    truth = BucketState(bucket, tat)
    since = now - bucket.period
    anchor = [t for t in admitted if t <= since][-1:]
    window = anchor + [t for t in admitted if t > since]
    seen = replay(bucket, window, complete=not anchor)
    assert seen.tokens(now) <= truth.tokens(now)
    if truth.next_token_at(now) is not None:
        assert seen.next_token_at(now) is not None
        assert seen.next_token_at(now) >= truth.next_token_at(now)  # type: ignore[operator]
    if not anchor:  # nothing was spent before the window: the replay is exact
        assert seen.tat == tat
        assert seen.tokens(now) == truth.tokens(now)


def test_a_replay_is_exact_after_a_burst_that_has_refilled() -> None:
    """A full burst, then a second one a period later: the first no longer counts."""
    bucket = Bucket(5, timedelta(hours=1))
    first = [T0] * 5
    second = [T0 + timedelta(hours=1, minutes=1)] * 5
    now = T0 + timedelta(hours=2)
    seen = replay(bucket, first[-1:] + second, complete=False)
    truth = BucketState(bucket, _gcra(bucket, first + second)[1])
    assert seen.tokens(now) == truth.tokens(now) == 4


# --- the ledger: charges, holds, exemptions ---------------------------------------------


async def test_new_orders_are_held_once_the_accounts_300_are_used_until_the_next_token() -> None:
    ledger, tx = LimitsLedger(), MemoryLimitRecords()
    for i in range(300):
        assert (
            await ledger.reserve(tx, request(f"d{i}.example{i}.com", f"example{i}.com"), T0) is None
        )
    hold = await ledger.reserve(tx, request("late.example.net", "example.net"), T0)
    assert hold is not None
    assert hold.reason == QUOTA_ACCOUNT_ORDERS
    assert hold.until == T0 + timedelta(seconds=36)
    assert "300 per 3 h" in hold.message and "waits for a token" in hold.message
    # no time in the text: a waiting domain's next attempt moves without an event
    assert T0.isoformat(timespec="seconds")[:10] not in hold.message
    assert tx.count("account_orders", "") == 300  # a hold records nothing
    later = T0 + timedelta(seconds=36)
    assert await ledger.reserve(tx, request("late.example.net", "example.net"), later) is None
    assert (await ledger.budget(tx, later)).tokens == 0


async def test_a_reservation_reads_every_bucket_it_checks_in_one_read() -> None:
    """Each read is a round trip to the store (a thread hop on SQLite): a new certificate's
    reservation checks four buckets (name set, new orders, registered domain, failed
    authorizations) and must read their spends together, not once per bucket."""
    ledger, tx = LimitsLedger(), MemoryLimitRecords()
    assert await ledger.reserve(tx, request("a.example.com"), T0) is None
    assert tx.reads == 1
    assert len((await ledger.outlook(tx, request("b.example.com"), T0)).buckets) == 4
    assert tx.reads == 2
    assert await ledger.reorder(tx, request("a.example.com"), T0) is None
    assert tx.reads == 3


async def test_new_certificates_per_registered_domain_then_one_per_202_minutes() -> None:
    ledger, tx = LimitsLedger(), MemoryLimitRecords()
    for i in range(50):
        assert await ledger.reserve(tx, request(f"n{i}.example.com"), T0) is None
    hold = await ledger.reserve(tx, request("n50.example.com"), T0)
    assert hold is not None and hold.reason == QUOTA_REGISTERED_DOMAIN
    assert hold.until == T0 + timedelta(minutes=201.6)
    assert "registered domain example.com" in hold.message
    # another registered domain is not held
    assert await ledger.reserve(tx, request("a.example.org", "example.org"), T0) is None


async def test_renewals_skip_the_registered_domain_and_new_order_buckets_not_the_name_set() -> None:
    ledger, tx = LimitsLedger(), MemoryLimitRecords()
    renewing = request("old.example.com", renewal=True)
    tx.record_issuance("old.example.com", ("old.example.com",), T0 - timedelta(days=60))
    for i in range(50):
        await ledger.reserve(tx, request(f"n{i}.example.com"), T0)
    for i in range(250):
        await ledger.reserve(tx, request(f"x{i}.other{i}.org", f"other{i}.org"), T0)
    assert (await ledger.budget(tx, T0)).tokens == 0
    for i in range(5):  # both buckets are empty; renewals go on
        at = T0 + timedelta(minutes=i)
        assert await ledger.reserve(tx, renewing, at) is None
        await ledger.order_failed(tx, renewing, 0, at)  # refunds the name-set reservation
        assert await ledger.reserve(tx, renewing, at) is None
        tx.record_issuance("old.example.com", ("old.example.com",), at)
    hold = await ledger.reserve(tx, renewing, T0 + timedelta(minutes=5))
    assert hold is not None and hold.reason == QUOTA_NAME_SET
    assert hold.until == T0 + timedelta(hours=33.6)


async def test_a_renewal_is_what_the_ca_calls_one_not_what_the_request_says() -> None:
    """No certificate for these names in the last 90 days: a new certificate at the CA."""
    ledger, tx = LimitsLedger(), MemoryLimitRecords()
    tx.record_issuance("gone.example.com", ("gone.example.com",), T0 - timedelta(days=91))
    await ledger.reserve(tx, request("gone.example.com", renewal=True), T0)
    assert tx.count(REGISTERED_DOMAIN, "example.com") == 1
    assert tx.count("account_orders", "") == 1


async def test_ari_renewals_are_exempt_from_every_bucket_and_pause() -> None:
    ledger, tx = LimitsLedger(), MemoryLimitRecords()
    ari = request("a.example.com", replaces="cert-id")
    await ledger.rate_limited(tx, request("b.example.com"), "account", T0 + timedelta(hours=1), T0)
    for _ in range(20):
        assert await ledger.reserve(tx, ari, T0) is None
    assert tx.count(NAME_SET, "a.example.com") == 0


async def test_failed_validations_hold_a_name_five_per_hour_then_one_per_12_minutes() -> None:
    ledger, tx = LimitsLedger(), MemoryLimitRecords()
    failing = request("flaky.example.com")
    for i in range(5):
        at = T0 + timedelta(minutes=i)
        assert await ledger.reserve(tx, failing, at) is None
        await ledger.order_failed(tx, failing, 1, at, identifier="flaky.example.com")
    hold = await ledger.reserve(tx, failing, T0 + timedelta(minutes=5))
    assert hold is not None and hold.reason == QUOTA_FAILED_AUTHORIZATIONS
    assert hold.until == T0 + timedelta(minutes=12)
    assert "flaky.example.com" in hold.message
    # the failed orders' certificate reservations were refunded, their order tokens not
    assert tx.count(REGISTERED_DOMAIN, "example.com") == 0
    assert tx.count(NAME_SET, "flaky.example.com") == 0
    assert tx.count("account_orders", "") == 5


async def test_a_failure_without_a_named_identifier_charges_every_name_of_the_order() -> None:
    ledger, tx = LimitsLedger(), MemoryLimitRecords()
    both = OrderRequest(
        "*.example.com", "shop", "example.com", ("*.example.com", "example.com"), False, None
    )
    await ledger.order_failed(tx, both, 1, T0)
    assert tx.count("failed_authorizations", "*.example.com") == 1
    assert tx.count("failed_authorizations", "example.com") == 1


async def test_a_refund_leaves_the_spends_of_an_issued_certificate() -> None:
    ledger, tx = LimitsLedger(), MemoryLimitRecords()
    done = request("a.example.com")
    await ledger.reserve(tx, done, T0)
    tx.record_issuance("a.example.com", ("a.example.com",), T0 + timedelta(minutes=1))
    await ledger.order_failed(tx, done, 0, T0 + timedelta(minutes=2))  # a stray call
    assert tx.count(REGISTERED_DOMAIN, "example.com") == 1


async def test_a_rate_limited_answer_pauses_its_bucket_for_every_domain_under_it() -> None:
    ledger, tx = LimitsLedger(), MemoryLimitRecords()
    until = T0 + timedelta(hours=2)
    await ledger.rate_limited(tx, request("a.example.com"), "registered_domain", until, T0)
    hold = await ledger.reserve(tx, request("b.example.com"), T0 + timedelta(hours=1))
    assert hold is not None
    assert (hold.reason, hold.until) == (CA_RATE_LIMITED, until)
    assert "registered domain example.com" in hold.message
    assert await ledger.reserve(tx, request("b.example.org", "example.org"), T0) is None
    assert await ledger.reserve(tx, request("b.example.com"), until) is None


async def test_an_account_wide_pause_holds_renewals_too_an_orders_pause_does_not() -> None:
    ledger, tx = LimitsLedger(), MemoryLimitRecords()
    tx.record_issuance("r.example.com", ("r.example.com",), T0 - timedelta(days=60))
    renewal = request("r.example.com", renewal=True)
    await ledger.rate_limited(tx, request("a.example.com"), "orders", T0 + timedelta(hours=1), T0)
    assert await ledger.reserve(tx, renewal, T0) is None
    held = await ledger.reserve(tx, request("n.example.net", "example.net"), T0)
    assert held is not None and held.reason == CA_RATE_LIMITED
    budget = await ledger.budget(tx, T0)
    assert (budget.tokens, budget.next_at) == (0, T0 + timedelta(hours=1))
    assert budget.wait is not None and budget.wait.reason == CA_RATE_LIMITED
    await ledger.rate_limited(tx, request("a.example.com"), "account", T0 + timedelta(hours=3), T0)
    held = await ledger.reserve(tx, renewal, T0)
    assert held is not None and held.until == T0 + timedelta(hours=3)
    assert "the ACME account" in held.message


async def test_a_pause_keeps_the_later_retry_after() -> None:
    ledger, tx = LimitsLedger(), MemoryLimitRecords()
    a = request("a.example.com")
    await ledger.rate_limited(tx, a, "name_set", T0 + timedelta(hours=5), T0)
    await ledger.rate_limited(tx, a, "name_set", T0 + timedelta(hours=1), T0)
    hold = await ledger.reserve(tx, a, T0)
    assert hold is not None and hold.until == T0 + timedelta(hours=5)


async def test_the_budget_is_the_accounts_whole_tokens_and_when_the_next_comes() -> None:
    ledger, tx = LimitsLedger(), MemoryLimitRecords()
    assert (await ledger.budget(tx, T0)).tokens == 300
    for i in range(298):
        await ledger.reserve(tx, request(f"a{i}.e{i}.com", f"e{i}.com"), T0)
    budget = await ledger.budget(tx, T0)
    assert (budget.tokens, budget.next_at) == (2, None)
    for i in range(2):
        await ledger.reserve(tx, request(f"b{i}.f{i}.com", f"f{i}.com"), T0)
    budget = await ledger.budget(tx, T0)
    assert (budget.tokens, budget.next_at) == (0, T0 + timedelta(seconds=36))


def _scope(ca: FakeCA, name: str) -> str:
    with pytest.raises(RateLimited) as refused:
        ca.new_order((name,), "example.com", T0)
    problem = AcmeProblem("ACME_RATE_LIMITED", refused.value.detail, retryable=True)
    return rate_limit_scope(problem)


def test_the_fake_cas_refusals_name_their_bucket_as_lets_encrypt_does() -> None:
    """Its details carry LE's documentation anchor, which the issuer's scope reads."""
    one = Bucket(1, timedelta(days=7))
    failing = FakeCA(Limits(failed_authorizations=Bucket(1, timedelta(hours=1))))
    failing.fail_validation(
        failing.new_order(("a.example.com",), "example.com", T0), "a.example.com", T0
    )
    assert _scope(failing, "a.example.com") == "failed_authorizations"
    per_domain = FakeCA(Limits(registered_domain=one))
    per_domain.finalize(per_domain.new_order(("a.example.com",), "example.com", T0), T0)
    assert _scope(per_domain, "b.example.com") == "registered_domain"
    per_names = FakeCA(Limits(name_set=one))
    per_names.finalize(per_names.new_order(("a.example.com",), "example.com", T0), T0)
    assert _scope(per_names, "a.example.com") == "name_set"  # a renewal: only this bucket


# --- the ledger against a CA that enforces the same limits -----------------------------


@pytest.mark.parametrize("seed", range(6))
async def test_whatever_the_ledger_lets_through_the_ca_accepts(seed: int) -> None:
    """Small buckets, random orders, renewals, validation failures and quiet spells:
    the fake CA (its own GCRA, tests/fakes/ca.py) never answers rateLimited."""
    rng = random.Random(seed)
    limits = Limits(
        account_orders=Bucket(8, timedelta(hours=1)),
        registered_domain=Bucket(4, timedelta(days=1)),
        name_set=Bucket(2, timedelta(days=1)),
        failed_authorizations=Bucket(2, timedelta(hours=1)),
    )
    ledger, tx, ca = LimitsLedger(limits), MemoryLimitRecords(), FakeCA(limits)
    names = [f"d{i}.r{i % 5}.test" for i in range(400)]
    now, placed, held = T0, 0, 0
    for _ in range(1500):
        now += timedelta(seconds=rng.choice([0, 0, 1, 5, 30, 60, 600, 3600]))
        name = rng.choice(names)
        order = OrderRequest(name, "app", name.split(".", 1)[1], (name,), False, None)
        hold = await ledger.reserve(tx, order, now)
        if hold is not None:
            assert hold.until > now
            held += 1
            continue
        placed += 1
        try:
            fake = ca.new_order(order.names, order.registered_domain, now)
        except RateLimited as refused:  # pragma: no cover - the failure this test is about
            pytest.fail(f"the CA refused what the ledger allowed: {refused.detail}")
        if rng.random() < 0.3:
            ca.fail_validation(fake, name, now)
            await ledger.order_failed(tx, order, 1, now, identifier=name)
        else:
            ca.finalize(fake, now)
            tx.record_issuance(name, order.names, now)
    assert ca.refusals == {}
    assert placed > 100 and held > 100  # the buckets were really under pressure


async def test_the_fake_ca_refuses_past_a_bucket_with_retry_after() -> None:
    """The fake is a real check: it refuses what the limits forbid."""
    ca = FakeCA()
    for i in range(300):
        ca.new_order((f"n{i}.e{i}.com",), f"e{i}.com", T0)
    with pytest.raises(RateLimited) as refused:
        ca.new_order(("late.example.com",), "example.com", T0)
    assert refused.value.bucket == "account_orders"
    assert refused.value.retry_after == timedelta(seconds=36)
    problem = AcmeProblem("ACME_RATE_LIMITED", refused.value.detail, retryable=True)
    assert rate_limit_scope(problem) == "orders"
