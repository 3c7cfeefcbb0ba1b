"""The store on SQLite and on PostgreSQL: write throughput, cross-broker propagation, migrate-db.

    python bench/store_backends.py [--writes 2000] [--tasks 8] [--domains 5000]

Prints:

- write transactions per second (one domain row + its event each) and their
  latency, from ``--tasks`` concurrent writers per broker process: SQLite, then
  PostgreSQL with one broker process, then with three at once (every write
  transaction holds the revision counter's lock, so they add up to one writer);
- commit on one store → the event hub of another store on the same database wakes
  (LISTEN/NOTIFY), p50/p99 over 300 writes;
- ``certbroker migrate-db`` of a SQLite database with ``--domains`` domains, each
  with a certificate and two events.

PostgreSQL is a throwaway server (tests/infra/postgres.py) with fsync off, on the
same machine: figures are the broker's and the protocol's cost, not a disk's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import PYTHON, machine_info, percentile, run_processes, section

from certbroker.events import EventHub
from certbroker.model import LetsEncryptState, Source
from certbroker.store.base import NewCertificate
from certbroker.store.factory import open_store
from certbroker.store.migrate_db import migrate_db
from certbroker.store.postgres import PostgresStore
from certbroker.store.sqlite import SqliteStore
from tests.infra.postgres import Postgres, create_database
from tests.store.records import make_cert, make_domain

T0 = datetime(2026, 3, 1, tzinfo=UTC)


async def _write(db: str, count: int, tasks: int, prefix: str) -> dict[str, float]:
    """``count`` write transactions from ``tasks`` concurrent writers; their latencies."""
    store = await open_store(db)
    latencies: list[float] = []
    per_task = count // tasks

    async def writer(n: int) -> None:
        for i in range(per_task):
            started = time.perf_counter()
            name = f"{prefix}-{n}-{i}.example.com"
            async with store.transaction() as tx:  # as the use cases do: read, then write
                await tx.get_domain(name)
                await tx.put_domain(make_domain(name))
            latencies.append(time.perf_counter() - started)

    try:
        started = time.perf_counter()
        await asyncio.gather(*(writer(n) for n in range(tasks)))
        seconds = time.perf_counter() - started
    finally:
        await store.close()
    latencies.sort()
    return {
        "count": len(latencies),
        "seconds": seconds,
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
    }


def _spawn_writers(db: str, processes: int, count: int, tasks: int) -> list[dict[str, float]]:
    """``processes`` broker-like processes writing at once; each prints its figures."""
    return run_processes(
        [
            [PYTHON, __file__, "write", db, str(count), str(tasks), f"p{n}"]
            for n in range(processes)
        ],
        "writer",
    )


def _report(label: str, results: list[dict[str, float]]) -> None:
    total = sum(r["count"] for r in results)
    wall = max(r["seconds"] for r in results)
    p50 = max(r["p50"] for r in results) * 1000
    p99 = max(r["p99"] for r in results) * 1000
    print(
        f"   {label:<34} {total / wall:7.0f} writes/s   "
        f"latency p50 {p50:5.1f} ms  p99 {p99:6.1f} ms  ({total} writes, {wall:.1f} s)"
    )


async def _propagation(dsn: str, writes: int = 300) -> None:
    a = await PostgresStore.open(dsn, poll_interval=60)
    b = await PostgresStore.open(dsn, poll_interval=60)
    hub = EventHub(b)
    await hub.start()
    delays = []
    try:
        for i in range(writes):
            started = time.perf_counter()
            async with a.transaction() as tx:
                d = await tx.put_domain(make_domain(f"prop-{i}.example.com"))
            await hub.wait_beyond(d.revision - 1, 10)
            delays.append(time.perf_counter() - started)
    finally:
        await hub.stop()
        await a.close()
        await b.close()
    delays.sort()
    print(
        f"   commit on A -> hub on B awake: p50 {percentile(delays, 50) * 1000:.1f} ms, "
        f"p99 {percentile(delays, 99) * 1000:.1f} ms (write included; {writes} writes)"
    )


async def _fill(path: Path, domains: int) -> None:
    store = await SqliteStore.open(str(path))
    try:
        for i in range(domains):
            name = f"m{i}.example.com"
            async with store.transaction() as tx:
                info = await tx.add_certificate(
                    NewCertificate(
                        name, Source.LETS_ENCRYPT, make_cert(name, f"{i:04x}"), b"k" * 120
                    )
                )
                d = await tx.put_domain(
                    make_domain(name, le_cert=info, serving=Source.LETS_ENCRYPT)
                )
                await tx.put_domain(replace(d, le_state=LetsEncryptState.IN_USE))
    finally:
        await store.close()


async def _migration(server: Postgres, domains: int, workdir: Path) -> None:
    path = workdir / "migrate.sqlite3"
    await _fill(path, domains)
    dsn = await create_database(server, "bench_migrate")
    started = time.perf_counter()
    summary = await migrate_db(str(path), dsn)
    seconds = time.perf_counter() - started
    rows = sum(summary.counts.values())
    print(f"   {summary.lines()[0]}")
    print(f"   migrate-db: {seconds:.2f} s for {rows} rows ({rows / seconds:.0f} rows/s, verified)")


async def _main(args: argparse.Namespace) -> None:
    print(machine_info())
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp, Postgres() as server:
        workdir = Path(tmp)
        with section(f"writes: {args.writes} per broker process, {args.tasks} writers each"):
            sqlite_db = str(workdir / "w.sqlite3")
            _report("SQLite, 1 broker", _spawn_writers(sqlite_db, 1, args.writes, args.tasks))
            one = await create_database(server, "bench_one")
            _report("PostgreSQL, 1 broker", _spawn_writers(one, 1, args.writes, args.tasks))
            three = await create_database(server, "bench_three")
            await (await open_store(three)).close()  # migrate once, not three times at once
            _report(
                "PostgreSQL, 3 brokers at once", _spawn_writers(three, 3, args.writes, args.tasks)
            )
        with section("propagation between two brokers (LISTEN/NOTIFY)"):
            await _propagation(await create_database(server, "bench_prop"))
        with section(f"migrate-db, {args.domains} domains"):
            await _migration(server, args.domains, workdir)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "write":
        db, count, tasks, prefix = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
        print(json.dumps(asyncio.run(_write(db, count, tasks, prefix))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writes", type=int, default=2000)
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--domains", type=int, default=5000)
    asyncio.run(_main(parser.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
