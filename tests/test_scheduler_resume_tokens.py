"""Every new order the CA hears is counted in the ledger once, also when an order is resumed.

The CA counts each new-order request on the account's new-orders bucket. An
order row is reserved once, when its checks pass; its first new order uses that
token. Two ways a resumed row places another, each checked here against a fake
CA that enforces the bucket (tests/fakes/ca.py), shared by the brokers:

- a row without an order URL, resumed by another broker after the first lost its
  lease between the CA creating the order and the URL being saved: the CA counted
  that order, so the one placed now is reserved again (``LimitsLedger.reorder``);
- a row whose order the CA can no longer complete (invalid, expired), replaced by
  a new order inside the issuer: counted as its URL is saved (``LimitsLedger.placed``).

Without that the ledger believes in a token the CA does not have, and the next
first certificate is refused ``rateLimited`` instead of waiting for its token.
Bucket: 2 new orders per hour (one back every 30 minutes).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from pathlib import Path

from certbroker.app import Broker
from certbroker.claims import Claims
from certbroker.clock import FakeClock
from certbroker.delegation import LabelKey
from certbroker.limits import QUOTA_ACCOUNT_ORDERS, Bucket, Limits, LimitsLedger
from certbroker.model import LetsEncryptState
from certbroker.scheduler import Policy, Scheduler
from certbroker.store.sqlite import SqliteStore
from certbroker.x509.validate import CustomCertificateValidator
from tests.fakes.ca import FakeCA, LimitedIssuer
from tests.fakes.dns import FakeDns
from tests.fakes.issuer import PKI, FakeCertificate
from tests.fakes.sealer import CountingSealer
from tests.fakes.world import START, TARGETS, world

LIMITS = Limits(account_orders=Bucket(2, timedelta(hours=1)))
LEASE = timedelta(seconds=30)
FIRST, SECOND = "a.one.test", "b.two.test"


class CreatedThenHeld(LimitedIssuer):
    """The CA creates the order (and counts it), then the broker stalls before it can
    save the URL (``hold_before_saving``) or right after (``hold_after_saving``)."""

    def __init__(self, clock: FakeClock, ca: FakeCA, *, before_saving: bool) -> None:
        super().__init__(clock, ca)
        self.before_saving = before_saving
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()
        self.urls: list[str] = []

    async def issue(
        self,
        names: list[str],
        key_pem: bytes,
        *,
        on_order_created: Callable[[str], Awaitable[None]] | None = None,
        **options: object,
    ) -> FakeCertificate:
        async def held(url: str) -> None:
            self.urls.append(url)
            if self.before_saving:
                self.entered.set()
                await self.gate.wait()
            if on_order_created is not None:
                await on_order_created(url)
            self.entered.set()
            await self.gate.wait()

        return await super().issue(names, key_pem, on_order_created=held, **options)  # type: ignore[arg-type]


class Stalled(Claims):
    """A broker that stopped renewing its leases (paused past its lease, or dead)."""

    async def renew(
        self, working: Callable[[], Mapping[str, object]], lost: Callable[[str], None]
    ) -> None:
        return None


def broker(
    store: SqliteStore, clock: FakeClock, owner: str, issuer: LimitedIssuer, claims: type[Claims]
) -> tuple[Scheduler, Broker]:
    scheduler = Scheduler(
        store,
        clock,
        CountingSealer(),
        issuer,
        FakeDns(),
        TARGETS,
        Policy(limits=LIMITS),
        labels=LabelKey(secrets.token_bytes(32)),
        claims=claims(store, clock, owner, LEASE),
    )
    app = Broker(
        store,
        clock,
        CountingSealer(),
        CustomCertificateValidator([PKI.root.cert]),
        LabelKey(secrets.token_bytes(32)),
        wake_scheduler=scheduler.wake,
    )
    return scheduler, app


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.01)


async def tokens(store: SqliteStore, clock: FakeClock) -> int:
    return (await LimitsLedger(LIMITS).budget(store, clock.now())).tokens


async def test_an_order_without_url_taken_over_by_another_broker_is_reserved_again(
    tmp_path: Path,
) -> None:
    store = await SqliteStore.open(str(tmp_path / "shared.sqlite3"))
    clock = FakeClock(START)
    ca = FakeCA(LIMITS)
    stalled = CreatedThenHeld(clock, ca, before_saving=True)
    b_issuer = LimitedIssuer(clock, ca)
    a, a_app = broker(store, clock, "a", stalled, Stalled)
    b, b_app = broker(store, clock, "b", b_issuer, Claims)
    await a.start()
    try:
        await a_app.issue_certificate(FIRST, "one")
        await asyncio.wait_for(stalled.entered.wait(), 10)  # the CA counted it; no URL saved
        order = await store.get_order(FIRST)
        assert order is not None and order.order_url == ""
        assert ca.orders == 1 and await tokens(store, clock) == 1

        await b.start()
        clock.advance(LEASE + timedelta(seconds=1))  # a's lease lapsed: b takes the row over

        async def in_use(name: str) -> bool:
            domain = await store.get_domain(name)
            return domain is not None and domain.le_state is LetsEncryptState.IN_USE

        await until(lambda: in_use(FIRST))
        assert [c.resume_url for c in b_issuer.orders_for(FIRST)] == [""]  # a new order
        assert ca.orders == 2
        assert await tokens(store, clock) == 0  # as at the CA: two new orders, two tokens

        # The next first certificate waits for its token instead of being refused.
        await b_app.issue_certificate(SECOND, "two")

        async def held() -> bool:
            domain = await store.get_domain(SECOND)
            assert domain is not None
            return domain.retry.last_error_reason == QUOTA_ACCOUNT_ORDERS

        await until(held)
        assert ca.refusals == {}
        assert b_issuer.orders_for(SECOND) == []

        # a wakes up: its URL is not saved (b holds the row), and nothing is counted twice
        stalled.gate.set()
        await until(lambda: _idle(a))
        assert await tokens(store, clock) == 0
        assert ca.orders == 2

        clock.advance(timedelta(minutes=30))  # one token back, at the CA and here
        await until(lambda: in_use(SECOND))
        assert ca.refusals == {}
    finally:
        stalled.gate.set()
        await a.stop()
        await b.stop()
        await store.close()


async def test_an_order_resumed_by_its_url_costs_no_token(tmp_path: Path) -> None:
    """No double counting: an order the CA still has is continued, not charged again."""
    async with world(tmp_path, policy=Policy(limits=LIMITS)) as w:
        ca = FakeCA(LIMITS)
        stalled = CreatedThenHeld(w.clock, ca, before_saving=False)
        await w.restart(issuer=stalled)
        await w.add(FIRST, "one")
        await asyncio.wait_for(stalled.entered.wait(), 10)  # URL saved, then the broker stops
        assert await tokens(w.store, w.clock) == 1
        resumed = LimitedIssuer(w.clock, ca)
        await w.restart(issuer=resumed)
        assert (await w.domain(FIRST)).le_state is LetsEncryptState.IN_USE
        assert [c.resume_url for c in resumed.orders_for(FIRST)] == stalled.urls
        assert ca.orders == 1
        assert await tokens(w.store, w.clock) == 1
    assert ca.refusals == {}


async def test_a_resumed_order_the_issuer_replaces_is_counted_when_its_url_is_saved(
    tmp_path: Path,
) -> None:
    async with world(tmp_path, policy=Policy(limits=LIMITS)) as w:
        ca = FakeCA(LIMITS)
        stalled = CreatedThenHeld(w.clock, ca, before_saving=False)
        await w.restart(issuer=stalled)
        await w.add(FIRST, "one")
        await asyncio.wait_for(stalled.entered.wait(), 10)  # URL saved, then the broker stops
        resumed = LimitedIssuer(w.clock, ca)
        resumed.unfinishable = set(stalled.urls)  # expired meanwhile: a new order replaces it
        await w.restart(issuer=resumed)
        assert (await w.domain(FIRST)).le_state is LetsEncryptState.IN_USE
        assert ca.orders == 2
        assert await tokens(w.store, w.clock) == 0

        await w.add(SECOND, "two")

        async def held() -> bool:
            return (await w.domain(SECOND)).retry.last_error_reason == QUOTA_ACCOUNT_ORDERS

        await until(held)  # waits for its token instead of being refused
        assert resumed.orders_for(SECOND) == []
    assert ca.refusals == {}


async def _idle(scheduler: Scheduler) -> bool:
    return scheduler.busy == 0
