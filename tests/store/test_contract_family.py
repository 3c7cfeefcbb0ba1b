"""The family rule's candidates (``Transaction.family_rows``), over SQLite and PostgreSQL.

``certbroker.tenancy.neighbours`` says where rows overlapping a claim can be and
the store finds them by exact lookups (the primary key, and migration 010's
``exact_parent``), since the check runs holding the write lock. Checked against
the rule itself: among many rows, the candidates that overlap a claim are exactly
the rows of other apps that do, found by testing every row. The query plans (no
scan) are in test_sqlite.py; the upgrade of existing rows in test_migration_010.py.
"""

from __future__ import annotations

import random
from dataclasses import replace

from certbroker import tenancy
from certbroker.model import Domain
from certbroker.tenancy import Claim
from tests.store.backends import AnyStore
from tests.store.records import make_domain

MINE, THEIRS, OTHERS = "mine", "theirs", "others"
BIG = 10_000


async def put_all(store: AnyStore, domains: list[Domain]) -> list[Domain]:
    async with store.transaction() as tx:
        return [await tx.put_domain(d) for d in domains]


async def covered(store: AnyStore, base: str, app: str = MINE, limit: int = BIG) -> set[str]:
    async with store.transaction() as tx:
        return {row.name for row in await tx.family_rows((), base, app, limit)}


def wildcard(name: str, app: str, apex: bool) -> Domain:
    return make_domain(name, app=app, include_apex=apex)


async def test_the_rows_a_wildcard_covers_are_found_exactly_among_many(store: AnyStore) -> None:
    base = "shop.example"
    family = [make_domain(f"c{i}.{base}", app=THEIRS if i % 2 else OTHERS) for i in range(40)]
    family += [wildcard(f"*.w{i}.{base}", THEIRS, apex=True) for i in range(10)]  # apex w{i}
    unrelated = [make_domain(f"m{i}.{base}", app=MINE) for i in range(100)]  # the caller's own
    unrelated += [wildcard(f"*.n{i}.{base}", THEIRS, apex=False) for i in range(20)]
    unrelated += [make_domain(f"a.c{i}.{base}", app=THEIRS) for i in range(40)]  # two below
    unrelated += [wildcard(f"*.a.c{i}.{base}", THEIRS, apex=True) for i in range(10)]
    unrelated += [
        make_domain(base, app=THEIRS),  # the apex and its wildcard: by name, not covered
        wildcard(f"*.{base}", THEIRS, apex=True),
        make_domain(f"c.x{base}", app=THEIRS),  # a suffix of the name, not a label
        make_domain(f"x{base}", app=THEIRS),
        make_domain(f"c.{base}.org", app=THEIRS),
        wildcard(f"*.{base}.org", THEIRS, apex=True),
        make_domain("c.example", app=THEIRS),  # the base's own siblings
    ]
    unrelated += [make_domain(f"d{i}.t{i % 50}.example.net", app=THEIRS) for i in range(200)]
    await put_all(store, unrelated + family)

    assert await covered(store, base) == {d.name for d in family}
    mine = {d.name for d in unrelated[:100]}  # other apps' rows when theirs asks
    assert await covered(store, base, app=THEIRS) == mine | {
        d.name for d in family if d.app == OTHERS
    }
    # one is enough to refuse: the limit holds, whatever the app's own rows
    assert len(await covered(store, base, limit=1)) == 1
    assert await covered(store, f"c0.{base}") == {f"a.c0.{base}", f"*.a.c0.{base}"}
    assert await covered(store, "nowhere.example") == set()


async def test_named_rows_come_in_the_order_asked_and_only_of_other_apps(
    store: AnyStore,
) -> None:
    await put_all(
        store,
        [
            make_domain("w.example", app=THEIRS),
            wildcard("*.w.example", THEIRS, apex=False),
            wildcard("*.example", MINE, apex=True),
            make_domain("a.w.example", app=THEIRS),
        ],
    )
    names = ("w.example", "*.w.example", "*.example", "absent.example")
    async with store.transaction() as tx:
        rows = await tx.family_rows(names, "w.example", MINE, BIG)
        assert [r.name for r in rows] == ["w.example", "*.w.example", "a.w.example"]
        assert await tx.family_rows(names, None, MINE, BIG) == rows[:2]
        assert await tx.family_rows(names, None, THEIRS, BIG) == [await tx.get_domain("*.example")]


async def test_exact_parent_follows_every_write(store: AnyStore) -> None:
    """The column is the database's: turning the apex on or off, removing, and a row
    written earlier in the same transaction are all seen."""
    (row,) = await put_all(store, [wildcard("*.y.shop.example", THEIRS, apex=False)])
    assert await covered(store, "shop.example") == set()
    (row,) = await put_all(store, [replace(row, include_apex=True)])
    assert await covered(store, "shop.example") == {"*.y.shop.example"}
    (row,) = await put_all(store, [replace(row, include_apex=False)])
    assert await covered(store, "shop.example") == set()
    async with store.transaction() as tx:
        z = await tx.put_domain(make_domain("z.shop.example", app=THEIRS))
        assert await tx.family_rows((), "shop.example", MINE, BIG) == [z]
        await tx.delete_domain(z)
        assert await tx.family_rows((), "shop.example", MINE, BIG) == []


def _universe(zone: str) -> list[str]:
    """Every name within two labels of ``zone``, wildcards too, and look-alikes."""
    labels = ("a", "b")
    exact = [zone] + [f"{x}.{zone}" for x in labels]
    exact += [f"{y}.{x}.{zone}" for x in labels for y in labels]
    exact += [f"c.{labels[0]}.{labels[0]}.{zone}"]
    names = exact + [f"*.{name}" for name in exact]
    parent = zone.split(".", 1)[1]
    return [*names, f"*.{parent}", f"a{zone}", f"*.a{zone}", f"a.a{zone}"]


async def test_every_family_case_is_found_by_the_lookups(store: AnyStore) -> None:
    """Adding x, *.x, y.x, *.y.x with or without the apex, and turning the apex on: for
    random populations, what the lookups find that overlaps == every overlapping row."""
    rng = random.Random(10)
    rows: list[Domain] = []
    claims: set[Claim] = set()
    for n in range(6):
        universe = _universe(f"t{n}.example")
        for name in universe:
            claims.add(Claim(name))
            if name.startswith("*."):
                claims.add(Claim(name, include_apex=True))
            if rng.random() < 0.6 and name not in {r.name for r in rows}:
                apex = name.startswith("*.") and rng.random() < 0.5
                rows.append(make_domain(name, app=rng.choice(("alice", "bob")), include_apex=apex))
    await put_all(store, rows)
    assert len(rows) > 50

    checked = 0
    async with store.transaction() as tx:
        for claim in sorted(claims, key=lambda c: (c.name, c.include_apex)):
            for app in ("alice", "bob"):
                expected = {
                    r.name for r in rows if r.app != app and tenancy.overlap(claim, Claim.of(r))
                }
                names, covered_by = tenancy.neighbours(claim)
                found = await tx.family_rows(names, covered_by, app, BIG)
                got = {r.name for r in found if tenancy.overlap(claim, Claim.of(r))}
                assert got == expected, (claim, app)
                # every row found by exact_parent overlaps: one is enough to refuse
                assert all(
                    tenancy.overlap(claim, Claim.of(r)) for r in found if r.name not in names
                ), claim
                checked += bool(expected)
    assert checked > 50  # the populations do hold conflicts of every kind
