"""The store on PostgreSQL, for several brokers sharing one database.

Same contract and row shape as ``certbroker.store.sqlite`` (one codec reads both),
over ``asyncpg``. Chosen over psycopg 3: it is asyncio-native (no thread hop per
query, which counts on a busy event loop), its connection pool and LISTEN/NOTIFY
are built in, and it speaks the binary protocol, so BYTEA and BIGINT come back
as ``bytes``/``int`` without parsing; psycopg 3's async mode would also do, with
a separate pool package.

**Revisions in commit order.** An event's id is the global revision watchers
resume from, so no reader may see N+1 before N is committed. A sequence cannot
promise that (two transactions take N and N+1, the second commits first). Here
every write transaction begins by locking the one row of ``revision_counter``
(``SELECT ... FOR UPDATE``) and keeps the lock until it commits; each event takes
``value + 1`` from that row in the statement that inserts it. The next writer can
read the counter only after the previous one committed (or rolled back, undoing
its increments), so revisions are assigned in commit order and without gaps, and
``current_revision`` is simply the committed counter. A counter row rather than a
transaction-scoped advisory lock plus a sequence: the lock would order commits
just as well, but the sequence would leave holes on rollback and a reader could
not tell a hole from a revision still committing. Taking the lock when the
transaction *begins*, not at its first event, also makes each transaction's
reads current for its writes (an API call and another broker's scheduler never
interleave on one domain), which is what SQLite's single writer gives: write
transactions run one at a time across all brokers. They are short (no network
call to a CA or DNS runs inside one), so that is not the bottleneck of issuance.

**Read committed, always.** What makes the counter lock serialise the cluster's
writes is that each statement after it takes a fresh snapshot (READ COMMITTED),
so it sees every transaction that committed before the lock was granted. The
limits ledger depends on that: ``LimitsLedger.reserve`` reads a bucket's spends
and inserts its own in one transaction, and two brokers reserving at once must
not both see the last token. Under REPEATABLE READ the snapshot would be taken
by the locking statement itself, *before* it waited, so a broker would spend on
a stale view (a transaction without an event leaves the counter row unchanged,
so nothing fails: the bucket is overspent); under SERIALIZABLE concurrent
writers would fail with serialization errors instead. A DBA may set either as
the database's or role's default, so the store does not inherit it: every
write transaction begins ``ISOLATION LEVEL READ COMMITTED`` and every
connection sets ``default_transaction_isolation`` (the backup's snapshot asks
for REPEATABLE READ explicitly and still gets it). Tested with racing brokers
under each default in tests/store/test_postgres_ledger.py.

**Commits of other brokers.** Each commit that wrote events sends
``NOTIFY certbroker_events, '<newest revision>'`` (delivered at commit, in commit
order). A dedicated connection LISTENs; on a notification the store reads the
names of the new events, drops those rows from its cache, then tells its
listeners (the ``EventHub``), exactly as for its own commits. The log table stays
the source of truth: a notification only says "look"; a poll of the counter every
``poll_interval`` catches anything missed. While the listening connection is
down the domain cache is off (a change that writes no event, such as a
compaction, would otherwise go unseen), and it reconnects at the next poll.

**Caches.** Certificate rows never change once written, so their decoded infos
are cached by id as in SQLite. Domain rows are cached from this broker's commits
and from reads, and dropped when another broker's event names them; a read only
fills the cache if nothing was dropped while it ran. A transaction never trusts
the cache: it reads rows under the counter lock, so they are current.

**Claims and leases** (several brokers working due domains, ``claim_due``): the
lease is two columns of the domain row outside ``codec.DOMAIN_COLUMNS``
(``lease_owner``, ``lease_until``), so the domain upsert here leaves them alone and
a cached ``Domain`` never goes stale because of them. A claim is one statement,
``UPDATE ... WHERE name IN (SELECT ... FOR UPDATE SKIP LOCKED)``, in a transaction
of its own that does *not* lock the revision counter: it writes no event, so it
has no place in the commit order, and claiming must not queue behind every write
of the cluster. Two brokers claiming at once lock disjoint rows (each skips what
the other locked) and neither waits. A writer holding the counter that meets a
row being claimed waits for that one-statement transaction, which waits for
nothing the writer holds: no deadlock. Named leases (jobs that run once across
the cluster, presence marks) and published HTTP-01 answers are rows of their own
tables, written the same way.

Deleted certificate rows (and their sealed keys) stay in the table's pages as dead
tuples until (auto)vacuum reclaims them; SQLite's ``secure_delete`` has no
PostgreSQL equivalent, and the keys are sealed under the KEK either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import datetime, timedelta
from importlib import resources
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import asyncpg
from opentelemetry import trace

from certbroker import limits
from certbroker.errors import StoreUnavailable
from certbroker.model import CertificateInfo, Domain, Event, EventType, RetryState
from certbroker.priorities import Candidate, Kind
from certbroker.store.base import (
    Change,
    NewCertificate,
    PendingOrder,
    SpendQuery,
    StoreObserver,
    in_family_order,
    names_key,
)
from certbroker.store.codec import (
    DOMAIN_COLUMNS,
    SCHEDULE_COLUMNS,
    certificate_from_row,
    domain_from_row,
    domain_to_row,
    from_micros,
    must_time,
    to_micros,
)
from certbroker.store.factory import redact

log = logging.getLogger(__name__)

EVENTS_CHANNEL = "certbroker_events"  # payload: the newest revision a commit wrote
STORE_CHANNEL = "certbroker_store"  # payload: "compacted <revision>"
POLL_INTERVAL = 2.0  # seconds between safety-net polls of the counter
POOL_SIZE = 10
CONNECT_TIMEOUT = 10.0  # seconds; a database that does not answer fails the start
# Session settings of every connection: a broker that hangs inside a transaction
# (stopped, partitioned) must not hold the counter lock, and so every other
# broker's writes, for longer than this; a dead peer is noticed by keepalives.
SERVER_SETTINGS = {
    "idle_in_transaction_session_timeout": "60s",
    "lock_timeout": "30s",
    "tcp_keepalives_idle": "30",
    "tcp_keepalives_interval": "10",
    "tcp_keepalives_count": "3",
    "application_name": "certbroker",
    # claims, leases and reads too: see "Read committed, always" in the module doc
    "default_transaction_isolation": "read committed",
}
_MIGRATION_LOCK = 0x63657274  # pg_advisory_lock key: one migrator at a time ("cert")
_CACHE_LIMIT = 200_000
_CERTIFICATE_CACHE_LIMIT = 2 * _CACHE_LIMIT
_CHALLENGE_EVENTS = frozenset({EventType.CHALLENGE_ADDED.value, EventType.CHALLENGE_REMOVED.value})
_DOMAIN_SELECT = f"SELECT {', '.join(DOMAIN_COLUMNS)} FROM domains"  # noqa: S608
_CERT_SELECT = (
    "SELECT id, chain_pem, sans_json, subject, issuer, serial, not_before, not_after, "
    "fingerprint, key_algorithm, created_at FROM certificates"
)
# One round trip: open the transaction and take the writers' lock. READ COMMITTED
# whatever the database's default (see "Read committed, always" in the module doc).
_BEGIN = (
    "BEGIN ISOLATION LEVEL READ COMMITTED;"
    " SELECT value FROM revision_counter WHERE id = 1 FOR UPDATE"
)
_NEXT_REVISION = "UPDATE revision_counter SET value = value + 1 WHERE id = 1 RETURNING value"
_EVENT_COLUMNS = "revision, type, domain, payload, challenge_token, challenge_keyauth, at"
# A domain held by one of these waits for a token (certbroker.limits), whatever its state.
_HOLD_REASONS = (
    limits.QUOTA_ACCOUNT_ORDERS,
    limits.QUOTA_REGISTERED_DOMAIN,
    limits.QUOTA_NAME_SET,
    limits.QUOTA_FAILED_AUTHORIZATIONS,
    limits.CA_RATE_LIMITED,
)


def _put_domain_sql() -> str:
    """Counter, event and row in one statement: writes are serialised, round trips count."""
    columns = ", ".join(DOMAIN_COLUMNS)
    numbers = iter(range(5, 5 + len(DOMAIN_COLUMNS)))
    values = ", ".join(
        "(SELECT revision FROM event)" if column == "revision" else f"${next(numbers)}"
        for column in DOMAIN_COLUMNS
    )
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in DOMAIN_COLUMNS if c != "name")
    return (
        f"WITH counter AS ({_NEXT_REVISION}), event AS ("  # noqa: S608 (column names only)
        f" INSERT INTO events ({_EVENT_COLUMNS})"
        " SELECT value, $1::text, $2::text, $3::text, '', '', $4::bigint FROM counter"
        " RETURNING revision)"
        f" INSERT INTO domains ({columns}) VALUES ({values})"
        f" ON CONFLICT (name) DO UPDATE SET {updates} RETURNING revision"
    )


_PUT_DOMAIN = _put_domain_sql()
# Transaction.family_rows, in one round trip, each part an index scan: the primary key,
# and domains_exact_parent as the two ranges of app around the caller's ($1), each in
# index order. Without the ORDER BY, a LIMIT over a common exact_parent made the planner
# pick a sequential scan "to stop at the first match", which read all 100,000 rows when
# the matches were the caller's own (an app adding a wildcard over its names).
_FAMILY_NAMED = f"{_DOMAIN_SELECT} WHERE app <> $1 AND name = ANY($2::text[])"
_FAMILY_NAMED_AND_COVERED = " UNION ALL ".join(
    [_FAMILY_NAMED]
    + [
        f"({_DOMAIN_SELECT} WHERE exact_parent = $3 AND {side} LIMIT $4)"
        for side in ("app > $1 ORDER BY app", "app < $1 ORDER BY app DESC")
    ]
)
_APPEND_EVENT = (
    f"WITH counter AS ({_NEXT_REVISION}) INSERT INTO events ({_EVENT_COLUMNS})"  # noqa: S608
    " SELECT value, $1::text, $2::text, $3::text, $4::text, $5::text, $6::bigint FROM counter"
    " RETURNING revision"
)

_PUT_SCHEDULE = (
    "WITH moved AS (UPDATE domains SET "  # noqa: S608 (column names only)
    + ", ".join(f"{c} = ${i}" for i, c in enumerate(SCHEDULE_COLUMNS, 1))
    + f" WHERE name = ${len(SCHEDULE_COLUMNS) + 1} RETURNING name)"
    + f" SELECT pg_notify(${len(SCHEDULE_COLUMNS) + 2}, ${len(SCHEDULE_COLUMNS) + 3})"
    + " FROM moved"
)

# One statement: pick the due, unleased rows (skipping rows another claim or writer
# has locked), lease them, return them. MATERIALIZED: the locking pick runs once.
# One statement: lock the chosen rows still due and unleased (skipping rows another
# claim or a writer holds), lease them. MATERIALIZED: the locking pick runs once.
_CLAIM = (
    "WITH picked AS MATERIALIZED (SELECT name FROM domains"
    " WHERE name = ANY($2::text[]) AND next_run_at <= $3"
    " AND (lease_until IS NULL OR lease_until <= $3 OR lease_owner = $1)"
    " FOR UPDATE SKIP LOCKED)"
    " UPDATE domains d SET lease_owner = $1, lease_until = $4 FROM picked"
    " WHERE d.name = picked.name RETURNING d.name"
)
# Two index-driven looks: the first claimable due time (domains_due), the first lapse
# of another broker's lease (domains_leased, which holds only leased rows).
_NEXT_CLAIM = (
    "SELECT (SELECT next_run_at FROM domains WHERE next_run_at IS NOT NULL"
    " AND (lease_until IS NULL OR lease_until <= $2 OR lease_owner = $1)"
    " AND name <> ALL($3::text[]) AND ($4::bigint IS NULL OR next_run_at > $4)"
    " ORDER BY next_run_at LIMIT 1),"
    " (SELECT MIN(lease_until) FROM domains WHERE lease_until > $2 AND lease_owner <> $1"
    " AND next_run_at IS NOT NULL AND name <> ALL($3::text[]))"
)

P = ParamSpec("P")
T = TypeVar("T")
if TYPE_CHECKING:  # asyncpg's classes are generic in its stubs only
    Conn = asyncpg.pool.PoolConnectionProxy[asyncpg.Record]
    Reader = asyncpg.Pool[asyncpg.Record] | Conn

# Errors that mean "the database cannot answer now", not "this is a bug".
_LOST: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, crash recovery
    asyncpg.exceptions.IdleInTransactionSessionTimeoutError,
    asyncpg.exceptions.TooManyConnectionsError,
)
_BUSY: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.LockNotAvailableError,  # lock_timeout: another broker holds the lock
    asyncpg.exceptions.TransactionRollbackError,  # serialization failure, deadlock
)
_FULL: tuple[type[BaseException], ...] = (asyncpg.exceptions.InsufficientResourcesError,)
_TRANSIENT = _LOST + _BUSY + _FULL


def translate(error: BaseException) -> StoreUnavailable:
    """A transient driver error as ``StoreUnavailable`` (UNAVAILABLE + RetryInfo for callers)."""
    if isinstance(error, _BUSY):
        return StoreUnavailable(
            "the database is busy with another broker's write; try again shortly",
            reason="STORE_BUSY",
            retry_after=timedelta(seconds=1),
        )
    if isinstance(error, _FULL):
        return StoreUnavailable(
            "the broker's database is out of space or resources; try again once freed",
            reason="STORE_FULL",
            retry_after=timedelta(seconds=5),
        )
    return StoreUnavailable(
        f"the broker's database cannot be reached ({type(error).__name__}); try again shortly",
        reason="STORE_UNAVAILABLE",
        retry_after=timedelta(seconds=2),
    )


def _translated(fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Run ``fn``, raising ``StoreUnavailable`` in place of a lost connection or a lock timeout."""

    @functools.wraps(fn)
    async def call(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except _TRANSIENT as error:
            raise translate(error) from error

    return call


def _migrations() -> list[tuple[int, str]]:
    folder = resources.files("certbroker.store") / "migrations" / "postgres"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.read_text()))
    return sorted(found)


