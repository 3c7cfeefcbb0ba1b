"""A bulk import against Let's Encrypt's rate limits: refusals, renewals, fairness, days.

Scenario (simulated time, fake clock): one app imports 10,000 new domains
(2,000 customers' registered domains, 5 names each); an hour later, its burst
of 300 orders long spent, 19 other apps add 100 each (10 registered domains of
10 names, an app a minute), and 2,000 existing certificates
(100 per app, issued 55-60 days ago, 90-day life) come due for renewal.
The CA is ``tests/fakes/ca.py``: its own GCRA enforcing Let's Encrypt's four
buckets (300 new orders / 3 h per account, 50 new certificates / 7 d per
registered domain, 5 / 7 d per name set, 5 failed validations / h per name),
answering ``rateLimited`` with Retry-After. ``--fail`` of the first validations
fail (the CA charges the failed-authorizations bucket; the domain backs off
1, 2, 4 ... minutes like the broker's).

What runs: the real ``LimitsLedger`` (service/certbroker/limits.py) over the
store's limit records, the real ``priorities.order``/``claim`` and
``spread_renewal``, the real backoff, and a *simplified step loop* in place of
the scheduler: each pass claims at most ``max_concurrent`` (32) due domains in
priority order with the account's budget of new-order tokens, reserves each
through the ledger, and orders at the fake CA, which answers at once (an order
takes no simulated time); then the clock jumps to the next due time or token.
DNS, CAA and the certificate bytes are not simulated. The step loop mirrors
what ``Scheduler._start_due`` does with ``Store.due_candidates`` (each app's
few most overdue domains, renewals first); the scheduler itself, with its
ports faked, is not driven yet (the lifecycle refactor that brings those
fakes is separate work).

``--store memory`` (default) keeps the ledger's records in memory
(tests/fakes/records.py); ``--store sqlite`` uses the SQLite store on a temp
file, every reserve and issuance a real transaction (slower; the same figures).

``--driver scheduler`` runs the real thing instead of the step loop: the real
``Scheduler`` (claim, lifecycle switch, ledger, SQLite store, sealing, real
certificates signed by a test CA) over the ports' fakes (tests/fakes/world.py)
with ``LimitedIssuer`` (the same bucket-enforcing CA behind the issuer port),
domains added through the real use case, the fake clock moved to the next due
time or token once the scheduler is idle. It is slower per domain, so it runs the
scenario scaled by ``--scale`` (default 0.1: 1,000 + 19 x 10 new, 200 renewals,
the account's burst 30 (its refill stays one per 36 s), the small apps arriving
after 6 minutes, and the "1,000th" becoming the big app's 100th). Validation
failures are not injected there.

    .venv/bin/python bench/limits.py [--store memory|sqlite] [--big 10000] [--fail 0.02]
    .venv/bin/python bench/limits.py --driver scheduler [--scale 0.1]

Prints: requests the CA refused for rate limits (target 0), renewals done
before expiry (target all), each small app's first certificate vs the big
app's 1,000th (target: before), simulated days to issue everything, and wall
seconds for the whole simulation (target < 60 s). Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import math
import os
import random
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_info, section

from certbroker import priorities
from certbroker.acme.problems import AcmeProblem, rate_limit_scope
from certbroker.backoff import retry_delay
from certbroker.limits import Bucket, Limits, LimitsLedger, OrderRequest
from certbroker.names import registered_domain
from certbroker.priorities import Candidate, Kind
from certbroker.store.base import LimitReads, LimitRecords
from certbroker.store.sqlite import SqliteStore
from tests.fakes.ca import FakeCA, LimitedIssuer, RateLimited
from tests.fakes.records import MemoryLimitRecords

T0 = datetime(2026, 6, 1, tzinfo=UTC)
MAX_CONCURRENT = 32
LIFE = timedelta(days=90)


@dataclass(eq=False)
class Work:
    due: datetime
    name: str
    app: str = ""
    registered: str = ""
    kind: Kind = Kind.FIRST
    expires: datetime | None = None
    attempt: int = 0


# Queues are heaps of (due, name, work): tuples compare fast, names break ties.
Queue = list[tuple[datetime, str, Work]]


def push(queue: Queue, work: Work) -> None:
    heapq.heappush(queue, (work.due, work.name, work))


def take_due(queue: Queue, now: datetime, most: int) -> list[Work]:
    """Pop up to ``most`` due items (the caller pushes back what it does not finish)."""
    taken = []
    while queue and len(taken) < most and queue[0][0] <= now:
        taken.append(heapq.heappop(queue)[2])
    return taken


class Records(Protocol):
    """Where the ledger's records live: memory or the SQLite store."""

    def transaction(self) -> contextlib.AbstractAsyncContextManager[LimitRecords]: ...

    @property
    def reads(self) -> LimitReads: ...

    async def issued(self, work: Work, at: datetime) -> None: ...


