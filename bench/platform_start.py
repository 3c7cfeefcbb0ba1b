"""What keeping the platform's own domains in step costs at every start, by store size.

At start the broker runs ``certbroker.platform.reconcile``: each configured
platform domain is created or checked, app rows under it are looked for (a
scan: no index finds names by suffix), and retired platform rows are found
through the ``(app, name)`` index. This runs before the broker serves, so it
adds to every start; the figure says by how much for a store of ``--domains``
app domains (100 of them under the first platform domain, added before it was
configured).

Set-up, all in this process: a fresh SQLite store (WAL, a temp file) and the
real ``reconcile``. Prints, for ``--platform`` platform domains: the first
start (adds them), a restart with the same configuration (writes nothing) and
a restart with one dropped (retires it), each the median of ``--repeat`` runs.

    .venv/bin/python bench/platform_start.py [--domains 100000] [--platform 3] [--repeat 5]

Asserts nothing; prints figures with the load average beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

# bench/ is on sys.path when this file runs as a script.
from _common import machine_info, section

from certbroker import lifecycle
from certbroker.clock import FakeClock
from certbroker.model import Domain, LetsEncryptState, Source
from certbroker.platform import Platform, reconcile
from certbroker.store.sqlite import SqliteStore


async def add_domains(store: SqliteStore, count: int, region: str, now: datetime) -> None:
    batch = 1000
    for start in range(0, count, batch):
        async with store.transaction() as tx:
            for i in range(start, min(start + batch, count)):
                name = f"d{i}.{region}" if i < 100 else f"www.d{i}.customer.example"
                fresh = Domain(
                    name=name,
                    app=f"app{i % 1000}",
                    letsencrypt_enabled=False,
                    le_state=LetsEncryptState.DISABLED,
                    serving=Source.NONE,
                    created_at=now,
                    updated_at=now,
                )
                await tx.put_domain(lifecycle.settle(fresh, now))


async def timed(store: SqliteStore, clock: FakeClock, platform: Platform) -> float:
    t0 = time.perf_counter()
    await reconcile(store, clock, platform)
    return (time.perf_counter() - t0) * 1000


async def run(domains: int, platforms: int, repeat: int) -> None:
    regions = [f"r{i}.platform.example" for i in range(platforms)]
    names = [f"*.{region}" for region in regions]
    with tempfile.TemporaryDirectory(prefix="certbroker-platform-") as tmp:
        store = await SqliteStore.open(str(Path(tmp) / "db.sqlite3"))
        clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
        try:
            with section(f"fill the store with {domains:,} app domains"):
                await add_domains(store, domains, regions[0], clock.now())
            first = await timed(store, clock, Platform.from_names(names))
            same, dropped = [], []
            for _ in range(repeat):
                same.append(await timed(store, clock, Platform.from_names(names)))
                dropped.append(await timed(store, clock, Platform.from_names(names[1:])))
                await timed(store, clock, Platform.from_names(names))  # resumed again
        finally:
            await store.close()
    print(f"platform domains: {platforms}, app domains: {domains:,} (100 under {names[0]})")
    print(f"first start (adds them):           {first:8.1f} ms")
    print(f"restart, same configuration:       {statistics.median(same):8.1f} ms (median)")
    print(f"restart, one dropped (retires it): {statistics.median(dropped):8.1f} ms (median)")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--domains", type=int, default=100_000)
    parser.add_argument("--platform", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    print(machine_info())
    asyncio.run(run(args.domains, args.platform, args.repeat))
    print("load average: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
