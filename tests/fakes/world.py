"""The scheduler over the fakes: a real SQLite store, a fake clock, the broker's use cases.

``World`` is what a fake-clock scheduler test needs: add domains through the
real use cases (``app.Broker``), move the clock, wait until the scheduler has
nothing due (``settled``), restart it with other settings (``restart``), and
read what a status page would see (``domain``). Steps run for real; only the
CA, DNS and our DNS-01 zone are the fakes in this package.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from certbroker.app import Broker
from certbroker.clock import FakeClock
from certbroker.delegation import LabelKey
from certbroker.dns import PlatformTargets
from certbroker.model import ChallengeType, Domain
from certbroker.scheduler import Ledger, Policy, Scheduler
from certbroker.store.sqlite import SqliteStore
from certbroker.x509.validate import CustomCertificateValidator
from tests.fakes.dns import FakeDns
from tests.fakes.dns01 import FakeDns01
from tests.fakes.issuer import PKI, FakeIssuer
from tests.fakes.sealer import CountingSealer

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TARGETS = PlatformTargets.parse(["192.0.2.10"])


@dataclass
class World:
    store: SqliteStore
    clock: FakeClock
    issuer: FakeIssuer | None
    dns: FakeDns
    dns01: FakeDns01 | None
    sealer: CountingSealer
    labels: LabelKey
    policy: Policy
    ledger: Ledger | None = None
    pick: float = 0.5
    scheduler: Scheduler = field(init=False)
    broker: Broker = field(init=False)

    def __post_init__(self) -> None:
        self.scheduler = self._scheduler()
        self.broker = Broker(
            self.store,
            self.clock,
            self.sealer,
            CustomCertificateValidator([PKI.root.cert]),
            self.labels,
            wake_scheduler=self.scheduler.wake,
            dns01_configured=self.dns01 is not None,
        )

    def _scheduler(self) -> Scheduler:
        return Scheduler(
            self.store,
            self.clock,
            self.sealer,
            self.issuer,
            self.dns,
            TARGETS,
            self.policy,
            dns01=self.dns01,
            labels=self.labels,
            ledger=self.ledger,
            pick=lambda: self.pick,
        )

    async def add(
        self, name: str, app: str = "shop", *, dns01: bool = False, **options: Any
    ) -> Domain:
        challenge = ChallengeType.DNS_01 if dns01 else None
        return await self.broker.issue_certificate(name, app, challenge=challenge, **options)

    async def domain(self, name: str) -> Domain:
        found = await self.store.get_domain(name)
        assert found is not None, name
        return found

    async def settled(self, timeout: float = 10.0) -> None:
        """Wait (real time) until no step runs and nothing is due at the fake clock's now."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            due = await self.store.next_due_time()
            if self.scheduler.busy == 0 and (due is None or due > self.clock.now()):
                await asyncio.sleep(0.01)  # a wake-up may start a step right now
                due = await self.store.next_due_time()
                if self.scheduler.busy == 0 and (due is None or due > self.clock.now()):
                    return
            await asyncio.sleep(0.005)
        raise AssertionError(f"the scheduler did not settle in {timeout} s")

    async def advance(self, delta: timedelta) -> None:
        """Move the fake clock, then wait until everything that came due is done."""
        self.clock.advance(delta)
        await self.settled()

    async def until(self, when: datetime) -> None:
        self.clock.set(max(when, self.clock.now()))
        await self.settled()

    async def restart(self, **changes: Any) -> None:
        """Stop the scheduler and start a new one (a broker restart), e.g. with an issuer."""
        await self.scheduler.stop()
        for key, value in changes.items():
            setattr(self, key, value)
        self.scheduler = self._scheduler()
        self.broker = Broker(
            self.store,
            self.clock,
            self.sealer,
            CustomCertificateValidator([PKI.root.cert]),
            self.labels,
            wake_scheduler=self.scheduler.wake,
            dns01_configured=self.dns01 is not None,
        )
        await self.scheduler.start()
        await self.settled()


@asynccontextmanager
async def world(
    tmp_path: Path,
    *,
    issuer: bool = True,
    dns01: bool = False,
    ari: bool = False,
    policy: Policy | None = None,
    ledger: Ledger | None = None,
    lifetime: timedelta = timedelta(days=90),
) -> AsyncIterator[World]:
    store = await SqliteStore.open(str(tmp_path / "world.sqlite3"))
    clock = FakeClock(START)
    made = World(
        store=store,
        clock=clock,
        issuer=FakeIssuer(clock, lifetime=lifetime, ari=ari) if issuer else None,
        dns=FakeDns(),
        dns01=FakeDns01() if dns01 else None,
        sealer=CountingSealer(),
        labels=LabelKey(secrets.token_bytes(32)),
        policy=policy or Policy(),
        ledger=ledger,
    )
    await made.scheduler.start()
    try:
        yield made
    finally:
        await made.scheduler.stop()
        await store.close()