class InMemory:
    def __init__(self) -> None:
        self.records = MemoryLimitRecords()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[LimitRecords]:
        yield self.records

    @property
    def reads(self) -> LimitReads:
        return self.records

    async def issued(self, work: Work, at: datetime) -> None:
        self.records.record_issuance(work.name, (work.name,), at)


class OnSqlite:
    def __init__(self, store: SqliteStore) -> None:
        self.store = store

    def transaction(self) -> contextlib.AbstractAsyncContextManager[LimitRecords]:
        return self.store.transaction()

    @property
    def reads(self) -> LimitReads:
        return self.store

    async def issued(self, work: Work, at: datetime) -> None:
        async with self.store.transaction() as tx:
            await tx.record_issuance(work.name, work.registered, (work.name,), "s", at)


@dataclass
class Figures:
    refused: int = 0
    reserves: int = 0
    holds: int = 0
    passes: int = 0
    failed_validations: int = 0
    orders: int = 0  # placed at the CA
    renewals_in_time: int = 0
    renewals_late: int = 0
    first_cert: dict[str, datetime] = field(default_factory=dict)
    big_issued: list[datetime] = field(default_factory=list)
    last_issue: datetime = T0


def scenario(
    big: int, small_apps: int, per_small: int, renewals: int, small_after: timedelta
) -> list[Work]:
    rng = random.Random(7)
    work: list[Work] = []
    for i in range(big):  # 5 names per customer's registered domain
        name = f"{('www', 'shop', 'blog', 'api', 'mail')[i % 5]}.customer{i // 5}.example"
        work.append(Work(T0, name, "big-import", registered_domain(name)))
    for a in range(small_apps):
        app = f"app{a + 1:02}"
        for i in range(per_small):
            name = f"n{i % 10}.{app}-site{i // 10}.example"
            due = T0 + small_after + timedelta(minutes=a)
            work.append(Work(due, name, app, registered_domain(name)))
    apps = ["big-import", *(f"app{a + 1:02}" for a in range(small_apps))]
    for i in range(renewals):
        name = f"renew{i}.held{i // 10}.example"
        not_before = T0 - timedelta(days=55) - timedelta(seconds=rng.uniform(0, 5 * 86400))
        renew_at = priorities.spread_renewal(name, not_before, not_before + LIFE)
        work.append(
            Work(
                max(renew_at, T0),
                name,
                apps[i % len(apps)],
                registered_domain(name),
                Kind.RENEWAL,
                not_before + LIFE,
            )
        )
    return work