async def migrate(conn: Conn | asyncpg.Connection[asyncpg.Record]) -> list[int]:
    """Apply the numbered ``migrations/postgres/*.sql`` not applied yet; returns those applied.

    Under a session advisory lock, so brokers starting together migrate once;
    each file in its own transaction (PostgreSQL's DDL is transactional).
    """
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        applied = {row[0] for row in await conn.fetch("SELECT version FROM schema_migrations")}
        done = []
        for version, sql in _migrations():
            if version in applied:
                continue
            log.info("applying PostgreSQL migration %03d", version)
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
            done.append(version)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)


async def _keep_session(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    """Pool reset: nothing to undo (no session state is ever changed), so no round trip.

    asyncpg still rolls back a transaction left open before calling this.
    """


class PostgresStore:
    def __init__(
        self,
        dsn: str,
        pool: asyncpg.Pool[asyncpg.Record],
        revision: int,
        compacted: int,
        *,
        poll_interval: float = POLL_INTERVAL,
        certificate_cache: int = _CERTIFICATE_CACHE_LIMIT,
    ) -> None:
        self._dsn = dsn
        self._pool = pool
        self._poll_interval = poll_interval
        self._write_lock = asyncio.Lock()  # one writer per broker waits on the database lock
        self._listeners: list[Callable[[int], None]] = []
        self._observer: StoreObserver | None = None
        self._tracer: trace.Tracer | None = None
        self._domains: dict[str, Domain] = {}
        self._certificates: OrderedDict[int, CertificateInfo] = OrderedDict()
        self._certificate_cache = certificate_cache
        self._compacted = compacted
        self._swept = False  # compact_certificates has looked for unmarked retired rows
        # Other brokers' commits: the newest revision heard of, and the newest whose
        # domains this cache has caught up with (dropped the rows they changed).
        self._heard = revision
        self._seen = revision
        self._announced = revision  # the newest revision told to the commit listeners
        self._generation = 0  # bumped whenever cached rows are dropped
        self._listener: asyncpg.Connection[asyncpg.Record] | None = None
        self._kick = asyncio.Event()
        self._sync_task: asyncio.Task[None] | None = None
        self._closed = False
        self.token = secrets.token_hex(8)  # tells this store's notifications from others'

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        pool_size: int = POOL_SIZE,
        poll_interval: float = POLL_INTERVAL,
        certificate_cache: int = _CERTIFICATE_CACHE_LIMIT,
    ) -> PostgresStore:
        """Connect, apply pending migrations, start listening; return the store."""
        pool = await asyncpg.create_pool(
            dsn,
            timeout=CONNECT_TIMEOUT,
            min_size=1,
            max_size=pool_size,
            reset=_keep_session,
            server_settings=SERVER_SETTINGS,
        )
        try:
            async with pool.acquire() as conn:
                await migrate(conn)
                revision = int(await conn.fetchval("SELECT value FROM revision_counter"))
                raw = await conn.fetchval("SELECT value FROM meta WHERE key = 'compacted_through'")
            store = cls(
                dsn,
                pool,
                revision,
                int(bytes(raw).decode()) if raw else 0,
                poll_interval=poll_interval,
                certificate_cache=certificate_cache,
            )
            await store._listen()
        except BaseException:
            await pool.close()
            raise
        store._sync_task = asyncio.create_task(store._sync_loop(), name="postgres-store-sync")
        log.info("PostgreSQL store %s at revision %d", redact(dsn), revision)
        return store

    async def close(self) -> None:
        self._closed = True
        if self._sync_task is not None:
            self._sync_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sync_task
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(listener.close(), 5)
        try:
            await asyncio.wait_for(self._pool.close(), 10)
        except TimeoutError:
            self._pool.terminate()

    def on_commit(self, listener: Callable[[int], None]) -> None:
        self._listeners.append(listener)

    def observe(self, observer: StoreObserver, tracer: trace.Tracer | None = None) -> None:
        """Tell ``observer`` of this broker's commits (``StoreObserver``); with ``tracer``, a
        write inside a recorded trace is a ``store.write`` span of it. Another broker's
        commits are not seen here (each broker observes its own writes)."""
        self._observer = observer
        self._tracer = tracer

    def _observed(self, tx: _PostgresTransaction, started: float) -> None:
        if self._observer is None:
            return
        try:
            self._observer.committed(tx.changes(), time.perf_counter() - started)
        except Exception:  # telemetry must never undo or block a commit
            log.exception("the store observer failed")

    def _announce(self, revision: int) -> None:
        for listener in self._listeners:
            listener(revision)

    # -- writes ------------------------------------------------------------------------

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_PostgresTransaction]:
        started = time.perf_counter()
        tracer = self._tracer
        span = (
            tracer.start_as_current_span("store.write")
            if tracer is not None and trace.get_current_span().is_recording()
            else contextlib.nullcontext()
        )
        with span:
            async with self._transaction(started) as tx:
                yield tx

    @asynccontextmanager
    async def _transaction(self, started: float) -> AsyncIterator[_PostgresTransaction]:
        async with self._write_lock:
            try:
                async with self._pool.acquire() as conn:
                    await conn.execute(_BEGIN)
                    tx = _PostgresTransaction(self, conn)
                    try:
                        yield tx
                        if tx.last_revision:  # delivered at commit, in commit order
                            await conn.execute(
                                f"NOTIFY {EVENTS_CHANNEL}, '{int(tx.last_revision)}'; COMMIT"
                            )
                        else:
                            await conn.execute("COMMIT")
                    except BaseException:
                        if not conn.is_closed():
                            try:
                                await conn.execute("ROLLBACK")
                            except Exception:  # a broken connection: the pool replaces it
                                conn.terminate()
                        for cert_id in tx.added_certificates:
                            self._certificates.pop(cert_id, None)  # never committed
                        raise
            except _TRANSIENT as error:
                raise translate(error) from error
            self._committed(tx)
            self._observed(tx, started)
        # Once per revision: the notification of this very commit may have reached the
        # catch-up (and been announced from there) before this line runs.
        if tx.last_revision > self._announced:
            self._announced = tx.last_revision
            self._announce(tx.last_revision)

    def _committed(self, tx: _PostgresTransaction) -> None:
        """Under the write lock, after COMMIT: the rows written are the newest there are."""
        self._generation += 1
        for cert_id in tx.removed_certificates:
            self._certificates.pop(cert_id, None)
        for name in tx.removed:
            self._domains.pop(name, None)
        if self._listener is not None:  # otherwise the cache is off, see _sync_loop
            if len(self._domains) > _CACHE_LIMIT:
                self._domains.clear()
            self._domains.update(tx.written)
        if tx.first_revision and tx.first_revision == self._seen + 1:
            # nothing of another broker's in between; what was heard after ours stays to do
            self._seen = tx.last_revision
            self._heard = max(self._heard, self._seen)
        elif tx.last_revision:
            # another broker committed since this cache last caught up: catch up
            self._heard = max(self._heard, tx.last_revision)
            self._kick.set()

    # -- other brokers' commits --------------------------------------------------------

    async def _listen(self) -> None:
        conn = await asyncpg.connect(
            self._dsn, timeout=CONNECT_TIMEOUT, server_settings=SERVER_SETTINGS
        )
        try:
            await conn.add_listener(EVENTS_CHANNEL, self._on_events)
            await conn.add_listener(STORE_CHANNEL, self._on_store)
        except BaseException:
            await conn.close()
            raise
        conn.add_termination_listener(self._on_listener_lost)
        self._listener = conn

    def _on_events(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        try:
            revision = int(str(payload))
        except ValueError:
            return
        if revision > self._heard:
            self._heard = revision
            self._kick.set()

    def _on_store(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        what, _, value = str(payload).partition(" ")
        if what == "compacted" and value.isdigit():
            self._compacted = max(self._compacted, int(value))
        elif what == "schedule":
            # another broker moved a row's scheduling columns (no event): forget our copy
            token, _, name = value.partition(" ")
            if token != self.token and self._domains.pop(name, None) is not None:
                self._generation += 1

    def _on_listener_lost(self, _conn: object) -> None:
        if self._closed:
            return
        log.warning("lost the PostgreSQL LISTEN connection; reconnecting (cache off until then)")
        self._listener = None
        self._drop_all()
        self._kick.set()

    def _drop_all(self) -> None:
        self._domains.clear()
        self._generation += 1

    async def _sync_loop(self) -> None:
        """Catch up on other brokers' commits: on a notification, else every poll interval."""
        failures = 0
        while True:
            polled = False
            try:
                async with asyncio.timeout(self._poll_interval):
                    await self._kick.wait()
            except TimeoutError:
                polled = True
            self._kick.clear()
            try:
                if polled or self._listener is None:
                    await self._poll()
                if self._heard > self._seen:
                    await self._catch_up()
            except Exception as error:  # the next round tries again
                failures += 1
                if failures == 1 or failures % 30 == 0:  # once, then about every 30 s
                    log.warning(
                        "catching up with the database failed (%d in a row): %s", failures, error
                    )
                self._kick.clear()
                await asyncio.sleep(min(self._poll_interval, 1.0))
            else:
                if failures:
                    log.info("caught up with the database again after %d failures", failures)
                failures = 0

    async def _poll(self) -> None:
        if self._listener is None or self._listener.is_closed():
            self._listener = None
            await self._listen()
            self._drop_all()  # anything may have changed unseen meanwhile
            log.info("listening for PostgreSQL notifications again")
        row = await self._pool.fetchrow(
            "SELECT value, (SELECT value FROM meta WHERE key = 'compacted_through') "
            "FROM revision_counter"
        )
        assert row is not None
        self._heard = max(self._heard, int(row[0]))
        if row[1]:
            self._compacted = max(self._compacted, int(bytes(row[1]).decode()))

    async def _catch_up(self) -> None:
        """Drop the cached rows that events after ``_seen`` changed, then tell the listeners."""
        while self._seen < self._heard:
            rows = await self._pool.fetch(
                "SELECT revision, type, domain FROM events WHERE revision > $1 "
                "ORDER BY revision LIMIT 1000",
                self._seen,
            )
            if not rows:
                break
            if rows[0]["revision"] != self._seen + 1:
                self._drop_all()  # compacted before we read them: we cannot know what changed
            dropped = False
            for row in rows:
                if row["type"] in _CHALLENGE_EVENTS:
                    continue
                cached = self._domains.get(row["domain"])
                if cached is not None and cached.revision < row["revision"]:
                    del self._domains[row["domain"]]
                    dropped = True
            if dropped:
                self._generation += 1
            self._seen = max(self._seen, int(rows[-1]["revision"]))
        self._heard = max(self._heard, self._seen)
        if self._seen > self._announced:
            self._announced = self._seen
            self._announce(self._seen)

    # -- certificates and the cache ----------------------------------------------------

    async def certificate(
        self, cert_id: int | None, conn: Reader | None = None
    ) -> CertificateInfo | None:
        if cert_id is None:
            return None
        cached = self._certificates.get(cert_id)
        if cached is not None:
            self._certificates.move_to_end(cert_id)
            return cached
        row = await (conn or self._pool).fetchrow(f"{_CERT_SELECT} WHERE id = $1", cert_id)
        if row is None:
            return None
        info = certificate_from_row(row)
        self.remember_certificate(info)
        return info

    def remember_certificate(self, info: CertificateInfo) -> None:
        """Cache ``info``, dropping the least recently used beyond the bound."""
        self._certificates[info.id] = info
        self._certificates.move_to_end(info.id)
        while len(self._certificates) > self._certificate_cache:
            self._certificates.popitem(last=False)

    def cached_certificate_ids(self) -> list[int]:
        """Certificates whose info is held in memory, least recently used first."""
        return list(self._certificates)

    async def certificates(
        self, cert_ids: Collection[int], conn: Reader | None = None
    ) -> dict[int, CertificateInfo]:
        """The certificates ``cert_ids`` name, by id: cached ones from memory, the rest in
        one query (``= ANY($1)``); ids with no row are left out.

        As on SQLite, what is read here is not cached: the callers are scans that touch
        every certificate once.
        """
        found: dict[int, CertificateInfo] = {}
        missing = []
        for cert_id in cert_ids:
            cached = self._certificates.get(cert_id)
            if cached is None:
                missing.append(cert_id)
            else:
                found[cert_id] = cached
        if missing:
            rows = await (conn or self._pool).fetch(f"{_CERT_SELECT} WHERE id = ANY($1)", missing)
            for row in rows:
                info = certificate_from_row(row)
                found[info.id] = info
        return found

    async def decode_domains(self, rows: list[Any], conn: Reader | None = None) -> list[Domain]:
        """Rows to domains, their certificates read together (``certificates``)."""
        wanted = {
            row[column]
            for row in rows
            for column in ("le_cert_id", "custom_cert_id")
            if row[column] is not None
        }
        found = await self.certificates(wanted, conn)
        return [domain_from_row(row, found.get) for row in rows]

    async def decode_domain(self, row: Any, conn: Reader | None = None) -> Domain:
        found = {}
        for column in ("le_cert_id", "custom_cert_id"):
            if row[column] is not None:
                found[row[column]] = await self.certificate(row[column], conn)
        return domain_from_row(row, found.get)

    def cached_domain(self, name: str) -> Domain | None:
        return self._domains.get(name)

    # -- reads -------------------------------------------------------------------------

    @_translated
    async def get_domain(self, name: str) -> Domain | None:
        cached = self._domains.get(name)
        if cached is not None:
            return cached
        generation = self._generation
        row = await self._pool.fetchrow(f"{_DOMAIN_SELECT} WHERE name = $1", name)
        if row is None:
            return None
        domain = await self.decode_domain(row)
        # Only if nothing was dropped or written meanwhile: the row may be older than that.
        if (
            generation == self._generation
            and self._listener is not None
            and len(self._domains) < _CACHE_LIMIT
        ):
            self._domains.setdefault(name, domain)
        return domain

    @_translated
    async def list_domains(self, app: str | None, after: str, limit: int) -> list[Domain]:
        if app:
            rows = await self._pool.fetch(
                f"{_DOMAIN_SELECT} WHERE app = $1 AND name > $2 ORDER BY name LIMIT $3",
                app,
                after,
                limit,
            )
        else:
            rows = await self._pool.fetch(
                f"{_DOMAIN_SELECT} WHERE name > $1 ORDER BY name LIMIT $2", after, limit
            )
        # One query for the rows and one for their certificates (the snapshot's pages).
        return await self.decode_domains(rows)

    @_translated
    async def due_domains(self, now: datetime, limit: int) -> list[Domain]:
        rows = await self._pool.fetch(
            f"{_DOMAIN_SELECT} WHERE next_run_at <= $1 ORDER BY next_run_at LIMIT $2",
            to_micros(now),
            limit,
        )
        return [await self.decode_domain(row) for row in rows]

    @_translated
    async def due_names(
        self, now: datetime, limit: int, exclude: Collection[str] = ()
    ) -> list[str]:
        rows = await self._pool.fetch(
            "SELECT name FROM domains WHERE next_run_at <= $1 AND name <> ALL($2::text[]) "
            "ORDER BY next_run_at LIMIT $3",
            to_micros(now),
            list(exclude),
            limit,
        )
        return [row[0] for row in rows]

    @_translated
    async def names_with_last_error(self, reason: str) -> list[str]:
        # A scan (no index on the reason): the scheduler asks once per start.
        rows = await self._pool.fetch(
            "SELECT name FROM domains WHERE last_error_reason = $1 ORDER BY name", reason
        )
        return [row[0] for row in rows]

    @_translated
    async def due_candidates(
        self, now: datetime, limit: int, exclude: Collection[str] = (), owner: str = ""
    ) -> list[Candidate]:
        rows = await self._pool.fetch(
            "SELECT name, app, next_run_at, not_after, tier FROM ("
            " SELECT d.name, d.app, d.next_run_at, c.not_after,"
            "  CASE WHEN d.le_cert_id IS NOT NULL THEN 0"
            "   WHEN d.letsencrypt_enabled = 1 AND (d.le_state = 'CREATING'"
            "    OR d.last_error_reason = ANY($1::text[])) THEN 2 ELSE 1 END AS tier"
            " FROM domains d LEFT JOIN certificates c ON c.id = d.le_cert_id"
            " WHERE d.next_run_at <= $2 AND d.name <> ALL($3::text[])"
            "  AND (d.lease_until IS NULL OR d.lease_until <= $2 OR d.lease_owner = $5)"
            ") AS due ORDER BY tier, CASE WHEN tier = 0 THEN not_after END,"
            ' ROW_NUMBER() OVER (PARTITION BY app, tier ORDER BY next_run_at, name COLLATE "C"),'
            ' next_run_at, name COLLATE "C" LIMIT $4',
            list(_HOLD_REASONS),
            to_micros(now),
            list(exclude),
            limit,
            owner,
        )
        return [
            Candidate(
                name=row[0],
                app=row[1],
                kind=Kind.RENEWAL if row[4] == 0 else Kind.FIRST,
                due_at=must_time(row[2]),
                expires_at=from_micros(row[3]),
                needs_token=row[4] == 2,
            )
            for row in rows
        ]

    @_translated
    async def next_due_time(
        self, exclude: Collection[str] = (), after: datetime | None = None
    ) -> datetime | None:
        value = await self._pool.fetchval(
            "SELECT MIN(next_run_at) FROM domains WHERE name <> ALL($1::text[]) "
            "AND ($2::bigint IS NULL OR next_run_at > $2)",
            list(exclude),
            to_micros(after),
        )
        return from_micros(value)

    @_translated
    async def limit_spends(
        self, bucket: str, key: str, since: datetime, limit: int
    ) -> list[datetime]:
        return await _limit_spends(self._pool, bucket, key, since, limit)

    @_translated
    async def limit_spends_of(self, queries: Sequence[SpendQuery]) -> list[list[datetime]]:
        return await _limit_spends_of(self._pool, queries)

    @_translated
    async def limit_pauses(
        self, keys: Collection[tuple[str, str]], now: datetime
    ) -> dict[tuple[str, str], datetime]:
        return await _limit_pauses(self._pool, keys, now)

    @_translated
    async def names_issued_since(self, names: tuple[str, ...], since: datetime) -> bool:
        return await _names_issued_since(self._pool, names, since)

    @_translated
    async def events_after(self, revision: int, limit: int) -> list[Event]:
        rows = await self._pool.fetch(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE revision > $1 "  # noqa: S608
            "ORDER BY revision LIMIT $2",
            revision,
            limit,
        )
        if rows and rows[0]["revision"] != revision + 1 and revision >= self._compacted:
            # Revisions have no gaps: a missing one was compacted, maybe by another broker
            # a moment ago. Say nothing rather than skip it; the hub then re-checks
            # ``compacted_through`` and tells the watcher to re-snapshot.
            await self._refresh_compacted()
            if revision < self._compacted:
                return []
        events = []
        for row in rows:
            domain = None
            if row["payload"]:
                payload = json.loads(row["payload"])
                payload.setdefault("ari_renew_at", None)  # events older than migration 006
                payload.setdefault("ari_next_check", None)
                if row["type"] == EventType.DOMAIN_UPDATED.value:
                    payload["revision"] = row["revision"]  # see put_domain
                domain = await self.decode_domain(payload)
            events.append(
                Event(
                    revision=row["revision"],
                    type=EventType(row["type"]),
                    domain_name=row["domain"],
                    domain=domain,
                    at=must_time(row["at"]),
                    challenge_token=row["challenge_token"],
                    challenge_key_authorization=row["challenge_keyauth"],
                )
            )
        return events

    async def _refresh_compacted(self) -> None:
        raw = await self._pool.fetchval("SELECT value FROM meta WHERE key = 'compacted_through'")
        if raw:
            self._compacted = max(self._compacted, int(bytes(raw).decode()))

    @_translated
    async def current_revision(self) -> int:
        return int(await self._pool.fetchval("SELECT value FROM revision_counter WHERE id = 1"))

    async def compacted_through(self) -> int:
        """Kept current by this broker's compactions, other brokers' notifications and polls."""
        return self._compacted

    @_translated
    async def compact_events(self, before: datetime) -> int:
        """Drop events older than ``before``; the newest stays so revisions keep growing."""
        async with self._locked() as conn:
            through = await conn.fetchval(
                "SELECT MAX(revision) FROM events WHERE at < $1 AND revision < "
                "(SELECT MAX(revision) FROM events)",
                to_micros(before),
            )
            if through is None:
                return 0
            status = await conn.execute("DELETE FROM events WHERE revision <= $1", through)
            await conn.execute(
                "INSERT INTO meta (key, value) VALUES ('compacted_through', $1) "
                "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                str(through).encode(),
            )
            await conn.execute(f"NOTIFY {STORE_CHANNEL}, 'compacted {int(through)}'")
        self._compacted = max(self._compacted, int(through))
        return int(status.split()[-1])

    @asynccontextmanager
    async def _locked(self) -> AsyncIterator[Conn]:
        """A write transaction outside ``transaction()`` (housekeeping), under the same lock."""
        async with self._write_lock, self._pool.acquire() as conn:
            await conn.execute(_BEGIN)
            try:
                yield conn
            except BaseException:
                if not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await conn.execute("ROLLBACK")
                raise
            await conn.execute("COMMIT")

    @_translated
    async def compact_certificates(self, before: datetime, now: datetime) -> int:
        """Delete certificates, with their sealed keys, retired before ``before``.

        The same rules as SQLite's (``SqliteStore.compact_certificates``): retired,
        past the retention, and every event from before the retirement compacted.
        """
        async with self._locked() as conn:
            if not self._swept:  # once per start: every certificate row is visited
                await _mark_unnamed(conn, now)
            raw = await conn.fetchval("SELECT value FROM meta WHERE key = 'compacted_through'")
            compacted = int(bytes(raw).decode()) if raw else 0
            rows = await conn.fetch(
                "DELETE FROM certificates WHERE retired_at < $1 AND retired_revision <= $2 "
                "RETURNING id",
                to_micros(before),
                compacted + 1,
            )
        self._swept = True
        for row in rows:
            self._certificates.pop(int(row[0]), None)
        return len(rows)

    @_translated
    async def load_key(self, certificate_id: int) -> bytes | None:
        value = await self._pool.fetchval(
            "SELECT key_sealed FROM certificates WHERE id = $1", certificate_id
        )
        return bytes(value) if value is not None else None

    @_translated
    async def load_keys(self, certificate_ids: Collection[int]) -> dict[int, bytes]:
        """The sealed keys of ``certificate_ids`` by id, in one query (``= ANY($1)``)."""
        if not certificate_ids:
            return {}
        rows = await self._pool.fetch(
            "SELECT id, key_sealed FROM certificates WHERE id = ANY($1)", list(certificate_ids)
        )
        return {int(row[0]): bytes(row[1]) for row in rows}

    @_translated
    async def get_order(self, domain: str) -> PendingOrder | None:
        return await _get_order(self._pool, domain)

    @_translated
    async def get_meta(self, key: str) -> bytes | None:
        value = await self._pool.fetchval("SELECT value FROM meta WHERE key = $1", key)
        return bytes(value) if value is not None else None

    # -- claims and leases (no counter lock: see the module's docstring) --------------

    @_translated
    async def claim_due(
        self, owner: str, names: Sequence[str], now: datetime, lease: timedelta
    ) -> list[str]:
        if not names:
            return []
        rows = await self._pool.fetch(
            _CLAIM, owner, list(names), to_micros(now), to_micros(now + lease)
        )
        granted = {row[0] for row in rows}
        return [name for name in names if name in granted]

    @_translated
    async def renew_leases(
        self, owner: str, names: Collection[str], now: datetime, lease: timedelta
    ) -> list[str]:
        if not names:
            return []
        rows = await self._pool.fetch(
            "UPDATE domains SET lease_until = $3 WHERE name = ANY($2::text[]) "
            "AND lease_owner = $1 RETURNING name",
            owner,
            list(names),
            to_micros(now + lease),
        )
        return [row[0] for row in rows]

    @_translated
    async def release(self, owner: str, names: Collection[str]) -> None:
        if names:
            await self._pool.execute(
                "UPDATE domains SET lease_owner = '', lease_until = NULL "
                "WHERE name = ANY($2::text[]) AND lease_owner = $1",
                owner,
                list(names),
            )

    @_translated
    async def next_claim_time(
        self,
        owner: str,
        now: datetime,
        exclude: Collection[str] = (),
        after: datetime | None = None,
    ) -> datetime | None:
        row = await self._pool.fetchrow(
            _NEXT_CLAIM, owner, to_micros(now), list(exclude), to_micros(after)
        )
        assert row is not None
        times = [t for t in (row[0], row[1]) if t is not None]
        return from_micros(min(times)) if times else None

    @_translated
    async def take_lease(self, name: str, owner: str, now: datetime, lease: timedelta) -> bool:
        taken = await self._pool.fetchval(
            "INSERT INTO leases (name, owner, expires_at) VALUES ($1, $2, $4) "
            "ON CONFLICT (name) DO UPDATE SET owner = EXCLUDED.owner, "
            "expires_at = EXCLUDED.expires_at "
            "WHERE leases.expires_at <= $3 OR leases.owner = EXCLUDED.owner RETURNING owner",
            name,
            owner,
            to_micros(now),
            to_micros(now + lease),
        )
        return taken is not None

    @_translated
    async def drop_lease(self, name: str, owner: str) -> None:
        await self._pool.execute("DELETE FROM leases WHERE name = $1 AND owner = $2", name, owner)

    @_translated
    async def lease_owners(self, prefix: str, now: datetime) -> list[str]:
        rows = await self._pool.fetch(
            "SELECT owner FROM leases WHERE left(name, $1) = $2 AND expires_at > $3 ORDER BY owner",
            len(prefix),
            prefix,
            to_micros(now),
        )
        return [row[0] for row in rows]

    # -- HTTP-01 answers every broker serves --------------------------------------------

    @_translated
    async def put_challenge(
        self, token: str, key_authorization: str, owner: str, expires: datetime
    ) -> None:
        await self._pool.execute(
            "INSERT INTO challenges (token, owner, key_authorization, expires_at) "
            "VALUES ($1, $2, $3, $4) ON CONFLICT (token, owner) DO UPDATE SET "
            "key_authorization = EXCLUDED.key_authorization, expires_at = EXCLUDED.expires_at",
            token,
            owner,
            key_authorization,
            to_micros(expires),
        )

    @_translated
    async def remove_challenge(self, token: str, owner: str) -> None:
        await self._pool.execute(
            "DELETE FROM challenges WHERE token = $1 AND owner = $2", token, owner
        )

    @_translated
    async def get_challenge(self, token: str, now: datetime) -> str | None:
        value = await self._pool.fetchval(
            "SELECT key_authorization FROM challenges WHERE token = $1 AND expires_at > $2 LIMIT 1",
            token,
            to_micros(now),
        )
        return str(value) if value is not None else None

    @_translated
    async def purge_expired(self, now: datetime) -> int:
        at = to_micros(now)
        async with self._pool.acquire() as conn:
            first = await conn.execute("DELETE FROM challenges WHERE expires_at <= $1", at)
            second = await conn.execute("DELETE FROM leases WHERE expires_at <= $1", at)
        return int(first.split()[-1]) + int(second.split()[-1])


async def _mark_unnamed(conn: Conn, now: datetime) -> None:
    """Retire, as of ``now``, rows no domain names that carry no mark (an older version's)."""
    newest = await conn.fetchval("SELECT COALESCE(MAX(revision), 0) FROM events")
    await conn.execute(
        "UPDATE certificates SET retired_at = $1, retired_revision = $2 "
        "WHERE retired_at IS NULL AND NOT EXISTS (SELECT 1 FROM domains d "
        "WHERE d.name = certificates.domain "
        "AND certificates.id IN (d.le_cert_id, d.custom_cert_id))",
        to_micros(now),
        newest,
    )


async def _get_order(conn: Reader, domain: str) -> PendingOrder | None:
    row = await conn.fetchrow(
        "SELECT domain, registered_domain, names_json, key_sealed, order_url, started_at "
        "FROM orders WHERE domain = $1",
        domain,
    )
    if row is None:
        return None
    return PendingOrder(
        domain=row["domain"],
        registered_domain=row["registered_domain"],
        names=tuple(json.loads(row["names_json"])),
        key_sealed=bytes(row["key_sealed"]),
        order_url=row["order_url"],
        started_at=must_time(row["started_at"]),
    )


async def _limit_spends(
    conn: Reader, bucket: str, key: str, since: datetime, limit: int
) -> list[datetime]:
    cutoff = to_micros(since)
    assert cutoff is not None
    rows = await conn.fetch(
        "SELECT at FROM limit_spends WHERE bucket = $1 AND key = $2 AND at >= COALESCE("
        " (SELECT MAX(at) FROM limit_spends WHERE bucket = $1 AND key = $2 AND at <= $3), $4)"
        " ORDER BY at DESC LIMIT $5",
        bucket,
        key,
        cutoff,
        cutoff + 1,
        limit,
    )
    return [must_time(row[0]) for row in reversed(rows)]


async def _limit_spends_of(conn: Reader, queries: Sequence[SpendQuery]) -> list[list[datetime]]:
    """``_limit_spends`` of each query in one statement (UNION ALL of the same selects)."""
    if not queries:
        return []
    parts: list[str] = []
    params: list[Any] = []
    for i, (bucket, key, since, limit) in enumerate(queries):
        cutoff = to_micros(since)
        assert cutoff is not None
        n = len(params)
        b, k, c, c1, lim = (f"${n + j}" for j in range(1, 6))
        parts.append(
            f"SELECT * FROM (SELECT {i}::int AS i, at FROM limit_spends "  # noqa: S608
            f"WHERE bucket = {b} AND key = {k} AND at >= COALESCE((SELECT MAX(at) "
            f"FROM limit_spends WHERE bucket = {b} AND key = {k} AND at <= {c}), {c1}) "
            f"ORDER BY at DESC LIMIT {lim}) AS q{i}"
        )
        params += [bucket, key, cutoff, cutoff + 1, limit]
    found: list[list[datetime]] = [[] for _ in queries]
    for row in await conn.fetch(" UNION ALL ".join(parts), *params):
        found[row[0]].append(must_time(row[1]))
    for times in found:
        times.reverse()  # each part came newest first (its LIMIT keeps the newest)
    return found


async def _limit_pauses(
    conn: Reader, keys: Collection[tuple[str, str]], now: datetime
) -> dict[tuple[str, str], datetime]:
    pairs = list(dict.fromkeys(keys))
    if not pairs:
        return {}
    rows = await conn.fetch(
        "SELECT p.bucket, p.key, p.until FROM limit_pauses p"
        " JOIN unnest($1::text[], $2::text[]) AS k (bucket, key)"
        " ON p.bucket = k.bucket AND p.key = k.key WHERE p.until > $3",
        [b for b, _ in pairs],
        [k for _, k in pairs],
        to_micros(now),
    )
    return {(row[0], row[1]): must_time(row[2]) for row in rows}


async def _names_issued_since(conn: Reader, names: tuple[str, ...], since: datetime) -> bool:
    found = await conn.fetchval(
        "SELECT 1 FROM issuances WHERE names_key = $1 AND issued_at > $2 LIMIT 1",
        names_key(names),
        to_micros(since),
    )
    return found is not None


class _PostgresTransaction:
    """One write transaction, holding the counter lock from its first statement to COMMIT."""

    def __init__(self, store: PostgresStore, conn: Conn) -> None:
        self._store = store
        self._conn = conn
        self.written: dict[str, Domain] = {}
        self.read: dict[str, Domain | None] = {}
        self.removed: set[str] = set()
        self.removed_certificates: set[int] = set()
        self.added_certificates: set[int] = set()
        self.first_revision = 0
        self.last_revision = 0

    def _wrote(self, revision: int) -> int:
        self.first_revision = self.first_revision or revision
        self.last_revision = revision
        return revision

    async def get_domain(self, name: str) -> Domain | None:
        if name in self.written:
            return self.written[name]
        if name in self.removed:
            return None
        # Read, not taken from the cache: another broker may have written it since.
        row = await self._conn.fetchrow(f"{_DOMAIN_SELECT} WHERE name = $1", name)
        found = None if row is None else await self._store.decode_domain(row, self._conn)
        self.read[name] = found
        return found

    async def _remember(self, name: str) -> None:
        """Every path reads a domain before writing it; this covers one that did not."""
        if name not in self.read and name not in self.written and name not in self.removed:
            await self.get_domain(name)

    def changes(self) -> list[Change]:
        """What this transaction did to domains, each once (added then removed: nothing)."""
        found = [Change(self.read.get(name), after) for name, after in self.written.items()]
        for name in self.removed:
            before = self.read.get(name)
            if before is not None:
                found.append(Change(before, None))
        return found

    async def put_domain(
        self, domain: Domain, event: EventType = EventType.DOMAIN_UPDATED
    ) -> Domain:
        # The payload leaves the revision out: it is the event's own id, filled in when read.
        await self._remember(domain.name)
        payload = json.dumps(domain_to_row(replace(domain, revision=0)))
        row = domain_to_row(domain)
        revision = await self._conn.fetchval(
            _PUT_DOMAIN,
            event.value,
            domain.name,
            payload,
            to_micros(domain.updated_at),
            *(row[c] for c in DOMAIN_COLUMNS if c != "revision"),
        )
        stored = replace(domain, revision=self._wrote(int(revision)))
        await self._retire_replaced(stored)
        self.written[domain.name] = stored
        self.removed.discard(domain.name)
        return stored

    async def put_schedule(self, domain: Domain) -> Domain:
        # Only the columns a re-check moves (see lifecycle.worth_an_event); the row keeps
        # its revision, since no event was added. Other brokers drop their cached copy
        # when this commits (the notification is delivered at commit).
        await self._remember(domain.name)
        row = domain_to_row(domain)
        await self._conn.execute(
            _PUT_SCHEDULE,
            *(row[c] for c in SCHEDULE_COLUMNS),
            domain.name,
            STORE_CHANNEL,
            f"schedule {self._store.token} {domain.name}",
        )
        self.written[domain.name] = domain
        self.removed.discard(domain.name)
        return domain

    async def _retire_replaced(self, domain: Domain) -> None:
        """Mark the certificates this write stops naming: their keys' retention starts now.

        Skipped when the previous row was read in this transaction (so it is current)
        and named no other certificate: an ordinary write costs no extra statement.
        """
        kept = [c.id for c in (domain.le_cert, domain.custom_cert) if c is not None]
        name = domain.name
        known = name in self.written or name in self.read or name in self.removed
        previous = self.written.get(name) or (None if name in self.removed else self.read.get(name))
        if known and (
            previous is None
            or all(c.id in kept for c in (previous.le_cert, previous.custom_cert) if c is not None)
        ):
            return
        await self._conn.execute(
            "UPDATE certificates SET retired_at = $1, retired_revision = $2 "
            "WHERE domain = $3 AND retired_at IS NULL AND id <> ALL($4::bigint[])",
            to_micros(domain.updated_at),
            domain.revision,
            name,
            kept,
        )

    async def _append_event(
        self,
        event: EventType,
        name: str,
        payload: str | None,
        at: datetime,
        token: str = "",
        key_authorization: str = "",
    ) -> int:
        revision = await self._conn.fetchval(
            _APPEND_EVENT, event.value, name, payload, token, key_authorization, to_micros(at)
        )
        return self._wrote(int(revision))

    async def delete_domain(self, domain: Domain) -> int:
        await self._remember(domain.name)
        revision = await self._append_event(
            EventType.DOMAIN_REMOVED,
            domain.name,
            json.dumps(domain_to_row(domain)),
            domain.updated_at,
        )
        await self._conn.execute("DELETE FROM domains WHERE name = $1", domain.name)
        await self._conn.execute("DELETE FROM orders WHERE domain = $1", domain.name)
        gone = await self._conn.fetch(
            "DELETE FROM certificates WHERE domain = $1 RETURNING id", domain.name
        )
        self.removed_certificates.update(int(row[0]) for row in gone)
        self.written.pop(domain.name, None)
        self.removed.add(domain.name)
        return revision

    async def keep_backoff(self, name: str, app: str, retry: RetryState, now: datetime) -> None:
        assert retry.next_attempt_at is not None
        # What has run out goes (indexed): the table holds only names backing off now.
        await self._conn.execute(
            "DELETE FROM removed_backoff WHERE next_attempt_at <= $1", to_micros(now)
        )
        await self._conn.execute(
            "INSERT INTO removed_backoff (name, app, attempt, next_attempt_at, "
            "last_error_reason, last_error_message, last_error_at, forced_retry_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (name) DO UPDATE SET "
            "app = EXCLUDED.app, attempt = EXCLUDED.attempt, "
            "next_attempt_at = EXCLUDED.next_attempt_at, "
            "last_error_reason = EXCLUDED.last_error_reason, "
            "last_error_message = EXCLUDED.last_error_message, "
            "last_error_at = EXCLUDED.last_error_at, forced_retry_at = EXCLUDED.forced_retry_at",
            name,
            app,
            retry.attempt,
            to_micros(retry.next_attempt_at),
            retry.last_error_reason,
            retry.last_error_message,
            to_micros(retry.last_error_at),
            to_micros(retry.forced_at),
        )

    async def take_backoff(self, name: str, now: datetime) -> tuple[str, RetryState] | None:
        row = await self._conn.fetchrow(
            "DELETE FROM removed_backoff WHERE name = $1 RETURNING app, attempt, "
            "next_attempt_at, last_error_reason, last_error_message, last_error_at, "
            "forced_retry_at",
            name,
        )
        if row is None or must_time(row["next_attempt_at"]) <= now:
            return None
        return row["app"], RetryState(
            attempt=row["attempt"],
            next_attempt_at=must_time(row["next_attempt_at"]),
            last_error_reason=row["last_error_reason"],
            last_error_message=row["last_error_message"],
            last_error_at=from_micros(row["last_error_at"]),
            forced_at=from_micros(row["forced_retry_at"]),
        )

    async def add_certificate(self, certificate: NewCertificate) -> CertificateInfo:
        info = certificate.info
        cert_id = await self._conn.fetchval(
            "INSERT INTO certificates (domain, source, chain_pem, key_sealed, sans_json, subject, "
            "issuer, serial, not_before, not_after, fingerprint, key_algorithm, created_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING id",
            certificate.domain,
            certificate.source.value,
            info.chain_pem,
            certificate.key_sealed,
            json.dumps(list(info.sans)),
            info.subject,
            info.issuer,
            info.serial,
            to_micros(info.not_before),
            to_micros(info.not_after),
            info.sha256_fingerprint,
            info.key_algorithm,
            to_micros(info.received_at or info.not_before),
        )
        # what a reload gives back: created_at is the receipt time (notBefore if unknown)
        stored = replace(info, id=int(cert_id), received_at=info.received_at or info.not_before)
        self._store.remember_certificate(stored)
        self.added_certificates.add(stored.id)
        return stored

    async def record_issuance(
        self,
        domain: str,
        registered_domain: str,
        names: tuple[str, ...],
        serial: str,
        at: datetime,
    ) -> None:
        await self._conn.execute(
            "INSERT INTO issuances (domain, registered_domain, names_key, serial, issued_at) "
            "VALUES ($1, $2, $3, $4, $5)",
            domain,
            registered_domain,
            names_key(names),
            serial,
            to_micros(at),
        )

    async def names_issued_since(self, names: tuple[str, ...], since: datetime) -> bool:
        return await _names_issued_since(self._conn, names, since)

    async def limit_spends(
        self, bucket: str, key: str, since: datetime, limit: int
    ) -> list[datetime]:
        return await _limit_spends(self._conn, bucket, key, since, limit)

    async def limit_spends_of(self, queries: Sequence[SpendQuery]) -> list[list[datetime]]:
        return await _limit_spends_of(self._conn, queries)

    async def limit_pauses(
        self, keys: Collection[tuple[str, str]], now: datetime
    ) -> dict[tuple[str, str], datetime]:
        return await _limit_pauses(self._conn, keys, now)

    async def add_limit_spend(self, bucket: str, key: str, domain: str, at: datetime) -> None:
        await self._conn.execute(
            "INSERT INTO limit_spends (bucket, key, domain, at) VALUES ($1, $2, $3, $4)",
            bucket,
            key,
            domain,
            to_micros(at),
        )

    async def refund_limit_spends(self, domain: str, buckets: Collection[str]) -> int:
        status = await self._conn.execute(
            "DELETE FROM limit_spends WHERE domain = $1 AND bucket = ANY($2::text[]) "
            "AND at > COALESCE((SELECT MAX(issued_at) FROM issuances WHERE domain = $1), -1)",
            domain,
            list(buckets),
        )
        return int(status.split()[-1])

    async def pause_limit(self, bucket: str, key: str, until: datetime) -> None:
        await self._conn.execute(
            "INSERT INTO limit_pauses (bucket, key, until) VALUES ($1, $2, $3) "
            "ON CONFLICT (bucket, key) DO UPDATE "
            "SET until = GREATEST(limit_pauses.until, EXCLUDED.until)",
            bucket,
            key,
            to_micros(until),
        )

    async def prune_limit_records(self, before: datetime) -> int:
        cutoff = to_micros(before)
        spends = await self._conn.execute("DELETE FROM limit_spends WHERE at < $1", cutoff)
        pauses = await self._conn.execute("DELETE FROM limit_pauses WHERE until < $1", cutoff)
        return int(spends.split()[-1]) + int(pauses.split()[-1])

    async def get_order(self, domain: str) -> PendingOrder | None:
        return await _get_order(self._conn, domain)

    async def put_order(self, order: PendingOrder) -> None:
        await self._conn.execute(
            "INSERT INTO orders (domain, registered_domain, names_key, names_json, key_sealed, "
            "order_url, started_at) VALUES ($1, $2, $3, $4, $5, $6, $7) "
            "ON CONFLICT (domain) DO UPDATE SET registered_domain = EXCLUDED.registered_domain, "
            "names_key = EXCLUDED.names_key, names_json = EXCLUDED.names_json, "
            "key_sealed = EXCLUDED.key_sealed, order_url = EXCLUDED.order_url, "
            "started_at = EXCLUDED.started_at",
            order.domain,
            order.registered_domain,
            names_key(order.names),
            json.dumps(list(order.names)),
            order.key_sealed,
            order.order_url,
            to_micros(order.started_at),
        )

    async def delete_order(self, domain: str) -> None:
        await self._conn.execute("DELETE FROM orders WHERE domain = $1", domain)

    async def add_challenge_event(
        self, domain: str, event: EventType, token: str, key_authorization: str, at: datetime
    ) -> int:
        return await self._append_event(event, domain, None, at, token, key_authorization)

    async def domains_under(self, base: str, other_than_app: str) -> list[Domain]:
        # A scan (no index finds names by suffix); only adding a wildcard asks.
        suffix = f".{base}"
        rows = await self._conn.fetch(
            f"{_DOMAIN_SELECT} WHERE app <> $1 AND right(name, $2) = $3",
            other_than_app,
            len(suffix),
            suffix,
        )
        return [await self._store.decode_domain(row, self._conn) for row in rows]

    async def family_rows(
        self, names: Sequence[str], covered_by: str | None, other_than_app: str, limit: int
    ) -> list[Domain]:
        if covered_by is None:
            rows = await self._conn.fetch(_FAMILY_NAMED, other_than_app, list(names))
        else:
            rows = await self._conn.fetch(
                _FAMILY_NAMED_AND_COVERED, other_than_app, list(names), covered_by, limit
            )
        found = [await self._store.decode_domain(row, self._conn) for row in rows]
        return in_family_order(found, names, limit)

    async def ensure_meta(self, key: str, value: bytes) -> bytes:
        await self._conn.execute(
            "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
            key,
            value,
        )
        stored = await self._conn.fetchval("SELECT value FROM meta WHERE key = $1", key)
        assert stored is not None
        return bytes(stored)

    async def set_meta(self, key: str, value: bytes) -> None:
        await self._conn.execute(
            "INSERT INTO meta (key, value) VALUES ($1, $2) "
            "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            key,
            value,
        )

    async def lease_holder(self, name: str, now: datetime) -> str | None:
        row = await self._conn.fetchrow(
            "SELECT lease_owner FROM domains WHERE name = $1 AND lease_until > $2",
            name,
            to_micros(now),
        )
        return None if row is None or not row[0] else str(row[0])
