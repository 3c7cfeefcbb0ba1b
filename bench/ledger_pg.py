"""The limits ledger on PostgreSQL: reservations per second with 1 and 3 brokers contending.

    python bench/ledger_pg.py [--attempts 1500] [--tasks 4] [--brokers 1,3] [--repeat 1]

Each broker is a process with its own ``PostgresStore`` and ``--tasks`` concurrent
reservers; each reservation is what the scheduler does once per order: one write
transaction, ``LimitsLedger.reserve`` for a first certificate (its own registered
domain) with Let's Encrypt's default limits. Every broker reserves at the same
instant on an empty account bucket (300 new orders per 3 h), so exactly 300 of
all the attempts may be granted, whichever broker makes them: the figure checks
that, and prints attempts per second, latency, and how many were granted. A held
attempt reads the account bucket's 300 spends (the most a check reads: a full
window) and writes nothing; a granted one writes three spends.

Every write transaction of the cluster holds the revision counter's lock (that is
what serialises spenders), so three brokers add up to one writer: the figure is
the ledger's cost per order, which is far below any CA's order rate.
PostgreSQL is a throwaway server (tests/infra/postgres.py) with fsync off, on the
same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import PYTHON, machine_info, percentile, run_processes, section

from certbroker.limits import ACCOUNT_ORDERS, LimitsLedger, OrderRequest
from certbroker.store.postgres import PostgresStore
from tests.infra.postgres import Postgres, create_database

T0 = datetime(2026, 3, 1, tzinfo=UTC)
CAPACITY = 300  # Let's Encrypt's new orders per account per 3 hours (the default)


async def _reserve(dsn: str, attempts: int, tasks: int, prefix: str) -> dict[str, float]:
    """``attempts`` reservations from ``tasks`` concurrent reservers; figures as JSON."""
    store = await PostgresStore.open(dsn, poll_interval=60)
    ledger = LimitsLedger()
    latencies: list[float] = []
    granted = 0

    async def reserver(n: int) -> None:
        nonlocal granted
        for i in range(attempts // tasks):
            name = f"www.{prefix}-{n}-{i}.test"
            request = OrderRequest(name, "app", name[4:], (name,), False, None)
            started = time.perf_counter()
            async with store.transaction() as tx:
                hold = await ledger.reserve(tx, request, T0)
            latencies.append(time.perf_counter() - started)
            granted += hold is None

    try:
        started = time.perf_counter()
        await asyncio.gather(*(reserver(n) for n in range(tasks)))
        seconds = time.perf_counter() - started
    finally:
        await store.close()
    latencies.sort()
    return {
        "count": len(latencies),
        "granted": granted,
        "seconds": seconds,
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
    }


def _spawn(dsn: str, brokers: int, attempts: int, tasks: int) -> list[dict[str, float]]:
    return run_processes(
        [
            [PYTHON, __file__, "reserve", dsn, str(attempts), str(tasks), f"b{n}"]
            for n in range(brokers)
        ],
        "broker process",
    )


async def _spent(dsn: str) -> int:
    store = await PostgresStore.open(dsn, poll_interval=60)
    try:
        return len(await store.limit_spends(ACCOUNT_ORDERS, "", T0.replace(year=2025), 10_000))
    finally:
        await store.close()


async def _run(server: Postgres, brokers: int, args: argparse.Namespace) -> None:
    dsn = await create_database(server, f"bench_ledger_{brokers}")
    await (await PostgresStore.open(dsn, poll_interval=60)).close()  # migrate once
    results = _spawn(dsn, brokers, args.attempts, args.tasks)
    total = sum(r["count"] for r in results)
    granted = sum(r["granted"] for r in results)
    wall = max(r["seconds"] for r in results)
    p50 = max(r["p50"] for r in results) * 1000
    p99 = max(r["p99"] for r in results) * 1000
    spent = await _spent(dsn)
    verdict = "exact" if granted == spent == CAPACITY else "OVERSPENT"
    print(
        f"   {brokers} broker(s) x {args.tasks} reservers: {total / wall:6.0f} reservations/s  "
        f"p50 {p50:5.1f} ms  p99 {p99:6.1f} ms  ({total} in {wall:.1f} s; "
        f"granted {granted}, spends {spent} of {CAPACITY}: {verdict})"
    )


async def _main(args: argparse.Namespace) -> None:
    print(machine_info())
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    title = f"reservations, {args.attempts} attempts per broker, LE's default limits"
    with Postgres() as server, section(title):
        for _ in range(args.repeat):
            for brokers in (int(b) for b in args.brokers.split(",")):
                await _run(server, brokers, args)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "reserve":
        dsn, attempts, tasks, prefix = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
        print(json.dumps(asyncio.run(_reserve(dsn, attempts, tasks, prefix))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--attempts", type=int, default=1500)
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--brokers", default="1,3", help="broker counts to run, in turn")
    parser.add_argument("--repeat", type=int, default=1, help="run the series this many times")
    asyncio.run(_main(parser.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
