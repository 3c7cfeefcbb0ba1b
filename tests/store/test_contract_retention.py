"""Retired certificates' keys, over both backends: erased after the retention, never while a
watch event that names them can still be replayed (the SQLite file's own details, zeroed
bytes and file modes, are in test_key_retention.py).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

from certbroker.clock import FakeClock
from certbroker.housekeeping import Compactor
from certbroker.model import Domain, Source
from certbroker.store.base import NewCertificate
from tests.store.backends import AnyStore, Backend
from tests.store.records import T0, make_cert, make_domain

DAY = timedelta(days=1)
SECOND = timedelta(seconds=1)
WEEK = timedelta(days=7)


def sealed(serial: str) -> bytes:
    return f"sealed-{serial}-".encode() * 4


async def install(
    store: AnyStore, domain: Domain, source: Source, serial: str, at: datetime
) -> Domain:
    """A new certificate made the domain's LE or custom one, as the broker does."""
    async with store.transaction() as tx:
        current = await tx.get_domain(domain.name) or domain
        info = await tx.add_certificate(
            NewCertificate(domain.name, source, make_cert(domain.name, serial, at), sealed(serial))
        )
        field = "le_cert" if source is Source.LETS_ENCRYPT else "custom_cert"
        changed = replace(current, serving=source, updated_at=at, **{field: info})
        return await tx.put_domain(changed)


async def compact_at(
    store: AnyStore, when: datetime, events: timedelta = WEEK, keys: timedelta = WEEK
) -> None:
    await Compactor(store, FakeClock(when), events, timedelta(hours=1), keys).compact_once()


async def serials(backend: Backend) -> set[str]:
    return {str(r[0]) for r in await backend.rows("SELECT serial FROM certificates")}


async def test_a_superseded_key_is_erased_after_the_retention(
    store: AnyStore, backend: Backend
) -> None:
    first = await install(store, make_domain("a.example.com"), Source.LETS_ENCRYPT, "01", T0)
    renewed_at = T0 + 60 * DAY
    renewed = await install(store, first, Source.LETS_ENCRYPT, "02", renewed_at)
    assert first.le_cert is not None and renewed.le_cert is not None

    await compact_at(store, renewed_at + WEEK - SECOND)
    assert await serials(backend) == {"01", "02"}  # still inside the grace period
    await compact_at(store, renewed_at + WEEK + SECOND)
    assert await serials(backend) == {"02"}
    assert await store.load_key(first.le_cert.id) is None
    assert await store.load_key(renewed.le_cert.id) == sealed("02")
    assert first.le_cert.id not in store.cached_certificate_ids()
    assert await store.get_domain("a.example.com") == renewed


async def test_a_key_named_by_a_replayable_event_stays_until_that_event_is_compacted(
    store: AnyStore, backend: Backend
) -> None:
    first = await install(store, make_domain("a.example.com"), Source.LETS_ENCRYPT, "01", T0)
    assert first.le_cert is not None
    await install(store, first, Source.LETS_ENCRYPT, "02", T0 + DAY)

    # keys kept 7 days, events 30: at day 9 the key's time is up, the event naming it is not
    await compact_at(store, T0 + 9 * DAY, events=30 * DAY)
    replayed = (await store.events_after(0, 10))[0].domain
    assert replayed is not None and replayed.le_cert == first.le_cert
    assert await store.load_key(first.le_cert.id) == sealed("01")

    await compact_at(store, T0 + 31 * DAY, events=30 * DAY)
    assert [e.revision for e in await store.events_after(0, 10)] == [2]
    assert await serials(backend) == {"02"}


async def test_keys_retired_before_the_upgrade_start_their_retention_at_the_first_run(
    store: AnyStore, backend: Backend
) -> None:
    d = await install(store, make_domain("a.example.com"), Source.LETS_ENCRYPT, "01", T0)
    await install(store, d, Source.LETS_ENCRYPT, "02", T0 + DAY)
    await backend.execute("UPDATE certificates SET retired_at = NULL, retired_revision = NULL")

    first_run = T0 + 200 * DAY
    await compact_at(store, first_run)
    assert await serials(backend) == {"01", "02"}  # marked now, not erased at once
    await compact_at(store, first_run + WEEK + SECOND)
    assert await serials(backend) == {"02"}


async def test_serving_and_standby_keys_stay(store: AnyStore, backend: Backend) -> None:
    d = await install(store, make_domain("a.example.com"), Source.LETS_ENCRYPT, "1e", T0)
    d = await install(store, d, Source.CUSTOM, "c1", T0 + DAY)  # LE is now the warm standby
    await install(store, d, Source.CUSTOM, "c2", T0 + 2 * DAY)  # c1 replaced
    await compact_at(store, T0 + 100 * DAY)
    assert await serials(backend) == {"1e", "c2"}
