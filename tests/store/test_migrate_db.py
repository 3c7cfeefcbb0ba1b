"""``certbroker migrate-db``: a SQLite store copied into PostgreSQL keeps every row and revision.

The source is built through the SQLite store as the broker writes it; the copy is
read back through the PostgreSQL store, as a broker started on it would.
"""

from __future__ import annotations

import io
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest

from certbroker.model import EventType, LetsEncryptState, RetryState, Source
from certbroker.store.base import NewCertificate, PendingOrder
from certbroker.store.migrate_db import MigrationError, migrate_db
from certbroker.store.postgres import PostgresStore
from certbroker.store.sqlite import SqliteStore
from certbroker_client.cli import main as cli
from tests.store.backends import AnyStore
from tests.store.records import T0, make_cert, make_domain

DAY = timedelta(days=1)


async def fill(path: Path) -> None:
    """A small installation with one of everything, old events compacted."""
    store = await SqliteStore.open(str(path))
    try:
        async with store.transaction() as tx:
            le = await tx.add_certificate(
                NewCertificate(
                    "a.example.com", Source.LETS_ENCRYPT, make_cert("a.example.com"), b"\x00le-key"
                )
            )
            await tx.put_domain(
                make_domain("a.example.com", le_cert=le, serving=Source.LETS_ENCRYPT)
            )
            await tx.record_issuance("a.example.com", "example.com", ("a.example.com",), "01", T0)
            await tx.add_limit_spend("name_set", "a.example.com", "a.example.com", T0)
            await tx.add_limit_spend("registered_domain", "example.com", "a.example.com", T0)
            await tx.pause_limit("registered_domain", "example.org", T0 + 2 * DAY)
        async with store.transaction() as tx:
            custom = await tx.add_certificate(
                NewCertificate(
                    "b.example.com", Source.CUSTOM, make_cert("b.example.com", "0b"), b"\xffcustom"
                )
            )
            wildcard = make_domain(
                "*.b.example.com",
                app="app-b",
                custom_cert=custom,
                serving=Source.CUSTOM,
                include_apex=True,
                delegation_label="label-b",
                next_run_at=T0 + DAY,
            )
            await tx.put_domain(wildcard)
            order = PendingOrder(
                "c.example.com", "example.com", ("c.example.com",), b"order-key", T0, "https://o/1"
            )
            await tx.put_order(order)
            await tx.add_challenge_event("c.example.com", EventType.CHALLENGE_ADDED, "t", "t.k", T0)
        gone = await _put(store, make_domain("gone.example.com"))
        async with store.transaction() as tx:  # removed while backing off: the name keeps it
            retry = RetryState(3, T0 + 2 * DAY, "ACME_UNAUTHORIZED", "404", T0, forced_at=T0)
            await tx.keep_backoff("gone.example.com", "app-a", retry, T0 + DAY)
            await tx.delete_domain(replace(gone, updated_at=T0 + DAY))
        for i in range(3):
            await _put(store, make_domain(f"d{i}.example.com", updated_at=T0 + (10 + i) * DAY))
        await store.compact_events(T0 + 5 * DAY)  # drops events older than the d* writes
        async with store.transaction() as tx:
            await tx.set_meta("kek_canary", b"sealed-canary")
            await tx.set_meta("acme_account:https://ca/dir", b'{"key_sealed": "00", "url": "u"}')
            await tx.set_meta("dns01_label_secret", b"sealed-secret")
    finally:
        await store.close()


async def _put(store: AnyStore, domain: object) -> object:
    async with store.transaction() as tx:
        return await tx.put_domain(domain)  # type: ignore[arg-type]


async def snapshot(store: AnyStore) -> dict[str, object]:
    """Everything a broker reads from its store, as comparable values."""
    domains = await store.list_domains(None, "", 1000)
    keys = {
        c.id: await store.load_key(c.id)
        for d in domains
        for c in (d.le_cert, d.custom_cert)
        if c is not None
    }
    since = T0 - 30 * DAY
    limits = (
        await store.limit_spends("registered_domain", "example.com", since, 10),
        await store.limit_spends("name_set", "a.example.com", since, 10),
        await store.limit_pauses([("registered_domain", "example.org")], T0),
        await store.names_issued_since(("a.example.com",), since),
    )
    return {
        "domains": domains,
        "keys": keys,
        "events": await store.events_after(0, 1000),
        "revision": await store.current_revision(),
        "compacted": await store.compacted_through(),
        "order": await store.get_order("c.example.com"),
        "meta": {
            k: await store.get_meta(k)
            for k in ("kek_canary", "acme_account:https://ca/dir", "dns01_label_secret")
        },
        "limits": limits,
    }


