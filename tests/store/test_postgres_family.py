"""PostgreSQL's plan for the family lookups: index scans, whatever the statistics say.

They run holding the writers' lock (``Transaction.family_rows``). With many rows
under one parent, a ``LIMIT`` once made the planner choose a sequential scan
"to stop at the first match", which read every row when the matches were the
caller's own (an app adding a wildcard over its names): 60 ms at 100,000 rows.
"""

from __future__ import annotations

import asyncpg

from certbroker.store.codec import DOMAIN_COLUMNS, domain_to_row
from certbroker.store.postgres import _FAMILY_NAMED_AND_COVERED, PostgresStore
from tests.store.records import make_domain


async def test_the_family_lookups_scan_indexes_only(postgres_dsn: str) -> None:
    await (await PostgresStore.open(postgres_dsn)).close()  # the schema
    domains = [make_domain(f"c{i}.shop.example", app="shop") for i in range(8000)]
    domains += [make_domain(f"d{i}.t{i % 100}.example.net", app=f"a{i % 7}") for i in range(2000)]
    rows = [tuple(domain_to_row(d)[c] for c in DOMAIN_COLUMNS) for d in domains]
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await conn.copy_records_to_table("domains", records=rows, columns=list(DOMAIN_COLUMNS))
        await conn.execute("ANALYZE domains")
        names = ["shop.example", "*.shop.example", "*.example"]
        for app in ("shop", "mallory", "a0", "zz"):  # the owner of most, and around it
            for parent in ("shop.example", "t1.example.net"):
                args = (app, names, parent, 1)
                found = await conn.fetch(f"EXPLAIN {_FAMILY_NAMED_AND_COVERED}", *args)
                plan = "\n".join(str(r[0]) for r in found)
                assert "Seq Scan" not in plan, plan
                assert "Sort" not in plan, plan
                assert plan.count("Index Cond: ((exact_parent = ") == 2, plan
    finally:
        await conn.close()
