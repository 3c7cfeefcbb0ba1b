"""Events per second from DNS re-checks of domains that never point at the platform.

A router follows every event of the store; a domain whose DNS never points at
the platform is re-checked every 60 s forever. Before the re-check stopped
writing an event when it found what the last one found, 10,000 such domains
pushed ~170 events a second to every router.

Set-up, all in this process: a fresh SQLite store (WAL, a temp file) holding
``--domains`` domains, the real ``Scheduler`` with ``max_concurrent`` from the
defaults, and a ``FakeClock`` moved forward by ``--interval`` (the default
60 s DNS cadence) once every domain has been checked. DNS is a stub that
always answers "A 198.51.100.7, expected 192.0.2.10": the figure is what the
broker writes, not how fast a DNS server answers. Per round it prints the
events written (store revisions), the checks made and the wall time they
took; then events per second of broker time after the first check (target:
0). ``--legacy`` runs the same rounds with an event for every re-check (the
old rule), for the figure to compare with.

    .venv/bin/python bench/pending_events.py [--domains 10000] [--rounds 3] [--legacy]

Asserts nothing; prints figures with the load average beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

# bench/ is on sys.path when this file runs as a script.
from _common import machine_info, section

from certbroker import lifecycle, outbox
from certbroker.clock import FakeClock
from certbroker.dns import CaaResult, DnsReason, DnsResult, PlatformTargets
from certbroker.model import Domain, LetsEncryptState, Source
from certbroker.scheduler import Issued, Policy, Scheduler
from certbroker.store.sqlite import SqliteStore


class NeverPointing:
    """DNS that always answers with an address that is not the platform's."""

    def __init__(self) -> None:
        self.checks = 0

    async def points_to_platform(self, name: str, targets: PlatformTargets) -> DnsResult:
        self.checks += 1
        return DnsResult(
            name=name,
            checked=name,
            points=False,
            answered=("A 198.51.100.7",),
            expected=("A 192.0.2.10",),
            reason=DnsReason.NOT_POINTING,
            message=f"{name} points at 198.51.100.7, not at the platform",
        )

    async def caa_allows(self, name: str, ca_identity: str, *, wildcard: bool) -> CaaResult:
        raise AssertionError("never reached: the domains never point at the platform")

    async def cname_target(self, name: str) -> str | None:
        raise AssertionError("never reached: no DNS-01 domains here")


class NoCa:
    """An issuer that is configured but never reached (nothing passes the DNS check)."""

    async def start(self) -> None:
        raise AssertionError("never reached")

    async def issue(self, *args: object, **kwargs: object) -> Issued:
        raise AssertionError("never reached")

    async def resume(self, *args: object, **kwargs: object) -> Issued:
        raise AssertionError("never reached")


class NoSealer:
    def seal(self, plaintext: bytes, aad: str) -> bytes:
        raise AssertionError("never reached")

    def open(self, blob: bytes, aad: str) -> bytes:
        raise AssertionError("never reached")


async def add_domains(store: SqliteStore, count: int, now: datetime) -> None:
    batch = 500
    for start in range(0, count, batch):
        async with store.transaction() as tx:
            for i in range(start, min(start + batch, count)):
                fresh = Domain(
                    name=f"d{i}.never-pointing.example",
                    app="bench",
                    letsencrypt_enabled=True,
                    le_state=LetsEncryptState.PENDING_DNS,
                    serving=Source.NONE,
                    created_at=now,
                    updated_at=now,
                )
                await tx.put_domain(lifecycle.settle(fresh, now))


async def round_done(store: SqliteStore, scheduler: Scheduler, clock: FakeClock) -> None:
    while True:
        next_due = await store.next_due_time()
        if scheduler.busy == 0 and (next_due is None or next_due > clock.now()):
            return
        await asyncio.sleep(0.05)


async def run(domains: int, rounds: int, interval: timedelta) -> list[int]:
    """Events written per round (round 0 is the first check)."""
    with tempfile.TemporaryDirectory(prefix="certbroker-pending-") as tmp:
        store = await SqliteStore.open(str(Path(tmp) / "db.sqlite3"))
        clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
        dns = NeverPointing()
        scheduler = Scheduler(
            store,
            clock,
            NoSealer(),
            NoCa(),
            dns,
            PlatformTargets.parse(["192.0.2.10"]),
            Policy(dns_check_interval=interval),
        )
        try:
            await add_domains(store, domains, clock.now())
            per_round: list[int] = []
            await scheduler.start()
            for n in range(rounds + 1):
                if n:
                    clock.advance(interval)
                revision, checks = await store.current_revision(), dns.checks
                started = time.monotonic()
                await round_done(store, scheduler, clock)
                took = time.monotonic() - started
                events = await store.current_revision() - revision
                per_round.append(events)
                label = "first check" if n == 0 else f"re-check {n}"
                print(
                    f"   {label:>12}: {events:6d} events, {dns.checks - checks:6d} checks "
                    f"in {took:5.1f} s ({(dns.checks - checks) / took:6.0f} checks/s)",
                    flush=True,
                )
        finally:
            await scheduler.stop()
            await store.close()
    return per_round


def legacy_rule() -> Callable[[], None]:
    """Make every write an event again (the rule before this change); returns the undo."""
    original = outbox.lifecycle.worth_an_event
    outbox.lifecycle.worth_an_event = lifecycle.changed  # type: ignore[assignment]

    def undo() -> None:
        outbox.lifecycle.worth_an_event = original  # type: ignore[assignment]

    return undo


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--domains", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3, help="re-checks after the first")
    parser.add_argument("--interval", type=float, default=60.0, help="DNS cadence, seconds")
    parser.add_argument("--legacy", action="store_true", help="also run the old rule")
    args = parser.parse_args(argv)
    interval = timedelta(seconds=args.interval)
    print(machine_info())
    modes: list[tuple[str, Callable[[], Callable[[], None]] | None]] = [("now", None)]
    if args.legacy:
        modes.append(("legacy: an event per write", legacy_rule))
    results: dict[str, list[int]] = {}
    for title, patch in modes:
        undo = patch() if patch is not None else None
        try:
            with section(f"{title}: {args.domains} never-pointing domains, {interval} cadence"):
                results[title] = await run(args.domains, args.rounds, interval)
        finally:
            if undo is not None:
                undo()
    for title, per_round in results.items():
        rechecks = per_round[1:]
        rate = sum(rechecks) / (len(rechecks) * interval.total_seconds()) if rechecks else 0.0
        print(
            f"{title}: {per_round[0]} events at the first check, then "
            f"{rate:.2f} events/s at the {interval.total_seconds():g} s cadence (target 0)"
        )
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
