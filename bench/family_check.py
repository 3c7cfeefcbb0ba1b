"""The family rule under the write lock: adding a name with many domains present.

    python bench/family_check.py [--domains 100000] [--rounds 200] [--backend both]

Every IssueCertificate that adds a name checks the family rule (certbroker.tenancy)
inside its write transaction, so the check's cost is time every other writer
waits. Timed here: that transaction as the broker runs it (``Broker._check_family``,
the row and its event, the commit) on a store already holding ``--domains`` rows:
half ``c<i>.shop.example`` of app ``shop``, half ``d<i>.t<i % 5000>.example.net``
across 100 apps. Cases:

- a wildcard with nothing under it (``*.w<k>.example.org``, a new app);
- an exact name (``x<k>.example.org``);
- ``*.shop.example`` by ``shop`` itself, over its own 50% of the rows (added,
  then removed outside the timing);
- ``*.shop.example`` by another app: refused (the rows under it are not its own).

Runs against whichever certbroker the interpreter imports, so the same file
compares two checkouts: ``/work/main/.venv/bin/python bench/family_check.py``
(before) vs ``.venv/bin/python bench/family_check.py`` (after). PostgreSQL is a
throwaway server (tests/infra/postgres.py, fsync off) on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import asyncpg
from _common import machine_info, percentile, section

import certbroker.app
from certbroker import tenancy
from certbroker.app import Broker
from certbroker.errors import FailedPrecondition
from certbroker.store.codec import DOMAIN_COLUMNS, domain_to_row
from certbroker.store.factory import open_store
from tests.infra.postgres import Postgres, create_database
from tests.store.records import make_domain

Store = Any  # SqliteStore | PostgresStore: only transaction() and close() are used


def _population(count: int) -> list[tuple[Any, ...]]:
    half = count // 2
    domains = [make_domain(f"c{i}.shop.example", app="shop") for i in range(half)]
    domains += [
        make_domain(f"d{i}.t{i % 5000}.example.net", app=f"a{i % 100}") for i in range(count - half)
    ]
    return [tuple(domain_to_row(d)[c] for c in DOMAIN_COLUMNS) for d in domains]


async def _fill_sqlite(path: Path, rows: list[tuple[Any, ...]]) -> str:
    await (await open_store(str(path))).close()  # this checkout's migrations
    conn = sqlite3.connect(path)
    try:
        marks = ", ".join("?" for _ in DOMAIN_COLUMNS)
        with conn:
            conn.executemany(
                f"INSERT INTO domains ({', '.join(DOMAIN_COLUMNS)}) VALUES ({marks})",  # noqa: S608
                rows,
            )
        conn.execute("ANALYZE")
    finally:
        conn.close()
    return str(path)


async def _fill_postgres(dsn: str, rows: list[tuple[Any, ...]]) -> str:
    await (await open_store(dsn)).close()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.copy_records_to_table("domains", records=rows, columns=list(DOMAIN_COLUMNS))
        await conn.execute("ANALYZE domains")
    finally:
        await conn.close()
    return dsn


async def _add(store: Store, name: str, app: str, apex: bool = False) -> bool:
    """One add's write transaction; False if the family rule refused it."""
    claim = tenancy.Claim(name, apex)
    try:
        async with store.transaction() as tx:
            await Broker._check_family(tx, claim, app)  # the broker's own step
            await tx.put_domain(make_domain(name, app=app, include_apex=apex))
    except FailedPrecondition:
        return False
    return True


async def _remove(store: Store, name: str) -> None:
    async with store.transaction() as tx:
        found = await tx.get_domain(name)
        assert found is not None
        await tx.delete_domain(found)


async def _timed(
    rounds: int,
    step: Callable[[int], Awaitable[bool]],
    expect: bool,
    after: Callable[[], Awaitable[None]] | None = None,
) -> str:
    """``step`` ``rounds`` times, each followed by ``after`` (not timed)."""
    ms: list[float] = []
    for k in range(rounds):
        started = time.perf_counter()
        outcome = await step(k)
        ms.append((time.perf_counter() - started) * 1000)
        if outcome is not expect:
            raise RuntimeError(f"round {k}: {'added' if outcome else 'refused'}, not expected")
        if after is not None:
            await after()
    ms.sort()
    return (
        f"p50 {percentile(ms, 50):7.2f} ms  p99 {percentile(ms, 99):7.2f} ms  "
        f"mean {sum(ms) / len(ms):7.2f} ms  ({rounds} rounds)"
    )


def _line(label: str, result: str) -> None:
    print(f"   {label:<40} {result}", flush=True)


async def _cases(db: str, rounds: int, tag: str) -> None:
    store = await open_store(db)
    try:
        await _add(store, f"warm.{tag}.example.org", "new")  # connections, caches, statements
        new_wildcard = await _timed(
            rounds, lambda k: _add(store, f"*.w{k}.{tag}.example.org", "new"), True
        )
        _line("wildcard, nothing under it", new_wildcard)
        exact = await _timed(rounds, lambda k: _add(store, f"x{k}.{tag}.example.org", "new"), True)
        _line("exact name", exact)
        own = await _timed(
            rounds,
            lambda _: _add(store, "*.shop.example", "shop"),
            True,
            after=lambda: _remove(store, "*.shop.example"),
        )
        _line("wildcard over its own app's names", own)
        refused = await _timed(rounds, lambda _: _add(store, "*.shop.example", "mallory"), False)
        _line("wildcard refused (another app's names)", refused)
    finally:
        await store.close()


def _load() -> str:
    return "load average " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


async def _main(args: argparse.Namespace) -> None:
    print(machine_info())
    package = Path(certbroker.app.__file__).parent
    migrations = package / "store" / "migrations"
    print(
        f"certbroker from {package}; SQLite migrations "
        f"{sorted(p.name[:3] for p in migrations.glob('*.sql'))[-1]}; {_load()}"
    )
    rows = _population(args.domains)
    with tempfile.TemporaryDirectory(prefix="bench-family-") as tmp:
        if args.backend in ("sqlite", "both"):
            with section(f"SQLite, {args.domains} domains present"):
                db = await _fill_sqlite(Path(tmp) / "family.sqlite3", rows)
                await _cases(db, args.rounds, "s")
                print(f"   {_load()}")
        if args.backend in ("postgres", "both"):
            with Postgres() as server, section(f"PostgreSQL, {args.domains} domains present"):
                db = await _fill_postgres(await create_database(server, "bench_family"), rows)
                await _cases(db, args.rounds, "p")
                print(f"   {_load()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--domains", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    asyncio.run(_main(parser.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