class Loop:
    """The simplified scheduler: claim by priority with the token budget, reserve, order."""

    def __init__(self, records: Records, fail_rate: float) -> None:
        self.records = records
        self.limits = Limits()
        self.ledger = LimitsLedger(self.limits)
        self.ca = FakeCA(self.limits)
        self.rng = random.Random(11)
        self.fail_rate = fail_rate
        self.renewals: Queue = []
        self.firsts: dict[str, Queue] = {}  # per app
        self.served: dict[str, datetime] = {}
        self.figures = Figures()
        self.now = T0

    async def load(self, work: list[Work]) -> None:
        for w in work:
            if w.kind is Kind.RENEWAL:
                assert w.expires is not None
                issued_at = w.expires - LIFE
                self.ca.record_issued((w.name,), issued_at)
                await self.records.issued(w, issued_at)
                push(self.renewals, w)
            else:
                push(self.firsts.setdefault(w.app, []), w)

    def candidates(self, free: int) -> dict[str, Work]:
        """What ``Store.due_candidates`` returns: due renewals, each app's few most
        overdue first certificates; taken out of their queues for the pass."""
        found = {w.name: w for w in take_due(self.renewals, self.now, free)}
        due_apps = [q for q in self.firsts.values() if q and q[0][0] <= self.now]
        per_app = math.ceil(free / max(1, len(due_apps))) + 1
        for queue in due_apps:
            found.update((w.name, w) for w in take_due(queue, self.now, per_app))
        return found

    def queue_of(self, work: Work) -> Queue:
        return self.renewals if work.kind is Kind.RENEWAL else self.firsts[work.app]

    def next_time(self, starved_until: datetime | None) -> datetime | None:
        times = [due for due, _, _ in self.renewals[:1] if due > self.now]
        for queue in self.firsts.values():
            if queue and queue[0][0] > self.now:
                times.append(queue[0][0])
        if starved_until is not None:
            times.append(starved_until)
        return min(times, default=None)

    async def run(self) -> Figures:
        while self.renewals or any(self.firsts.values()):
            self.figures.passes += 1
            found = self.candidates(MAX_CONCURRENT)
            budget = await self.ledger.budget(self.records.reads, self.now)
            wanted = [
                Candidate(w.name, w.app, w.kind, w.due, w.expires, needs_token=w.kind is Kind.FIRST)
                for w in found.values()
            ]
            claim = priorities.claim(
                priorities.order(wanted, self.served), MAX_CONCURRENT, budget.tokens
            )
            for candidate in claim.chosen:
                work = found.pop(candidate.name)
                if candidate.needs_token:
                    self.served[work.app] = self.now
                again = await self.step(work)
                if again is not None:
                    push(self.queue_of(again), again)
            for work in found.values():  # not claimed: back in line, still due
                push(self.queue_of(work), work)
            if claim.chosen:
                continue  # an order takes no simulated time: look again at once
            upcoming = self.next_time(budget.next_at if claim.starved else None)
            if upcoming is None:
                break
            self.now = max(upcoming, self.now)
        self.figures.orders = self.ca.orders
        return self.figures

    async def step(self, work: Work) -> Work | None:
        """One domain's reserve and order; the work to put back, or None when issued."""
        now = self.now
        request = OrderRequest(
            work.name, work.app, work.registered, (work.name,), work.kind is Kind.RENEWAL, None
        )
        self.figures.reserves += 1
        async with self.records.transaction() as tx:
            hold = await self.ledger.reserve(tx, request, now)
        if hold is not None:
            self.figures.holds += 1
            work.due = hold.until
            return work
        try:
            order = self.ca.new_order(request.names, request.registered_domain, now)
        except RateLimited as refused:
            self.figures.refused += 1
            async with self.records.transaction() as tx:
                problem = AcmeProblem("ACME_RATE_LIMITED", refused.detail, retryable=True)
                scope = rate_limit_scope(problem)  # what the real issuer reads
                await self.ledger.rate_limited(tx, request, scope, now + refused.retry_after, now)
            work.due = now + refused.retry_after
            return work
        if work.attempt == 0 and work.kind is Kind.FIRST and self.rng.random() < self.fail_rate:
            self.figures.failed_validations += 1
            self.ca.fail_validation(order, work.name, now)
            async with self.records.transaction() as tx:
                await self.ledger.order_failed(tx, request, 1, now, identifier=work.name)
            work.attempt += 1
            work.due = now + retry_delay(work.attempt)
            return work
        self.ca.finalize(order, now)
        await self.records.issued(work, now)
        self.record(work, now)
        return None

    def record(self, work: Work, now: datetime) -> None:
        figures = self.figures
        figures.last_issue = max(figures.last_issue, now)
        if work.kind is Kind.RENEWAL:
            assert work.expires is not None
            if now < work.expires:
                figures.renewals_in_time += 1
            else:
                figures.renewals_late += 1
            return
        figures.first_cert.setdefault(work.app, now)
        if work.app == "big-import":
            figures.big_issued.append(now)


