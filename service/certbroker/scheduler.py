"""The scheduler: claims due domains, runs each one's next action, writes what it found.

It decides nothing about a domain itself. For each due domain ``lifecycle``
names the next action (``next_action``); the scheduler runs that action's one
observe function against its ports (``certbroker.ports``: the CA, DNS, our
DNS-01 zone) and writes the typed observations through ``lifecycle.apply`` in
one transaction (``outbox.save``: an event only for what watchers are shown).
The scheduler itself owns only: claiming due work (an indexed query, so idle
domains cost nothing; never one domain twice at once), concurrency, wake-ups,
pacing when the store fails, the CA's shared health (``ca_health``), and stopping.

When the CA is unavailable (network, timeouts, 5xx) no order starts: a
domain that wants one is held once (``CaUnavailable``: reason
``CA_UNAVAILABLE``, no attempt counted) and one probe task asks the CA's
directory on a capped backoff; a held domain's ``next_attempt_at`` shows the
next probe (moved at each failed probe without an event); when it answers, the
held domains are due at once, renewals first. An account the CA no longer knows
(or, looked at after an ``unauthorized``, reports deactivated) is recovered at
most once per ``ACCOUNT_RECOVERY_INTERVAL`` and the order placed again; an
``unauthorized`` while the account is valid is the domain's own failure; an
order or authorization URL the CA forgot (404) is
replaced by one new order in the same step, without counting a failure; the
replacement is reserved in the ledger like any order (``LimitsLedger.reorder``:
the CA counts every new-order request), or held for its token. So is an order
row without a URL that is resumed (its first request may have reached the CA
before the URL was saved: a crash, a lease lost); see ``_order``.

The actions and their writes::

    Rest                -> Ticked (a custom certificate may have expired)
    HoldNotConfigured   -> NotConfigured (held until a restart: settings are read at start)
    CheckDns            -> DnsChecked, CaaChecked, ChecksPassed  + the order reserved
    CheckDelegation     -> DelegationChecked, CaaChecked, ChecksPassed  + the order reserved
    RecheckDelegation   -> DelegationChecked / DelegationUnknown
    CheckPlatformZone   -> CaaChecked, ChecksPassed / Dns01AccessFailed  + the order reserved
    RecheckPlatformZone -> PlatformZoneChecked
    PlaceOrder          -> CertificateIssued / OrderFailed (order row dropped, ledger told)
    FetchRenewalInfo    -> RenewalInfoFetched / RenewalInfoUnavailable

A check write that leaves the domain due for an order (``is_due_for_order``)
reserves it in the same transaction: the limits ledger (``certbroker.limits``)
spends the CA's tokens or says which bucket holds it and until when
(``QuotaHeld``), and the order row (name set, sealed key) is written before the
CA hears anything, with the order URL as soon as the CA gives it.
A crash therefore resumes the order (``PlaceOrder``) instead of ordering twice.
The key is generated once, sealed once into the order row, and the same
sealed blob becomes the certificate's: it is never opened and sealed again.

Which due domains a pass claims is ``certbroker.priorities``: renewals by
expiry first, then first certificates round-robin between apps, and no more
first certificates ready to order than the account's new-orders bucket has
tokens (``LimitsLedger.budget``); the others stay due, unworked and unwritten,
and the loop sleeps until the next token instead of re-holding each of them.

Several brokers on one store: "never one domain twice at once" holds across
them. The due domains chosen are leased in the store (``certbroker.claims``:
``Store.claim_due``; candidates leased to another broker are not offered),
renewed while their steps run and released when they end; a dead broker's
leases lapse and the others take its domains over, resuming any order from its
row. The writes that cost the CA (the order reserved, its URL, the certificate,
a failed order's row dropped) are made only while the lease holds
(``Claims.check``); a step whose lease was lost stops without writing.
``_inflight`` stays as the in-process guard: one task per name here.

When the store cannot record a step (disk full, database locked), the step's
domain is held back in memory with a growing delay, the whole loop pauses and
probes (``store_health``), and ``on_store_health`` hears when the store turns
unhealthy and healthy again (the server maps it to gRPC health). Nothing is
retried at once, so a failing store cannot make the loop spin. An order whose
certificate was issued but could not be stored keeps its row and URL, so the
next step downloads that certificate again instead of ordering anew.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Protocol

from opentelemetry import trace

from certbroker import delegation, lifecycle, outbox, priorities
from certbroker.acme import ari
from certbroker.acme.keys import generate_private_key
from certbroker.acme.problems import AcmeProblem, rate_limit_scope
from certbroker.ca_health import CaHealth
from certbroker.claims import Claims, LeaseLost
from certbroker.clock import Clock
from certbroker.delegation import LabelKey
from certbroker.dns import DnsLookupError, PlatformTargets
from certbroker.errors import StoreUnavailable
from certbroker.lifecycle import (
    CaaChecked,
    CaAvailable,
    CaStillUnavailable,
    CaUnavailable,
    CertificateIssued,
    CheckDelegation,
    CheckDns,
    CheckPlatformZone,
    ChecksPassed,
    DelegationChecked,
    DelegationUnknown,
    Dns01AccessFailed,
    DnsChecked,
    FetchRenewalInfo,
    HoldNotConfigured,
    NotConfigured,
    Observation,
    OrderFailed,
    OrderStarted,
    PlaceOrder,
    PlatformZoneChecked,
    QuotaHeld,
    RecheckDelegation,
    RecheckPlatformZone,
    RenewalInfoFetched,
    RenewalInfoUnavailable,
    Rest,
    Restarted,
    StepCrashed,
    Ticked,
)
from certbroker.limits import (
    QUOTA_ACCOUNT_ORDERS,
    Budget,
    Hold,
    Limits,
    LimitsLedger,
    OrderRequest,
)
from certbroker.metrics import Metrics
from certbroker.model import Domain, Source
from certbroker.names import registered_domain
from certbroker.ports import Dns01Access, DnsChecks, Issued, Issuer, Sealer
from certbroker.store.base import LimitReads, NewCertificate, PendingOrder, Store, Transaction
from certbroker.store_health import Holds, StoreHealth
from certbroker.telemetry import spanned
from certbroker.x509.info import certificate_info

__all__ = ["Issued", "Ledger", "Policy", "Scheduler"]

log = logging.getLogger(__name__)
# real seconds: a safety net only; commits and wake() drive the loop
_IDLE_POLL = 1.0
# real seconds: a due domain a claim skipped (its row locked by a writer for a moment)
_CLAIM_RETRY = 0.05
#: A rateLimited answer without Retry-After pauses its bucket this long.
_RATE_LIMIT_DEFAULT = timedelta(hours=1)
#: Domains re-evaluated per transaction at start.
_RESTART_BATCH = 500
#: Releasing the domains held for the CA failed (the store): try again after this,
#: doubling up to the most.
_WAKE_RETRY_FIRST = timedelta(seconds=5)
_WAKE_RETRY_MAX = timedelta(minutes=1)
#: An account the CA forgot or deactivated is recovered at most this often, and looked
#: at (after an ``unauthorized``: deactivated, or not the account's fault?) at most as often.
ACCOUNT_RECOVERY_INTERVAL = timedelta(minutes=5)
#: Orders that met the old account within this of a recovery retry on the new one.
_ACCOUNT_FRESH = timedelta(seconds=30)
#: After an outage, renewals are due this much before first certificates (due order).
_RENEWALS_FIRST = timedelta(milliseconds=1)
#: A first certificate whose checks passed while the account's tokens were promised.
_QUEUED = (
    "new orders of the ACME account: the tokens left are taken by domains ahead of it "
    "(Let's Encrypt's limit, counted here); the next attempt waits for its turn"
)
#: Due domains a pass chooses from (priorities.order): enough for every app's most
#: overdue domain in a busy hour, bounded so a pass stays one small query.
_CANDIDATES = 512


@dataclass
class _NewOrderToken:
    """Whether a new-orders token was charged for the next new order an ``_order`` step
    places and is still unused: by the reservation (``reserved``) or a replacement
    (``_reorder``). The issuer's first new order uses it; any further one (a resumed
    order replaced inside the issuer) is counted as it is saved (``LimitsLedger.placed``).
    In memory for the step only: a row resumed by another step is charged anew.
    """

    unused: bool


def same_domain(started: Domain, latest: Domain | None) -> bool:
    """Is ``latest`` the domain a step started on, not the name removed and added again?

    An order runs for seconds to minutes, validated through the delegation label and
    owner of the row it started from. If that row is removed and the name added again
    meanwhile (possibly by another app, with another label), what the order finds or
    gets must not land on the new row: that would serve another app a certificate
    validated through the previous owner's delegation (or the CA's reuse of its
    authorizations).
    """
    return (
        latest is not None
        and latest.app == started.app
        and latest.created_at == started.created_at
        and latest.delegation_label == started.delegation_label
    )


class Ledger(Protocol):
    """The limits ledger (``certbroker.limits.LimitsLedger``: the CA's limits, counted
    from the store)."""

    async def reserve(
        self, tx: Transaction, request: OrderRequest, now: datetime
    ) -> Hold | None: ...

    async def reorder(
        self, tx: Transaction, request: OrderRequest, now: datetime
    ) -> Hold | None: ...

    async def placed(self, tx: Transaction, request: OrderRequest, now: datetime) -> None: ...

    async def order_failed(
        self, tx: Transaction, request: OrderRequest, failed_authorizations: int, now: datetime
    ) -> None: ...

    async def rate_limited(
        self,
        tx: Transaction,
        request: OrderRequest,
        scope: str,
        retry_after: datetime,
        now: datetime,
    ) -> None: ...

    async def budget(self, reads: LimitReads, now: datetime) -> Budget:
        """New orders (not renewals) the account may place now; if none, when the next."""
        ...


@dataclass(frozen=True)
class Policy:
    """The knobs of a step, from Settings."""

    dns_check_interval: timedelta = timedelta(seconds=60)
    caa_identity: str = "letsencrypt.org"
    limits: Limits = field(default_factory=Limits)
    max_concurrent: int = 32
    # Several brokers on one store: look for domains other brokers added at least this
    # often (their API calls wake only their own scheduler). None: one broker, no need.
    claim_poll: timedelta | None = None


class Scheduler:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        sealer: Sealer,
        issuer: Issuer | None,
        dns: DnsChecks,
        targets: PlatformTargets | None,
        policy: Policy,
        *,
        dns01: Dns01Access | None = None,
        labels: LabelKey | None = None,
        on_store_health: Callable[[bool], Awaitable[None]] | None = None,
        ledger: Ledger | None = None,
        pick: Callable[[], float] = random.random,
        metrics: Metrics | None = None,
        tracer: trace.Tracer | None = None,
        claims: Claims | None = None,
    ) -> None:
        # a lone broker (tests, one SQLite file) gets an owner of its own
        self._claims = claims or Claims(
            store, clock, f"scheduler-{random.getrandbits(48):012x}", timedelta(seconds=30)
        )
        self._metrics = metrics or Metrics()  # outcomes counted (certbroker.metrics)
        self._tracer = tracer or trace.NoOpTracer()  # each step a trace (@spanned)
        self._store = store
        self._dns01 = dns01
        self._labels = labels
        self._clock = clock
        self._sealer = sealer
        self._issuer = issuer
        self._dns = dns
        self._targets = targets
        self._policy = policy
        self._rules = lifecycle.Rules(policy.dns_check_interval, policy.caa_identity)
        self._setup = lifecycle.Setup(
            acme=issuer is not None,
            http01=targets is not None,
            # ``dns01`` may hold the platform's zones alone (no delegation zone: "")
            dns01=dns01 is not None and bool(dns01.zone),
            platform_dns01=dns01 is not None,
        )
        self._ledger: Ledger = ledger or LimitsLedger(policy.limits)
        # When each app last got a new-order token (priorities.order's round-robin),
        # and the steps claimed with one that have not finished (not yet in the store).
        self._served: dict[str, datetime] = {}
        self._token_claims: set[str] = set()
        self._pick = pick  # where in the CA's renewal window (RFC 9773: at random)
        self._wake = asyncio.Event()
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._restarted = False
        self._health = StoreHealth()
        self._holds = Holds()
        self._on_store_health = on_store_health
        self._reported_healthy = True
        self.ca = CaHealth()
        self._ca_down = asyncio.Event()
        self._probe_task: asyncio.Task[None] | None = None
        self._account_recovered_at: datetime | None = None
        self._account_ok = False
        # The last look at the account (``_account_status``): when, and what the CA said.
        self._account_checked_at: datetime | None = None
        self._account_status = ""
        self._account_lock = asyncio.Lock()

    # -- the loop -----------------------------------------------------------------------

    def wake(self) -> None:
        """Something changed (a new domain, a retry-now): look at the store again."""
        self._wake.set()

    async def start(self) -> None:
        self._claims.start_renewing(lambda: self._inflight, self._lost)
        self._loop_task = asyncio.create_task(self._run(), name="scheduler")
        if self._issuer is not None:
            self._probe_task = asyncio.create_task(self._probe_ca(), name="ca probe")

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        for loop_task in (self._loop_task, self._probe_task):
            if loop_task is not None:
                loop_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loop_task
        await self._claims.stop()
        working = list(self._inflight)
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._claims.release_all(working)  # the other brokers take them over now

    def _lost(self, name: str) -> None:
        """Another broker took ``name`` over (this one stalled past the lease): stop its step."""
        task = self._inflight.get(name)
        if task is not None:
            task.cancel()

    @property
    def busy(self) -> int:
        return len(self._inflight)

    @property
    def store_healthy(self) -> bool:
        return self._health.healthy

    def _skipped(self) -> set[str]:
        """Being worked, or held back after their step could not be recorded."""
        return set(self._inflight) | self._holds.held(self._clock.now())

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            paused_until = self._health.resume_at(self._clock.now())
            if paused_until is not None:
                await self._clock.sleep_until(paused_until, self._wake)
                continue
            if self._health.suspect and not await self._probe():
                continue
            try:
                if not self._restarted:
                    await self._restart()
                started, starved, token_at = await self._start_due()
                # Due domains left waiting for a token must not look due to the loop.
                after = self._clock.now() if starved else None
                next_due = await self._claims.next_time(self._skipped(), after)
                if token_at is not None and (next_due is None or token_at < next_due):
                    next_due = token_at
            except Exception as error:
                # Reads failed: the same pause as for failed writes, not a traceback a second.
                log.debug("scheduler pass failed", exc_info=True)
                self._health.failed(error, self._clock.now())
                await self._report_health()
                continue
            release = self._holds.next_release(self._clock.now())
            if release is not None and (next_due is None or release < next_due):
                next_due = release
            now = self._clock.now()
            poll = self._policy.claim_poll
            if poll is not None and (next_due is None or next_due > now + poll):
                next_due = now + poll  # what other brokers added
            if next_due is not None and next_due > now:
                await self._clock.sleep_until(next_due, self._wake)
            elif next_due is not None and len(self._inflight) < self._policy.max_concurrent:
                if not started:  # due but not claimable this instant (a row locked): a breath
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), _CLAIM_RETRY)
                continue  # became due while we looked: start it now, not after an idle wait
            else:
                # Nothing due, or no free slot: a finished step or a change wakes us.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), _IDLE_POLL)

    async def _restart(self) -> None:
        """Domains held for a missing setting are looked at again: it may be set now.

        Only when this broker can order at all (a broker without an ACME directory
        would only find the same thing again).
        """
        if self._setup.acme:
            names = await self._store.names_with_last_error(lifecycle.NOT_CONFIGURED)
            names += await self._store.names_with_last_error(lifecycle.CA_UNAVAILABLE)
            for first in range(0, len(names), _RESTART_BATCH):
                now = self._clock.now()
                async with self._transaction() as tx:
                    for name in names[first : first + _RESTART_BATCH]:
                        latest = await tx.get_domain(name)
                        if latest is not None:
                            await outbox.save(tx, latest, lifecycle.apply(latest, Restarted(), now))
        self._restarted = True

    async def _start_due(self) -> tuple[int, bool, datetime | None]:
        """Claim due work in priority order; ``(started, starved, next token)``: starved
        when first certificates ready to order were left for lack of a token while
        slots were free. What is chosen is leased in the store first (other brokers')."""
        free = self._policy.max_concurrent - len(self._inflight)
        if free <= 0:
            return 0, False, None
        # Each step reads its domain itself, and in-flight ones are skipped in SQL.
        now = self._clock.now()
        due = await self._store.due_candidates(
            now, _CANDIDATES, exclude=self._skipped(), owner=self._claims.owner
        )
        if not due:
            return 0, False, None
        budget = Budget(0, None)
        if any(c.needs_token for c in due):  # else the account's bucket is not read at all
            budget = await self._ledger.budget(self._store, now)
        tokens = budget.tokens - len(self._token_claims)
        ordered = priorities.order(due, self._served)
        claim = priorities.claim(ordered, free, tokens)
        # Another broker may have claimed some since they were read: those are not ours.
        granted = set(await self._claims.claim([c.name for c in claim.chosen]))
        for candidate in claim.chosen:
            name = candidate.name
            if name not in granted:
                continue
            if candidate.needs_token:
                self._token_claims.add(name)
                self._served[candidate.app] = now
            task = asyncio.create_task(self._guarded_step(name), name=f"step {name}")
            self._inflight[name] = task
        if len(self._served) > 4 * _CANDIDATES:  # bounded memory: forget the longest served
            for app in sorted(self._served, key=self._served.__getitem__)[:_CANDIDATES]:
                del self._served[app]
        if claim.starved and budget.wait is not None:
            chosen = {c.name for c in claim.chosen}
            waiting = [c for c in ordered if c.needs_token and c.name not in chosen]
            await self._await_tokens(waiting, budget.wait)
        return len(granted), claim.starved, budget.next_at if claim.starved else None

    async def _await_tokens(self, waiting: Sequence[priorities.Candidate], wait: Hold) -> None:
        """First certificates left for lack of a token: their next attempt, honestly.

        Each says which bucket holds it and when its turn can come at the earliest:
        the ``k``-th in priority order needs ``k + 1`` more tokens, the first at
        ``wait.until``, then one per refill interval (later arrivals of other apps
        may still go first: the round-robin). Written to the scheduling columns
        only (the reason and message do not change while it waits: no event), and
        only for domains still due, so each is written once per wait rather than
        once per token; the order between them stays the priority order.
        """
        interval = self._policy.limits.account_orders.interval
        now = self._clock.now()
        async with self._transaction() as tx:
            for k, candidate in enumerate(waiting):
                latest = await tx.get_domain(candidate.name)
                if latest is None:
                    continue
                if not lifecycle.is_due_for_order(lifecycle.apply(latest, Ticked(), now), now):
                    continue  # another broker worked it meanwhile
                held = QuotaHeld(wait.reason, wait.message, wait.until + k * interval)
                await outbox.save(tx, latest, self._apply(latest, [held], now))

    async def _guarded_step(self, name: str) -> None:
        try:
            try:
                await self.step(name)
            except (StoreUnavailable, LeaseLost):
                raise
            except Exception as error:
                # A bug or an unforeseen failure: recorded like a failed try, so it backs off.
                log.exception("step for %s failed", name)
                await self._write(name, [StepCrashed(type(error).__name__)])
        except asyncio.CancelledError:
            self._inflight.pop(name, None)
            self._token_claims.discard(name)
            raise
        except LeaseLost as lost:
            # Another broker works it now (this one stalled past the lease): write nothing.
            log.warning("stopped the step for %s: %s", name, lost)
        except Exception as error:
            # The outcome could not be recorded: neither retry at once nor lose the domain
            # (its lease lapses by itself: no other broker retries it sooner either).
            now = self._clock.now()
            self._holds.hold(name, now)
            self._health.failed(error, now)
        else:
            self._holds.release(name)
            # Released while still in flight here: claimed again after this, never before.
            with contextlib.suppress(Exception):  # else it lapses: the same, a lease later
                await self._claims.release(name)
        self._inflight.pop(name, None)
        self._token_claims.discard(name)
        self._wake.set()
        await self._report_health()

    async def _probe(self) -> bool:
        """After failures: one small write says whether the store takes writes again."""
        try:
            async with self._transaction() as tx:
                await tx.set_meta("scheduler_probe", self._clock.now().isoformat().encode())
        except Exception as error:
            self._health.failed(error, self._clock.now())
            await self._report_health()
            return False
        await self._report_health()
        return True

    async def _report_health(self) -> None:
        healthy = self._health.healthy
        if healthy == self._reported_healthy:
            return
        self._reported_healthy = healthy
        if self._on_store_health is not None:
            await self._on_store_health(healthy)

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Transaction]:
        """The store's transaction; a commit tells the health tracker that writes work."""
        async with self._store.transaction() as tx:
            yield tx
        self._health.succeeded(self._clock.now())

    def _apply(self, domain: Domain, observations: Sequence[Observation], now: datetime) -> Domain:
        for observation in (Ticked(), *observations):
            domain = lifecycle.apply(domain, observation, now, self._rules)
        return domain

    async def _write(
        self,
        name: str,
        observations: Sequence[Observation],
        extra: Callable[[Transaction], Awaitable[None]] | None = None,
        started: Domain | None = None,
    ) -> Domain | None:
        """``_write_observed``; a domain held for the CA while the probe found it back (and
        maybe woke the held domains before this write) wakes itself at once rather than
        wait for the end of the next outage."""
        written = await self._write_observed(name, observations, extra, started)
        if (
            written is not None
            and lifecycle.held_for_ca(written)
            and self.ca.available
            and any(isinstance(o, CaUnavailable) for o in observations)
        ):
            written = await self._write_observed(name, [CaAvailable()], None, started)
        return written

    async def _write_observed(
        self,
        name: str,
        observations: Sequence[Observation],
        extra: Callable[[Transaction], Awaitable[None]] | None = None,
        started: Domain | None = None,
    ) -> Domain | None:
        """Apply ``observations`` to the latest row in one transaction; write only changes.

        Most writes change nothing: that is decided on the committed row first,
        without taking the store's single write lock. With ``started`` (what an order
        began from), a row that is not that domain any more (``same_domain``) is left
        alone, as a removed one is.
        """
        now = self._clock.now()
        if extra is None:
            current = await self._store.get_domain(name)
            if current is None or (started is not None and not same_domain(started, current)):
                return None
            if not lifecycle.changed(current, self._apply(current, observations, now)):
                return current
        async with self._transaction() as tx:
            latest = await tx.get_domain(name)
            if latest is None or (started is not None and not same_domain(started, latest)):
                return None
            if extra is not None:
                await extra(tx)
            return await outbox.save(tx, latest, self._apply(latest, observations, now))

    # -- one step: the action lifecycle names, observed, then written ------------------

    @spanned("certbroker.step")
    async def step(self, name: str) -> None:
        """One unit of work for a due domain."""
        domain = await self._store.get_domain(name)
        if domain is None:
            return
        now = self._clock.now()
        domain = lifecycle.apply(domain, Ticked(), now, self._rules)
        due = lifecycle.is_due_for_order(domain, now)
        order = await self._store.get_order(name) if due else None
        if order is not None and order.started_at < domain.created_at:
            # Left by an earlier holder of the name (older versions could write one after
            # the removal): resuming it would reuse authorizations this row never earned.
            async with self._transaction() as tx:
                await tx.delete_order(name)
            order = None
        action = lifecycle.next_action(domain, now, self._setup, order_pending=order is not None)
        match action:
            case Rest():
                await self._write(name, [])
            case HoldNotConfigured(missing):
                await self._write(name, [NotConfigured(missing)])
            case CheckDns():
                await self._checked(domain, await self._check_dns(domain))
            case CheckDelegation():
                await self._checked(domain, await self._check_delegation(domain))
            case RecheckDelegation():
                await self._write(name, await self._recheck_delegation(domain))
            case CheckPlatformZone():
                await self._checked(domain, await self._check_platform_zone(domain))
            case RecheckPlatformZone():
                await self._write(name, [await self._recheck_platform_zone(domain)])
            case PlaceOrder():
                assert order is not None
                held = self._ca_held()
                if held is not None:
                    await self._write(name, [held])  # the order row stays: resumed later
                    return
                await self._order(domain, order)
            case FetchRenewalInfo():
                await self._write(name, [await self._renewal_info(domain)])

    # -- observe functions -------------------------------------------------------------

    async def _check_dns(self, domain: Domain) -> list[Observation]:
        """HTTP-01: DNS must point at the platform and CAA allow our CA before the CA hears."""
        assert self._targets is not None
        pointed = await self._dns.points_to_platform(domain.name, self._targets)
        if not pointed.points:
            return [DnsChecked(pointed)]
        caa = await self._caa(domain)
        if not caa.result.allowed:
            return [DnsChecked(pointed), caa]
        return [DnsChecked(pointed), caa, ChecksPassed()]

    async def _caa(self, domain: Domain) -> CaaChecked:
        result = await self._dns.caa_allows(
            domain.name, self._policy.caa_identity, wildcard=domain.is_wildcard
        )
        return CaaChecked(result)

    async def _check_delegation(self, domain: Domain) -> list[Observation]:
        """DNS-01: delegation, CAA and our own update rights, before the CA hears."""
        assert self._dns01 is not None
        delegated = await self._delegation(domain)
        if not isinstance(delegated, DelegationChecked) or not delegated.ok:
            return [delegated]
        caa = await self._caa(domain)
        if not caa.result.allowed:
            return [delegated, caa]
        try:
            await self._dns01.check_access(self._label(domain))
        except AcmeProblem as problem:
            log.warning("DNS-01 updates for %s fail: %s", domain.name, problem)
            return [delegated, caa, Dns01AccessFailed(problem.reason, problem.detail)]
        return [delegated, caa, ChecksPassed()]

    async def _recheck_delegation(self, domain: Domain) -> list[Observation]:
        """A resting DNS-01 domain: is the delegation still there for the next renewal?"""
        found = await self._delegation(domain)
        if isinstance(found, DelegationChecked) and not found.ok:
            log.info("delegation of %s is gone (%s)", domain.name, found.reason)
        return [found]

    async def _check_platform_zone(self, domain: Domain) -> list[Observation]:
        """The platform's own domain: CAA and our update rights at its ``_acme-challenge``
        name in the platform's zone, before the CA hears. No delegation to look for."""
        caa = await self._caa(domain)
        if not caa.result.allowed:
            return [caa]
        problem = await self._platform_access(domain)
        if problem is not None:
            return [caa, Dns01AccessFailed(problem.reason, problem.detail)]
        return [caa, ChecksPassed()]

    async def _recheck_platform_zone(self, domain: Domain) -> PlatformZoneChecked:
        """A resting platform domain: may our key still write there before the renewal?"""
        problem = await self._platform_access(domain)
        if problem is None:
            return PlatformZoneChecked(ok=True)
        return PlatformZoneChecked(ok=False, reason=problem.reason, message=problem.detail)

    async def _platform_access(self, domain: Domain) -> AcmeProblem | None:
        """Our update rights at the platform domain's challenge name (an update changing
        nothing); the problem if the zone refuses or does not answer."""
        assert self._dns01 is not None
        try:
            await self._dns01.check_access(self._label(domain))
        except AcmeProblem as problem:
            log.warning("DNS-01 updates for the platform domain %s fail: %s", domain.name, problem)
            return problem
        return None

    async def _delegation(self, domain: Domain) -> DelegationChecked | DelegationUnknown:
        """Is ``_acme-challenge.<base>`` a CNAME to this domain's record?"""
        assert self._dns01 is not None
        zone = self._dns01.zone
        label = self._label(domain)
        try:
            found = await self._dns.cname_target(delegation.challenge_name(domain.name))
        except DnsLookupError as error:
            return DelegationUnknown(error.reason, error.message)
        if found == delegation.target(label, zone):
            return DelegationChecked(ok=True)
        return DelegationChecked(
            ok=False,
            reason="DNS01_DELEGATION_MISSING" if found is None else "DNS01_DELEGATION_WRONG",
            message=delegation.instruction(domain.name, label, zone, found),
            record=delegation.record(domain.name, label, zone),
        )

    async def _renewal_info(self, domain: Domain) -> Observation:
        """The CA's renewal window for the current certificate (RFC 9773)."""
        assert self._issuer is not None and domain.le_cert is not None
        try:
            await self._issuer.start()
            window = await self._issuer.renewal_info(domain.le_cert.chain_pem)
        except AcmeProblem as problem:
            log.info("renewal information for %s: %s", domain.name, problem)
            if self.ca.is_outage(problem):
                self._ca_failed(problem)
            return RenewalInfoUnavailable(offered=True, message=str(problem))
        if window is None:
            return RenewalInfoUnavailable(offered=False)
        return RenewalInfoFetched(window.start, window.end, window.retry_after, self._pick())

    async def _account_failure(self) -> OrderFailed | CaUnavailable | None:
        """Start the issuer (idempotent); its failure is the order's, unless the CA is down
        (then the domain is held, like every other, until the probe finds it back)."""
        assert self._issuer is not None
        held = self._ca_held()
        if held is not None:
            return held
        try:
            await self._issuer.start()
        except AcmeProblem as problem:
            log.warning("ACME account not ready: %s", problem)
            if self.ca.is_outage(problem):
                self._ca_failed(problem)
                self._metrics.order_finished("held", problem.reason)
                return self._ca_held()
            self._metrics.order_finished("failed", problem.reason)
            return OrderFailed(
                problem.reason,
                f"the CA is unreachable: {problem.detail}",
                retryable=True,
                retry_after=problem.retry_after,
            )
        return None

    # -- checks, then the reservation, in one write -------------------------------------

    async def _checked(self, domain: Domain, observations: list[Observation]) -> None:
        """Write what the checks found; if the domain is then due for an order, reserve it
        in the same transaction and place it."""
        if isinstance(observations[-1], ChecksPassed):
            failure = await self._account_failure()
            if failure is not None:
                observations.append(failure)
        now = self._clock.now()
        if not lifecycle.is_due_for_order(self._apply(domain, observations, now), now):
            await self._write(domain.name, observations)
            return
        key_pem = await asyncio.to_thread(generate_private_key, domain.key_algorithm)
        sealed = self._sealer.seal(key_pem, domain.name)
        order: PendingOrder | None = None
        async with self._transaction() as tx:
            latest = await tx.get_domain(domain.name)
            if latest is None or not same_domain(domain, latest):
                return  # removed (and maybe added again) while we looked: checks not its
            after = self._apply(latest, observations, now)
            if lifecycle.is_due_for_order(after, now):
                await self._claims.check(tx, domain.name)  # the CA hears of it next
                request = self._request(after, after.order_names)
                hold = await self._queued(tx, domain.name, request, now)
                if hold is None:
                    hold = await self._ledger.reserve(tx, request, now)
                if hold is not None:
                    self._metrics.order_finished("held", hold.reason)
                    after = lifecycle.apply(
                        after, QuotaHeld(hold.reason, hold.message, hold.until), now
                    )
                else:
                    order = PendingOrder(
                        domain=after.name,
                        registered_domain=request.registered_domain,
                        names=request.names,
                        key_sealed=sealed,
                        started_at=now,
                    )
                    await tx.put_order(order)
                    after = lifecycle.apply(after, OrderStarted(), now, self._rules)
            saved = await outbox.save(tx, latest, after)
        if order is not None:
            await self._order(saved, order, key_pem, reserved=True)

    async def _queued(
        self, tx: Transaction, name: str, request: OrderRequest, now: datetime
    ) -> Hold | None:
        """A first certificate whose step was claimed without a new-orders token (its DNS
        check came first, which costs the CA nothing) does not take a token promised to
        a domain claimed with one: it waits for its turn in the priority order instead.
        """
        if request.renewal or name in self._token_claims:
            return None
        budget = await self._ledger.budget(tx, now)
        if budget.tokens - len(self._token_claims) > 0:
            self._served[request.app] = now  # it takes a token: the round-robin's turn
            return None
        if budget.wait is not None:
            return budget.wait
        # The tokens left are promised to steps under way: its turn comes after theirs.
        return Hold(QUOTA_ACCOUNT_ORDERS, _QUEUED, now)

    def _request(self, domain: Domain, names: tuple[str, ...]) -> OrderRequest:
        """What the ledger counts: a renewal when the certificate it replaces has these names."""
        cert = domain.le_cert
        renewal = cert is not None and set(cert.sans) == set(names)
        replaces: str | None = None
        if renewal and cert is not None and self._issuer is not None and self._issuer.offers_ari:
            with contextlib.suppress(ari.ARIError, ValueError):
                replaces = ari.cert_id(cert.chain_pem)
        return OrderRequest(
            domain=domain.name,
            app=domain.app,
            registered_domain=registered_domain(domain.name),
            names=names,
            renewal=renewal,
            replaces=replaces,
        )

    # -- the order ---------------------------------------------------------------------

    @spanned("acme.order")
    async def _order(
        self,
        domain: Domain,
        order: PendingOrder,
        key_pem: bytes | None = None,
        *,
        reserved: bool = False,
    ) -> None:
        """Take the reserved order to a certificate (resuming it if the CA has it already).

        Every new-order request the CA hears is counted once in the ledger
        (``_NewOrderToken``). ``reserved``: the caller has just reserved the row
        (``_checked``), so its new-orders token is unused. Otherwise a row without an
        order URL is resumed (after a crash, a lost lease, a URL that could not be
        saved): the request that created the row may have reached the CA, which
        counted it, and cannot be found again, so the new order placed now is a
        replacement and reserved as one (``_reorder``; held if no token).
        """
        assert self._issuer is not None
        name = domain.name
        failure = await self._account_failure()
        if failure is not None:
            await self._write(name, [failure], started=domain)  # the order row stays
            return
        request = self._request(domain, order.names)
        if not order.order_url and not reserved:
            if not await self._reorder(domain, order, request):
                return  # held for a token: the row went, the checks come first again
            reserved = True
        if key_pem is None:
            key_pem = self._sealer.open(order.key_sealed, name)
        dns01 = lifecycle.uses_dns01(domain)
        resume_url = order.order_url
        token = _NewOrderToken(unused=reserved)
        replaced = False  # at most one new order per step for a forgotten order or account
        while True:
            try:
                issued = await self._issuer.issue(
                    list(order.names),
                    key_pem,
                    dns01=dns01,
                    dns01_label=self._label(domain) if dns01 else "",
                    replaces=request.replaces or "",
                    resume_url=resume_url,
                    on_order_created=self._saver(domain, order, request, token),
                )
                break
            except AcmeProblem as problem:
                if self.ca.is_outage(problem):
                    log.warning("order for %s: the CA is unavailable (%s)", name, problem)
                    self._metrics.order_finished("held", problem.reason)
                    self._ca_failed(problem)
                    held = self._ca_held()
                    assert held is not None
                    await self._write(name, [held], started=domain)  # the order row stays
                    return
                if not replaced and await self._replaceable(problem):
                    log.info("order for %s: %s; placing a new order", name, problem.reason)
                    replaced = True
                    resume_url = ""  # abandoned: bound to a forgotten account or order
                    if not await self._reorder(domain, order, request):
                        return  # held for a token: the row went, the checks come first again
                    token.unused = True
                    continue
                held = self._ca_held()
                if held is not None and _account_problem(problem):
                    # The CA went down while the account was looked at or recovered.
                    self._metrics.order_finished("held", problem.reason)
                    await self._write(name, [held], started=domain)  # the order row stays
                    return
                log.warning(
                    "order for %s failed: %s (%s)",  # the CA's detail, not just the reason code
                    name,
                    problem,
                    problem.type_urn or "no problem document",
                    extra={
                        "domain": name,
                        "reason": problem.reason,
                        "identifier": problem.identifier,
                    },
                )
                self._metrics.order_finished("failed", problem.reason)
                await self._order_failed(domain, request, problem)
                return
        self.ca.succeeded()
        await self._store_certificate(domain, order, issued.chain_pem)

    async def _reorder(self, domain: Domain, order: PendingOrder, request: OrderRequest) -> bool:
        """Reserve the replacement order in the ledger (``LimitsLedger.reorder``: the CA
        counts every new-order request) and forget the abandoned URL, in one write; True
        to place it now.

        Held (no new-orders token, a pause): the order row is dropped and its
        certificate reservation refunded, as for a failed order, and the domain waits
        for the token like any other (``QuotaHeld``, no failure counted); when it is
        due again its checks run and the order is reserved afresh.
        """
        now = self._clock.now()
        async with self._transaction() as tx:
            latest = await tx.get_domain(order.domain)
            if latest is None or not same_domain(domain, latest):
                return False  # removed meanwhile: no order row outlives its domain
            await self._claims.check(tx, order.domain)
            hold = await self._ledger.reorder(tx, request, now)
            if hold is None:
                await tx.put_order(replace(order, order_url=""))
                return True
            await tx.delete_order(order.domain)
            await self._ledger.order_failed(tx, request, 0, now)
            self._metrics.order_finished("held", hold.reason)
            held = QuotaHeld(hold.reason, hold.message, hold.until)
            await outbox.save(tx, latest, self._apply(latest, [held], now))
        return False

    async def _replaceable(self, problem: AcmeProblem) -> bool:
        """A new order may fix it: the CA forgot the order (404), or the account, which
        is then recovered (at most once per ``ACCOUNT_RECOVERY_INTERVAL``)."""
        if _account_problem(problem):
            return await self._recover_account(problem)
        return problem.not_found

    async def _recover_account(self, problem: AcmeProblem) -> bool:
        """Find the account again or register one; False when recovered too recently, or
        when the account is fine (the failure is then the domain's own).

        accountDoesNotExist: the CA forgot the key too (a reset), so the stored key
        is found or registered again (one key per directory). ``unauthorized`` on a
        signed request may mean a deactivated account, but at Let's Encrypt also an
        order or authorization of another account or a name this account may not
        have: the account is looked at first (``_account_status``), and only one the
        CA reports deactivated (or revoked, or refuses to show) is replaced, with a
        new key (a deactivated account's key can never register again at Let's
        Encrypt). Registering a new account for nothing would cost one of the CA's
        few new registrations (10 per IP per 3 hours) and strand every pending order.
        """
        assert self._issuer is not None
        async with self._account_lock:
            now = self._clock.now()
            last = self._account_recovered_at
            if last is not None and now - last < ACCOUNT_RECOVERY_INTERVAL:
                # Orders already under way met the old account: retry on the new one.
                # Later, the new account failing too is a normal failure (no loop).
                return self._account_ok and now - last <= _ACCOUNT_FRESH
            status = "gone"
            if problem.unauthorized:
                status = await self._account_verdict(now)
                if status not in ("deactivated", "revoked", "gone"):
                    log.info(
                        "the CA refused a request (%s) but the ACME account is %s: "
                        "the domain's failure, not the account's",
                        problem.detail or problem.reason,
                        status or "of unknown status",
                    )
                    return False
            new_key = status != "gone"
            self._account_recovered_at = now
            self._account_ok = False
            log.warning(
                "the CA says the ACME account is %s; recovering it (%s key)",
                status,
                "new" if new_key else "stored",
            )
            try:
                await self._issuer.recover_account(new_key=new_key)
            except AcmeProblem as failure:
                log.warning("ACME account recovery failed: %s", failure)
                if self.ca.is_outage(failure):
                    self._ca_failed(failure)
                return False
            self._account_ok = True
            return True

    async def _account_verdict(self, now: datetime) -> str:
        """What the CA says of the account (``Issuer.account_status``), asked at most once
        per ``ACCOUNT_RECOVERY_INTERVAL`` (else the last answer); "" when it could not tell
        (the CA is then marked unavailable if that is why)."""
        assert self._issuer is not None
        checked = self._account_checked_at
        if checked is not None and now - checked < ACCOUNT_RECOVERY_INTERVAL:
            return self._account_status
        self._account_checked_at = now
        try:
            status = await self._issuer.account_status()
        except AcmeProblem as failure:
            log.warning("could not look at the ACME account: %s", failure)
            if self.ca.is_outage(failure):
                self._ca_failed(failure)
            status = ""
        self._account_status = status
        return status

    # -- the CA's shared health ----------------------------------------------------------

    def _ca_failed(self, problem: AcmeProblem) -> None:
        was = self.ca.available
        outage = self.ca.failed(problem, self._clock.now())
        if was:
            log.warning(
                "the CA is unavailable (%s: %s); orders paused, next probe at %s",
                outage.reason,
                outage.detail,
                outage.next_probe.isoformat(),
            )
            self._ca_down.set()

    def _ca_held(self) -> CaUnavailable | None:
        outage = self.ca.outage
        if outage is None:
            return None
        return CaUnavailable(outage.reason, outage.detail, outage.next_probe)

    async def _probe_ca(self) -> None:
        """While the CA is unavailable: probe its directory on the capped backoff; when
        it answers, make the held domains due at once (renewals first)."""
        assert self._issuer is not None
        while not self._stopping:
            await self._ca_down.wait()
            outage = self.ca.outage
            if outage is None:
                self._ca_down.clear()
                continue
            await self._clock.sleep_until(outage.next_probe)
            try:
                await self._issuer.probe()
            except AcmeProblem as problem:
                later = self.ca.probe_failed(problem, self._clock.now())
                log.info("the CA is still unavailable; next probe at %s", later.next_probe)
                await self._reschedule_held(later.next_probe)
                continue
            except Exception:
                log.exception("CA probe crashed")
                later = self.ca.probe_failed(
                    AcmeProblem("INTERNAL", "probe crashed", retryable=True), self._clock.now()
                )
                await self._reschedule_held(later.next_probe)
                continue
            self.ca.probe_succeeded(self._clock.now())
            self._ca_down.clear()
            log.info("the CA answers again; resuming orders")
            await self._wake_held_until_done()
            self._wake.set()

    async def _wake_held_until_done(self) -> None:
        """Release the held domains, trying again while the store fails: they are never
        due on their own, so a release given up would keep them (renewals included)
        until a restart. A partition that cut both the CA and the database heals in
        any order."""
        delay = _WAKE_RETRY_FIRST
        while not self._stopping:
            try:
                await self._wake_held()
                return
            except Exception:
                log.warning(
                    "could not wake the domains held for the CA; trying again in %gs",
                    delay.total_seconds(),
                    exc_info=True,
                )
            await self._clock.sleep_until(self._clock.now() + delay)
            delay = min(delay * 2, _WAKE_RETRY_MAX)

    async def _reschedule_held(self, next_probe: datetime) -> None:
        """Held domains show the next probe as their next attempt: the scheduling columns
        alone (``outbox.save``: no event, a router sees no churn); a status page reads it.
        A store failure only leaves the previous probe's time shown."""
        try:
            names = await self._store.names_with_last_error(lifecycle.CA_UNAVAILABLE)
            moved = CaStillUnavailable(next_probe)
            for first in range(0, len(names), _RESTART_BATCH):
                now = self._clock.now()
                async with self._transaction() as tx:
                    for name in names[first : first + _RESTART_BATCH]:
                        latest = await tx.get_domain(name)
                        if latest is not None:
                            await outbox.save(tx, latest, lifecycle.apply(latest, moved, now))
        except Exception:
            log.warning("could not show the next CA probe on the held domains", exc_info=True)

    async def _wake_held(self) -> None:
        """Held domains due now: renewals (a certificate to keep alive) before first ones."""
        names = await self._store.names_with_last_error(lifecycle.CA_UNAVAILABLE)
        for first in range(0, len(names), _RESTART_BATCH):
            now = self._clock.now()
            async with self._transaction() as tx:
                for name in names[first : first + _RESTART_BATCH]:
                    latest = await tx.get_domain(name)
                    if latest is None:
                        continue
                    # The due query orders by due time: renewals a moment earlier (both
                    # are due now; a time in the future would wait for the clock).
                    at = now - _RENEWALS_FIRST if latest.le_cert is not None else now
                    await outbox.save(tx, latest, lifecycle.apply(latest, CaAvailable(), at))

    async def _order_failed(
        self, domain: Domain, request: OrderRequest, problem: AcmeProblem
    ) -> None:
        """Drop the order row (a fresh order next time), tell the ledger, back off."""
        scope = rate_limit_scope(problem) if problem.reason == "ACME_RATE_LIMITED" else ""
        failure = OrderFailed(
            problem.reason,
            problem.detail or problem.reason,
            problem.retryable,
            problem.retry_after,
            scope,
            problem.failed_authorizations,
        )
        now = self._clock.now()

        async def book(tx: Transaction) -> None:
            await self._claims.check(tx, request.domain)  # the row may be another's to resume
            await tx.delete_order(request.domain)
            await self._ledger.order_failed(tx, request, problem.failed_authorizations, now)
            if scope:
                pause = problem.retry_after or _RATE_LIMIT_DEFAULT
                await self._ledger.rate_limited(tx, request, scope, now + pause, now)

        await self._write(request.domain, [failure], extra=book, started=domain)

    def _saver(
        self, domain: Domain, order: PendingOrder, request: OrderRequest, token: _NewOrderToken
    ) -> Callable[[str], Awaitable[None]]:
        """Called by the issuer for each new order it placed: save its URL, and count it
        if no unused token was charged for it (the issuer replaced a resumed order the
        CA could no longer complete: invalid, expired, unknown)."""

        async def save(url: str) -> None:
            unreserved, token.unused = not token.unused, False
            now = self._clock.now()
            lost: LeaseLost | None = None
            async with self._transaction() as tx:
                if unreserved:  # the CA admitted it: counted whoever saves the URL
                    await self._ledger.placed(tx, request, now)
                if not same_domain(domain, await tx.get_domain(order.domain)):
                    return  # removed meanwhile: no order row outlives its domain
                # No challenge is answered before this: a broker that lost the lease
                # abandons this order here, and the new holder orders afresh.
                try:
                    await self._claims.check(tx, order.domain)
                except LeaseLost as error:
                    lost = error  # the spend above is committed all the same
                else:
                    await tx.put_order(replace(order, order_url=url))
            if lost is not None:
                raise lost

        return save

    @spanned("store.certificate")
    async def _store_certificate(self, domain: Domain, order: PendingOrder, chain_pem: str) -> None:
        """The certificate, its issuance (quotas count it) and the domain, in one write.

        The order row's sealed key becomes the certificate's as it is: same key,
        same domain bound into the seal.
        """
        info = replace(certificate_info(chain_pem), received_at=self._clock.now())
        name = order.domain
        now = self._clock.now()
        assert self._issuer is not None
        async with self._transaction() as tx:
            await self._claims.check(tx, name)  # else the new holder stores it, from the order
            latest = await tx.get_domain(name)
            await tx.delete_order(name)
            await tx.record_issuance(name, order.registered_domain, order.names, info.serial, now)
            if latest is None or not same_domain(domain, latest):
                # Removed while ordering (and maybe added again, by another app): the
                # issuance still counts for quotas; the certificate serves no one.
                log.warning("issued %s for a domain removed meanwhile; not stored", name)
                return
            cert = await tx.add_certificate(
                NewCertificate(
                    domain=name, source=Source.LETS_ENCRYPT, info=info, key_sealed=order.key_sealed
                )
            )
            issued = CertificateIssued(cert, ari=self._issuer.offers_ari)
            await outbox.save(tx, latest, self._apply(latest, [issued], now))
        self._metrics.order_finished("issued", started=order.started_at)
        log.info("issued %s (serial %s, until %s)", name, info.serial, info.not_after)

    def _label(self, domain: Domain) -> str:
        """The domain's delegation label: stored with it since it was added.

        A DNS-01 domain without one (none exist: creation and migration 003 set
        it) gets its owner-bound label, the same on every replica; never one
        derived from the name alone. The platform's own domains have no
        delegation: theirs is their challenge name, which ``Dns01Publisher``
        writes directly in the platform's zone.
        """
        if lifecycle.is_platform(domain):
            return delegation.challenge_name(domain.name)
        if domain.delegation_label:
            return domain.delegation_label
        if self._labels is None:
            raise RuntimeError(f"{domain.name} has no delegation label and no label key is set")
        return self._labels.label(domain.app, domain.name)


def _account_problem(problem: AcmeProblem) -> bool:
    """The CA refused the account (accountDoesNotExist) or the signed request (unauthorized)."""
    return problem.account_gone or problem.unauthorized
