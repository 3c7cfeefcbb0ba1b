"""The scheduler's claim under scarce tokens: the real scheduler and store over the fakes
(tests/fakes/world.py), with a CA that enforces Let's Encrypt's buckets (tests/fakes/ca.py).

First certificates beyond the account's new-order tokens stay due, unworked and
unwritten, while the loop sleeps until the next token (it does not spin on
them); at each token the apps take turns; and the CA never answers rateLimited.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection
from datetime import datetime, timedelta
from pathlib import Path

from certbroker.acme.problems import AcmeProblem
from certbroker.limits import Bucket, Limits, LimitsLedger
from certbroker.priorities import Candidate
from certbroker.scheduler import Policy
from tests.fakes.ca import FakeCA, LimitedIssuer
from tests.fakes.issuer import problem
from tests.fakes.world import World, world

LIMITS = Limits(account_orders=Bucket(2, timedelta(hours=1)))  # a token every 30 minutes
BIG = [f"b{i}.big{i}.test" for i in range(6)]


def count_passes(w: World) -> Callable[[], int]:
    """Each scheduler pass asks for due candidates once: count the asks."""
    asked = 0
    real = w.store.due_candidates

    async def counted(
        now: datetime, limit: int, exclude: Collection[str] = (), owner: str = ""
    ) -> list[Candidate]:
        nonlocal asked
        asked += 1
        return await real(now, limit, exclude, owner)

    w.store.due_candidates = counted  # type: ignore[method-assign]
    return lambda: asked


async def issued(w: World, issuer: LimitedIssuer, count: int) -> None:
    """Wait (real time) for ``count`` certificates and an idle scheduler. (``World.settled``
    would wait for nothing to be due: domains waiting for a token stay due.)"""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if len(issuer.issued) >= count and w.scheduler.busy == 0:
            await asyncio.sleep(0.02)
            if w.scheduler.busy == 0:
                return
        await asyncio.sleep(0.005)
    raise AssertionError(f"{len(issuer.issued)} issued, {w.scheduler.busy} busy; wanted {count}")


async def test_apps_take_turns_at_each_token_and_the_rest_wait_unworked(tmp_path: Path) -> None:
    async with world(tmp_path, policy=Policy(limits=LIMITS)) as w:
        ca = FakeCA(LIMITS)
        issuer = LimitedIssuer(w.clock, ca)
        await w.restart(issuer=issuer)
        passes = count_passes(w)
        start = w.clock.now()
        for name in BIG:
            await w.add(name, "big")
        await issued(w, issuer, 2)  # the burst: two tokens
        await w.add("s0.small.test", "small")
        await asyncio.sleep(0.2)
        assert len(issuer.issued) == 2  # held: no token
        held = await w.domain("s0.small.test")
        assert held.retry.last_error_reason == "QUOTA_ACCOUNT_ORDERS"
        assert held.retry.next_attempt_at == start + timedelta(minutes=30)
        revision = await w.store.current_revision()
        before = passes()
        await asyncio.sleep(0.5)  # real time passes, the fake clock does not: nothing to do
        assert passes() - before <= 2  # asleep until the next token, no spinning
        assert await w.store.current_revision() == revision  # and no re-holding writes
        for token in range(1, 5):
            w.clock.set(start + token * timedelta(minutes=30))
            await issued(w, issuer, 2 + token)
            # the others are due now but have no token: the loop sleeps until the next one
            before = passes()
            await asyncio.sleep(0.3)
            assert passes() - before <= 2
        assert "s0.small.test" in issuer.issued[2:4]  # within the first two tokens
    assert ca.refusals == {}


def forgotten() -> AcmeProblem:
    """A 404 on the new order's authorization: the CA forgot it (a crash, a reset)."""
    gone = problem("ACME_MALFORMED", retryable=False)
    gone.not_found = True
    return gone


async def limited(w: World) -> tuple[FakeCA, LimitedIssuer]:
    ca = FakeCA(LIMITS)
    issuer = LimitedIssuer(w.clock, ca)
    await w.restart(issuer=issuer)
    return ca, issuer


async def test_an_order_placed_again_after_a_404_spends_a_new_orders_token(
    tmp_path: Path,
) -> None:
    """The CA counts the replacement as a new order: so does the ledger, and the next
    first certificate waits for the token instead of being refused by the CA."""
    async with world(tmp_path, policy=Policy(limits=LIMITS)) as w:
        ca, issuer = await limited(w)
        start = w.clock.now()
        issuer.fail("a.one.test", forgotten())
        await w.add("a.one.test", "one")
        await issued(w, issuer, 1)
        assert [c.resume_url for c in issuer.orders_for("a.one.test")] == ["", ""]
        await w.add("b.two.test", "two")
        await asyncio.sleep(0.2)
        held = await w.domain("b.two.test")
        assert held.retry.last_error_reason == "QUOTA_ACCOUNT_ORDERS"
        assert held.retry.attempt == 0
        assert held.retry.next_attempt_at == start + timedelta(minutes=30)
        assert ca.refusals == {}  # the CA was not asked for an order it would refuse
        w.clock.set(start + timedelta(minutes=30))
        await issued(w, issuer, 2)
    assert ca.refusals == {}