async def run_scheduler(work: list[Work], limits: Limits) -> Figures:
    """The scenario through the real scheduler over the ports' fakes (see the docstring)."""
    from certbroker import lifecycle
    from certbroker.acme.keys import generate_private_key
    from certbroker.lifecycle import CertificateIssued
    from certbroker.model import Domain, KeyAlgorithm, LetsEncryptState, Source
    from certbroker.scheduler import Policy
    from certbroker.store.base import NewCertificate
    from certbroker.x509.info import certificate_info
    from tests.fakes.world import world

    figures = Figures()
    with tempfile.TemporaryDirectory(prefix="certbroker-limits-") as tmp:
        async with world(Path(tmp), policy=Policy(limits=limits)) as w:
            w.clock.set(T0)
            ca = FakeCA(limits)
            issuer = LimitedIssuer(w.clock, ca)
            await w.restart(issuer=issuer)
            renewals = [x for x in work if x.kind is Kind.RENEWAL]
            key = generate_private_key(KeyAlgorithm.ECDSA_P256)
            async with w.store.transaction() as tx:  # certificates issued before the bench
                for r in renewals:
                    assert r.expires is not None
                    issued_at = r.expires - LIFE
                    info = certificate_info(issuer.chain([r.name], key, issued_at))
                    info = replace(info, received_at=issued_at)
                    sealed = w.sealer.seal(key, r.name)
                    cert = await tx.add_certificate(
                        NewCertificate(r.name, Source.LETS_ENCRYPT, info, sealed)
                    )
                    await tx.record_issuance(
                        r.name, r.registered, (r.name,), info.serial, issued_at
                    )
                    ca.record_issued((r.name,), issued_at)
                    fresh = Domain(
                        name=r.name, app=r.app, letsencrypt_enabled=True,
                        le_state=LetsEncryptState.CREATING, serving=Source.NONE,
                        created_at=issued_at, updated_at=T0,
                    )  # fmt: skip
                    await tx.put_domain(lifecycle.apply(fresh, CertificateIssued(cert), T0))
            firsts = sorted((x for x in work if x.kind is Kind.FIRST), key=lambda x: x.due)
            pending = list(firsts)
            ledger = LimitsLedger(limits)
            while len(issuer.issued_at) < len(work):
                now = w.clock.now()
                while pending and pending[0].due <= now:
                    first = pending.pop(0)
                    await w.broker.issue_certificate(first.name, first.app)
                await idle(w)
                figures.passes += 1
                upcoming = [x.due for x in pending[:1]]
                later = await w.store.next_due_time(after=now)
                if later is not None:
                    upcoming.append(later)
                due_now = await w.store.next_due_time()
                if due_now is not None and due_now <= now:  # waiting for a token
                    budget = await ledger.budget(w.store, now)
                    upcoming.append(budget.next_at or now + limits.account_orders.interval)
                if not upcoming:
                    break
                w.clock.set(max(min(upcoming), now + timedelta(microseconds=1)))
            figures.refused = sum(ca.refusals.values())
            tally(figures, work, issuer)
    return figures


def tally(figures: Figures, work: list[Work], issuer: LimitedIssuer) -> None:
    """The figures from what the CA issued, and when."""
    expires = {x.name: x.expires for x in work if x.kind is Kind.RENEWAL}
    apps = {x.name: x.app for x in work if x.kind is Kind.FIRST}
    for name in issuer.issued:
        at = issuer.issued_at[name]
        figures.last_issue = max(figures.last_issue, at)
        expiry = expires.get(name)
        if expiry is not None:
            if at < expiry:
                figures.renewals_in_time += 1
            else:
                figures.renewals_late += 1
        elif name in apps:
            figures.first_cert.setdefault(apps[name], at)
            if apps[name] == "big-import":
                figures.big_issued.append(at)
    figures.orders = issuer.ca.orders


async def idle(w: object) -> None:
    """Real time until the scheduler has no step running (twice, a moment apart)."""
    scheduler = w.scheduler  # type: ignore[attr-defined]
    quiet = 0
    while quiet < 2:
        await asyncio.sleep(0.002)
        quiet = quiet + 1 if scheduler.busy == 0 else 0


def days(delta: timedelta) -> str:
    return f"{delta / timedelta(days=1):.2f} d"


def arrivals_of(work: list[Work]) -> dict[str, datetime]:
    """When each app's first new domain arrives."""
    arrivals: dict[str, datetime] = {}
    for w in work:
        if w.kind is Kind.FIRST:
            arrivals[w.app] = min(w.due, arrivals.get(w.app, w.due))
    return arrivals