async def test_everything_is_copied_and_reads_back_the_same(
    tmp_path: Path, postgres_dsn: str
) -> None:
    path = tmp_path / "broker.sqlite3"
    await fill(path)
    source = await SqliteStore.open(str(path))
    try:
        before = await snapshot(source)
    finally:
        await source.close()
    assert before["compacted"] == 5 and before["revision"] == 8  # the test means something

    summary = await migrate_db(f"sqlite:{path}", postgres_dsn)
    assert summary.counts == {
        "certificates": 2,
        "domains": 5,
        "events": 3,
        "issuances": 1,
        "orders": 1,
        "meta": 4,  # and compacted_through
        "limit_spends": 2,
        "limit_pauses": 1,
        "removed_backoff": 1,
    }
    assert (summary.revision, summary.compacted_through) == (8, 5)

    target = await PostgresStore.open(postgres_dsn)
    try:
        assert await snapshot(target) == before
        # and it goes on where SQLite stopped: the next revision, a new certificate id
        async with target.transaction() as tx:
            cert = await tx.add_certificate(
                NewCertificate("e.example.com", Source.CUSTOM, make_cert("e.example.com"), b"k")
            )
            d = await tx.put_domain(make_domain("e.example.com", custom_cert=cert))
        assert d.revision == 9
        assert cert.id > max(before["keys"])  # type: ignore[type-var, arg-type]
    finally:
        await target.close()


async def test_a_target_that_is_not_empty_is_refused_and_left_alone(
    tmp_path: Path, postgres_dsn: str
) -> None:
    path = tmp_path / "broker.sqlite3"
    await fill(path)
    existing = await PostgresStore.open(postgres_dsn)
    try:
        await _put(existing, make_domain("already.example.com", le_state=LetsEncryptState.IN_USE))
    finally:
        await existing.close()
    with pytest.raises(
        MigrationError,
        match=r"the target database is not empty \(1 domains, 1 events, 1 revision\)",
    ):
        await migrate_db(str(path), postgres_dsn)
    conn = await asyncpg.connect(postgres_dsn)
    try:
        assert await conn.fetchval("SELECT COUNT(*) FROM domains") == 1
        assert await conn.fetchval("SELECT value FROM revision_counter") == 1
    finally:
        await conn.close()


async def test_the_cli_verb_copies_and_reports(tmp_path: Path, postgres_dsn: str) -> None:
    path = tmp_path / "broker.sqlite3"
    await fill(path)
    out, err = io.StringIO(), io.StringIO()
    # the CLI runs its own event loop: in a thread, as from a shell
    import asyncio

    code = await asyncio.to_thread(
        cli, ["migrate-db", "--from", f"sqlite:{path}", "--to", postgres_dsn], out=out, err=err
    )
    assert (code, err.getvalue()) == (0, "")
    assert out.getvalue().splitlines() == [
        "copied 2 certificates, 5 domains, 3 events, 1 issuances, 1 orders, 4 meta, "
        "2 limit_spends, 1 limit_pauses, 1 removed_backoff",
        "verified: every count matches; revision 8 (compacted through 5); "
        "the same KEK opens every key",
    ]
    # again: refused, exit 1, one line
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(
        cli, ["migrate-db", "--from", str(path), "--to", postgres_dsn], out=out, err=err
    )
    assert code == 1
    assert err.getvalue().startswith("error: the target database is not empty (")
    assert len(err.getvalue().splitlines()) == 1


@pytest.mark.parametrize(
    ("source", "target", "message"),
    [
        ("postgresql://x/y", "postgresql://x/z", "--from must be a SQLite database"),
        ("sqlite:/nonexistent/broker.sqlite3", "postgresql://x/z", "no such file"),
        ("sqlite:/tmp/x.db", "/tmp/y.db", "--to must be a PostgreSQL database"),
    ],
)
async def test_bad_arguments_are_refused_before_anything_is_touched(
    source: str, target: str, message: str
) -> None:
    with pytest.raises(MigrationError, match=message):
        await migrate_db(source, target)


async def test_an_unreachable_target_is_one_line_without_the_password(tmp_path: Path) -> None:
    from tests.infra.ports import free_port

    path = tmp_path / "broker.sqlite3"
    await fill(path)
    with pytest.raises(MigrationError) as error:
        await migrate_db(str(path), f"postgresql://cb:s3cret@127.0.0.1:{free_port()}/cb")
    assert "cannot connect" in str(error.value)
    assert "s3cret" not in str(error.value)