async def test_a_replacement_without_a_token_waits_for_one_and_counts_no_failure(
    tmp_path: Path,
) -> None:
    async with world(tmp_path, policy=Policy(limits=LIMITS)) as w:
        ca, issuer = await limited(w)
        start = w.clock.now()
        await w.add("b.two.test", "two")
        await issued(w, issuer, 1)
        issuer.fail("a.one.test", forgotten())
        await w.add("a.one.test", "one")  # the second token; its order is forgotten
        await asyncio.sleep(0.2)
        held = await w.domain("a.one.test")
        assert held.retry.last_error_reason == "QUOTA_ACCOUNT_ORDERS"
        assert held.retry.attempt == 0
        assert held.retry.next_attempt_at == start + timedelta(minutes=30)
        assert await w.store.get_order("a.one.test") is None  # reserved afresh when due
        assert len(issuer.orders_for("a.one.test")) == 1
        assert ca.refusals == {}
        w.clock.set(start + timedelta(minutes=30))
        await issued(w, issuer, 2)
        assert (await w.domain("a.one.test")).retry.attempt == 0
    assert ca.refusals == {}


async def test_an_order_placed_again_on_a_recovered_account_is_reserved_too(
    tmp_path: Path,
) -> None:
    """Counted on the one local bucket: at least what the new account spent (safe side)."""
    async with world(tmp_path, policy=Policy(limits=LIMITS)) as w:
        ca, issuer = await limited(w)
        issuer.account_lost = True
        await w.add("a.one.test", "one")
        await issued(w, issuer, 1)
        assert issuer.recoveries == [False]
        budget = await LimitsLedger(LIMITS).budget(w.store, w.clock.now())
        assert budget.tokens == 0  # the first order's token and the replacement's
    assert ca.refusals == {}


async def events_for(w: World, name: str) -> int:
    return sum(1 for e in await w.store.events_after(0, 10_000) if e.domain_name == name)


async def test_domains_left_waiting_say_when_their_turn_can_come_without_an_event(
    tmp_path: Path,
) -> None:
    """At each token one waiting domain takes it; the others' next attempt moves on to
    when their turn can come (one token per waiting domain ahead), not left in the past,
    and the move is a schedule write: watchers hear nothing."""
    async with world(tmp_path, policy=Policy(limits=LIMITS)) as w:
        _, issuer = await limited(w)
        start = w.clock.now()
        for name in BIG:
            await w.add(name, "big")
        await issued(w, issuer, 2)  # the burst: two tokens; four held until the next
        waiting = [n for n in BIG if n not in issuer.issued]
        for name in waiting:
            held = await w.domain(name)
            assert held.retry.next_attempt_at == start + timedelta(minutes=30)
        events = {name: await events_for(w, name) for name in waiting}
        w.clock.set(start + timedelta(minutes=30))
        await issued(w, issuer, 3)
        await asyncio.sleep(0.1)
        left = [n for n in waiting if n not in issuer.issued]
        assert len(left) == 3
        for k, name in enumerate(sorted(left, key=BIG.index)):
            domain = await w.domain(name)
            assert domain.retry.next_attempt_at == start + (k + 2) * timedelta(minutes=30)
            assert domain.retry.last_error_reason == "QUOTA_ACCOUNT_ORDERS"
            assert domain.retry.attempt == 0
            assert await events_for(w, name) == events[name]  # no event for the move
        for token in range(2, 5):  # each turn comes when it said
            w.clock.set(start + token * timedelta(minutes=30))
            await issued(w, issuer, 2 + token)
            assert issuer.issued[-1] == sorted(left, key=BIG.index)[token - 2]


async def test_a_new_domain_checked_without_a_token_does_not_take_one_promised_to_another(
    tmp_path: Path,
) -> None:
    """Same app: the domain waiting since the burst gets the next token, not the one added
    later whose DNS check (claimed first: it costs the CA nothing) passed at that moment."""
    async with world(tmp_path, policy=Policy(limits=LIMITS)) as w:
        ca, issuer = await limited(w)
        start = w.clock.now()
        for name in BIG[:3]:
            await w.add(name, "big")
        await issued(w, issuer, 2)
        (waiting,) = [n for n in BIG[:3] if n not in issuer.issued]
        await w.scheduler.stop()  # both come due in the same pass
        w.clock.set(start + timedelta(minutes=30))
        await w.add("late.big9.test", "big")
        await w.restart()
        await issued(w, issuer, 3)
        await asyncio.sleep(0.1)
        assert issuer.issued[2] == waiting
        late = await w.domain("late.big9.test")
        assert late.retry.last_error_reason == "QUOTA_ACCOUNT_ORDERS"
        assert late.retry.attempt == 0
        assert late.retry.next_attempt_at == start + timedelta(minutes=60)
    assert ca.refusals == {}