def report(
    figures: Figures,
    renewals: int,
    arrivals: dict[str, datetime],
    wall: float,
    nth: int = 1000,
) -> None:
    print(f"requests the CA refused for rate limits: {figures.refused} (target 0)")
    print(
        f"renewals done before expiry: {figures.renewals_in_time} of {renewals}"
        f" (late: {figures.renewals_late}; target all)"
    )
    big = figures.big_issued
    smalls = {a: t for a, t in figures.first_cert.items() if a != "big-import"}
    if smalls:
        waits = ", ".join(
            f"{app} {(at - arrivals[app]) / timedelta(minutes=1):.1f}"
            for app, at in sorted(smalls.items())
        )
        print(f"minutes from each small app's first domain to its first certificate: {waits}")
        last = max(smalls.values())
        before = sum(1 for t in big if t <= last)
        print(
            f"the big app's certificates when the last small app got its first: {before}"
            f" (target: fewer than {nth:,}); its {nth:,}th came after"
            f" {days(big[nth - 1] - T0) if len(big) >= nth else 'never'}"
        )
    print(f"simulated days to issue everything: {days(figures.last_issue - T0)}")
    ledger = f" ledger: {figures.reserves} reserves, {figures.holds} held by a bucket;"
    print(
        f"{figures.orders} orders placed at the CA;{ledger if figures.reserves else ''}"
        f" {figures.failed_validations} failed validations, {figures.passes} passes"
    )
    print(f"wall-clock seconds for the whole simulation: {wall:.1f} (target < 60)")


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=("memory", "sqlite"), default="memory")
    parser.add_argument("--big", type=int, default=10_000, help="new domains of the big app")
    parser.add_argument("--apps", type=int, default=19, help="small apps")
    parser.add_argument("--per-app", type=int, default=100, help="new domains per small app")
    parser.add_argument("--renewals", type=int, default=2_000)
    parser.add_argument("--fail", type=float, default=0.02, help="first validations failing")
    parser.add_argument(
        "--small-after", type=float, default=1.0, help="hours until the small apps add theirs"
    )
    parser.add_argument("--driver", choices=("loop", "scheduler"), default="loop")
    parser.add_argument("--scale", type=float, default=0.1, help="--driver scheduler only")
    args = parser.parse_args(argv)
    print(machine_info())
    small_after = timedelta(hours=args.small_after)
    if args.driver == "scheduler":
        scale = args.scale
        big, per_app, renewals = (round(n * scale) for n in (args.big, args.per_app, args.renewals))
        # The account's burst and the small apps' arrival scaled too, the refill not (a
        # token every 36 s): the import has outrun its burst when the small apps arrive.
        work = scenario(big, args.apps, per_app, renewals, small_after * scale)
        burst = max(1, round(300 * scale))
        limits = Limits(account_orders=Bucket(burst, burst * Limits().account_orders.interval))
        started = time.monotonic()
        title = (
            f"the real scheduler: {big} new domains of one app, {args.apps} x {per_app} of"
            f" others, {renewals} renewals (scale {scale};"
            f" new orders {limits.account_orders.describe()})"
        )
        with section(title):
            figures = await run_scheduler(work, limits)
        report(
            figures, renewals, arrivals_of(work), time.monotonic() - started, round(1000 * scale)
        )
        print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        return 0
    work = scenario(args.big, args.apps, args.per_app, args.renewals, small_after)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="certbroker-limits-") as tmp:
        sqlite = args.store == "sqlite"
        store = await SqliteStore.open(str(Path(tmp) / "db.sqlite3")) if sqlite else None
        try:
            records: Records = OnSqlite(store) if store is not None else InMemory()
            title = (
                f"{args.big} new domains of one app, {args.apps} x {args.per_app} of others,"
                f" {args.renewals} renewals; ledger records in {args.store}"
            )
            with section(title):
                loop = Loop(records, args.fail)
                await loop.load(work)
                figures = await loop.run()
        finally:
            if store is not None:
                await store.close()
    wall = time.monotonic() - started
    report(figures, args.renewals, arrivals_of(work), wall)
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
