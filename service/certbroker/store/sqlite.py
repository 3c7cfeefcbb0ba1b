"""The embedded default store: SQLite in WAL mode through aiosqlite.

Two connections: one writer that runs transactions one at a time (SQLite has a
single writer anyway), one reader that never sees an uncommitted change. A
write-through cache of domain rows serves GetStatus without a query; it is
filled only from committed data, so it never shows what the store does not hold.

The file holds sealed keys and the KEK canary: it and its -wal/-shm files are
kept 0600, and a certificate's row (with its key) is deleted a retention after
it stopped being one of its domain's certificates (``compact_certificates``).

A database that cannot take a read or write right now (locked by another
process, disk full, I/O error) raises ``StoreUnavailable`` with a RetryInfo
delay, here and nowhere else, so callers see UNAVAILABLE and the scheduler
backs off without knowing SQLite. A failed commit is rolled back before the
next transaction starts: nothing of it can ride along with a later commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import sqlite3
import stat
import time
from collections import OrderedDict, deque
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Coroutine,
    Iterable,
    Iterator,
    Sequence,
)
from contextlib import AbstractContextManager, asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any, ParamSpec, Protocol, TypeVar

import aiosqlite
from opentelemetry import trace

from certbroker import delegation, limits
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

log = logging.getLogger(__name__)
_DOMAIN_SELECT = f"SELECT {', '.join(DOMAIN_COLUMNS)} FROM domains"  # noqa: S608
_CERT_SELECT = (
    "SELECT id, chain_pem, sans_json, subject, issuer, serial, not_before, not_after, "
    "fingerprint, key_algorithm, created_at FROM certificates"
)
# An upsert, not INSERT OR REPLACE: a replace deletes the row first, which would also
# drop its lease columns (lease_owner, lease_until), and those are not the writer's.
_PUT_DOMAIN = (
    f"INSERT INTO domains ({', '.join(DOMAIN_COLUMNS)}) "  # noqa: S608 (column names only)
    f"VALUES ({', '.join('?' for _ in DOMAIN_COLUMNS)}) ON CONFLICT (name) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in DOMAIN_COLUMNS if c != "name")
)
_CACHE_LIMIT = 200_000
# Certificate infos (chain PEM included) decoded for rows and replayed events: room for
# every cached domain's two current certificates; the least recently used go first.
_CERTIFICATE_CACHE_LIMIT = 2 * _CACHE_LIMIT
_PRIVATE = 0o600
# Event rows of this process's last commits kept for the event hub (_recent_events): it
# reads after every commit, so a few hundred cover any lag short of a stall.
_RECENT_EVENTS = 512
# How long a statement waits for another process's lock (a backup, the sqlite3 shell)
# before giving up with SQLITE_BUSY. Our own writes never wait on each other (they are
# serialised by an asyncio lock), so a longer wait only makes every queued RPC slower.
BUSY_TIMEOUT = timedelta(seconds=1)
# Every delete on the writer overwrites the deleted bytes with zeros, so a sealed key
# (a certificate's row, erased by compaction or with its domain; an order's row, dropped
# once its certificate is stored) does not linger in free pages. On for the connection's
# life: some SQLite builds (Debian's) default to it, others do not, and switching it
# off after one statement turned it off for every later delete.
_SECURE_DELETE = "PRAGMA secure_delete = ON"
# SQLite's primary result codes that mean "not now" rather than "this is a bug".
_BUSY = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}
_FULL = {sqlite3.SQLITE_FULL}
_IO = {sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_READONLY}
# The same, for errors built without a result code (sqlite3_errstr texts).
_MESSAGES = {
    "database is locked": sqlite3.SQLITE_BUSY,
    "database table is locked": sqlite3.SQLITE_LOCKED,
    "database or disk is full": sqlite3.SQLITE_FULL,
    "disk i/o error": sqlite3.SQLITE_IOERR,
}
# A domain held by one of these waits for a token (certbroker.limits), whatever its state.
_HOLD_REASONS = (
    limits.QUOTA_ACCOUNT_ORDERS,
    limits.QUOTA_REGISTERED_DOMAIN,
    limits.QUOTA_NAME_SET,
    limits.QUOTA_FAILED_AUTHORIZATIONS,
    limits.CA_RATE_LIMITED,
)
P = ParamSpec("P")
T = TypeVar("T")


def _busy() -> StoreUnavailable:
    return StoreUnavailable(
        "the database is locked by another process; try again shortly",
        reason="STORE_BUSY",
        retry_after=BUSY_TIMEOUT,
    )


def translate(error: sqlite3.Error) -> Exception:
    """SQLITE_BUSY/LOCKED, FULL and I/O errors → ``StoreUnavailable``; anything else as is."""
    code = getattr(error, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else _MESSAGES.get(str(error).lower())
    if primary in _BUSY:
        return _busy()
    if primary in _FULL:
        return StoreUnavailable(
            "the broker's database is full; try again once space is freed",
            reason="STORE_FULL",
            retry_after=timedelta(seconds=5),
        )
    if primary in _IO:
        return StoreUnavailable(
            "the broker's database cannot be read or written; try again shortly",
            reason="STORE_IO_ERROR",
            retry_after=timedelta(seconds=5),
        )
    return error


def _translated(fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Run ``fn``, raising ``translate``'s answer in place of a transient SQLite error."""

    @functools.wraps(fn)
    async def call(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except sqlite3.Error as error:
            unavailable = translate(error)
            if unavailable is error:
                raise
            raise unavailable from error

    return call


# Ids bound into one ``IN (...)``: a snapshot page's worth, far below SQLite's limit on
# bound values (999 before 3.32), so one query serves a page.
_IN_CHUNK = 500


def _chunks(ids: list[int]) -> Iterator[list[int]]:
    """``ids`` in slices of ``_IN_CHUNK``, each one ``IN (...)`` list of bound values."""
    for start in range(0, len(ids), _IN_CHUNK):
        yield ids[start : start + _IN_CHUNK]


class _Reads(Protocol):
    """A connection reads go through: aiosqlite's, or a transaction's ``_Batched``."""

    async def execute_fetchall(self, sql: str, parameters: Any = ..., /) -> Iterable[Any]: ...


def _migrations() -> list[tuple[int, str]]:
    folder = resources.files("certbroker.store") / "migrations"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.read_text()))
    return sorted(found)


def _make_private(path: str) -> None:
    """Create the database file 0600 before SQLite does (it would use 0644 less the umask).

    SQLite gives the -wal and -shm files it creates the database file's mode, so
    they follow; files left by an older version are tightened here.
    """
    folder = Path(path).parent
    if not folder.exists():
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, _PRIVATE))
    for name in (path, f"{path}-wal", f"{path}-shm"):
        try:
            mode = stat.S_IMODE(os.stat(name).st_mode)
        except FileNotFoundError:
            continue
        if not mode & 0o077:
            continue
        try:
            os.chmod(name, _PRIVATE)
        except PermissionError as error:  # not ours to change: say so, do not refuse to start
            log.warning("%s is mode %04o and cannot be made 0600: %s", name, mode, error)
        else:
            log.warning("%s was mode %04o; set to 0600 (it holds sealed keys)", name, mode)


async def _connect(path: str, isolation_level: str | None = None) -> aiosqlite.Connection:
    wait = BUSY_TIMEOUT.total_seconds()
    conn = await aiosqlite.connect(path, isolation_level=isolation_level, timeout=wait)
    conn.row_factory = aiosqlite.Row
    try:  # e.g. "file is not a database": close, or its thread keeps the process alive
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("PRAGMA synchronous=NORMAL")
        await conn.execute("PRAGMA foreign_keys=ON")
        await conn.execute(f"PRAGMA busy_timeout={int(wait * 1000)}")
    except BaseException:
        await conn.close()
        raise
    return conn


def _first(rows: Iterable[aiosqlite.Row]) -> aiosqlite.Row | None:
    """The first of ``rows`` (from ``execute_fetchall``), or None.

    Why every read here is one ``execute_fetchall``: aiosqlite runs each call as its own
    job on the connection's thread, so a cursor read as execute, fetch, close leaves its
    statement active between jobs, and SQLite keeps the connection's read snapshot while
    any statement is active: another read interleaved there (the event hub's, a revision
    check) saw the database as it was before commits that had already returned.
    """
    return next(iter(rows), None)


class SqliteStore:
    def __init__(
        self,
        writer: aiosqlite.Connection,
        reader: aiosqlite.Connection,
        certificate_cache: int = _CERTIFICATE_CACHE_LIMIT,
        raw_writer: aiosqlite.Connection | None = None,
    ) -> None:
        self._writer = writer
        # The writer itself, under any test wrapper (``wrap_writer``): for _Batched's hops.
        self._raw_writer = raw_writer or writer
        self._reader = reader
        self._write_lock = asyncio.Lock()
        self._listeners: list[Callable[[int], None]] = []
        self._domains: dict[str, Domain] = {}
        self._certificates: OrderedDict[int, CertificateInfo] = OrderedDict()
        self._certificate_cache = certificate_cache
        self._compacted: int | None = None
        # The last event rows this process committed, in revision order (_recent_events).
        self._events: deque[dict[str, Any]] = deque(maxlen=_RECENT_EVENTS)
        self._swept = False  # compact_certificates has looked for unmarked retired rows
        self._busy_failures = 0  # writes that found another process's lock, ever
        self._observer: StoreObserver | None = None
        self._tracer: trace.Tracer | None = None

    @classmethod
    async def open(
        cls,
        path: str,
        certificate_cache: int = _CERTIFICATE_CACHE_LIMIT,
        *,
        wrap_writer: Callable[[aiosqlite.Connection], aiosqlite.Connection] | None = None,
    ) -> SqliteStore:
        """Open (creating folders and a 0600 file), apply pending migrations, return the store.

        ``wrap_writer`` is a seam for fault injection (a full disk in the tests):
        it gets the migrated writer connection and returns what the store uses.
        """
        if path != ":memory:":
            await asyncio.to_thread(_make_private, path)
        writer = await _connect(path, isolation_level="DEFERRED")
        try:
            await writer.execute(_SECURE_DELETE)
            await _migrate(writer)
            reader = await _connect(path)
        except BaseException:
            await writer.close()
            raise
        return cls(
            wrap_writer(writer) if wrap_writer else writer, reader, certificate_cache, writer
        )

    async def close(self) -> None:
        await self._reader.close()
        await self._writer.close()

    def on_commit(self, listener: Callable[[int], None]) -> None:
        self._listeners.append(listener)

    def observe(self, observer: StoreObserver, tracer: trace.Tracer | None = None) -> None:
        """Tell ``observer`` of every commit from now on (``StoreObserver``); with ``tracer``,
        a write made inside a recorded trace is a ``store.write`` span of it."""
        self._observer = observer
        self._tracer = tracer

    def _span(self) -> AbstractContextManager[trace.Span | None]:
        """A ``store.write`` span inside a trace being recorded; none outside one (no orphans)."""
        if self._tracer is None or not trace.get_current_span().is_recording():
            return contextlib.nullcontext()
        return self._tracer.start_as_current_span("store.write")

    def _committed(self, tx: _SqliteTransaction, started: float, span: trace.Span | None) -> None:
        if span is not None and len(tx.written) + len(tx.removed) == 1:
            span.set_attribute("certbroker.domain", next(iter([*tx.written, *tx.removed])))
        if self._observer is None:
            return
        try:
            self._observer.committed(tx.changes(), time.perf_counter() - started)
        except Exception:  # telemetry must never undo or block a commit
            log.exception("the store observer failed")

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_SqliteTransaction]:
        started = time.perf_counter()
        with self._span() as span:
            async with self._transaction(started, span) as tx:
                yield tx

    @asynccontextmanager
    async def _transaction(
        self, started: float, span: trace.Span | None
    ) -> AsyncIterator[_SqliteTransaction]:
        busy_before = self._busy_failures
        async with self._write_lock:
            if self._busy_failures != busy_before:
                # A write in front of us just waited out the busy timeout in vain: waiting
                # the same again for each queued write made a locked database take 9.6 s
                # to answer one RPC. Say so at once; RetryInfo tells when to try again.
                raise _busy()
            # The writer connection opens its transaction implicitly with the first
            # write (sqlite3's legacy mode), saving a thread hop: every round trip
            # waits for a busy event loop, and writes are serialised behind this lock.
            tx = _SqliteTransaction(self, _Batched(self._writer, self._raw_writer))
            try:
                yield tx
                await tx.flush()
                await self._writer.commit()
            except BaseException as error:
                # A failed COMMIT (disk full, busy) leaves the transaction open: end it here,
                # or the next transaction would commit this one's writes with its own.
                with contextlib.suppress(sqlite3.Error):
                    await self._writer.rollback()
                for cert_id in tx.added_certificates:
                    self._certificates.pop(cert_id, None)  # the id is free again
                if isinstance(error, sqlite3.Error):
                    unavailable = translate(error)
                    if isinstance(unavailable, StoreUnavailable):
                        if unavailable.reason == "STORE_BUSY":
                            self._busy_failures += 1
                        raise unavailable from error
                raise
            # Still under the lock: the next transaction may read the cache as the truth.
            for name in tx.removed:
                self._domains.pop(name, None)
            for cert_id in tx.removed_certificates:
                self._certificates.pop(cert_id, None)
            if len(self._domains) > _CACHE_LIMIT:
                self._domains.clear()
            self._domains.update(tx.written)
            self._remember_events(tx.events)
            self._committed(tx, started, span)
        if tx.last_revision:
            for listener in self._listeners:
                listener(tx.last_revision)

    async def certificate(
        self,
        cert_id: int | None,
        conn: _Reads | None = None,
    ) -> CertificateInfo | None:
        if cert_id is None:
            return None
        cached = self._certificates.get(cert_id)
        if cached is not None:
            self._certificates.move_to_end(cert_id)
            return cached
        row = _first(
            await (conn or self._reader).execute_fetchall(
                f"{_CERT_SELECT} WHERE id = ?", (cert_id,)
            )
        )
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
        self, cert_ids: Collection[int], conn: _Reads | None = None
    ) -> dict[int, CertificateInfo]:
        """The certificates ``cert_ids`` name, by id: cached ones from memory, the rest in
        one query per ``_IN_CHUNK``; ids with no row are left out.

        What is read here is not added to the cache, and hits are not moved up: the
        callers are scans (a snapshot, a listing) that touch every certificate once, and
        would otherwise evict the working set and hold the whole table in memory.
        """
        found: dict[int, CertificateInfo] = {}
        missing = []
        for cert_id in cert_ids:
            cached = self._certificates.get(cert_id)
            if cached is None:
                missing.append(cert_id)
            else:
                found[cert_id] = cached
        for chunk in _chunks(missing):
            marks = ", ".join("?" for _ in chunk)
            rows = await (conn or self._reader).execute_fetchall(
                f"{_CERT_SELECT} WHERE id IN ({marks})",  # only placeholders formatted in
                chunk,
            )
            for row in rows:
                info = certificate_from_row(row)
                found[info.id] = info
        return found

    async def decode_domains(self, rows: Iterable[Any], conn: _Reads | None = None) -> list[Domain]:
        """Rows to domains, their certificates read together (``certificates``)."""
        rows = list(rows)
        wanted = {
            row[column]
            for row in rows
            for column in ("le_cert_id", "custom_cert_id")
            if row[column] is not None
        }
        found = await self.certificates(wanted, conn)
        return [domain_from_row(row, found.get) for row in rows]

    async def decode_domain(self, row: Any, conn: _Reads | None = None) -> Domain:
        # Looked up into a local map: the bounded cache may evict between the awaits.
        found = {}
        for column in ("le_cert_id", "custom_cert_id"):
            if row[column] is not None:
                found[row[column]] = await self.certificate(row[column], conn)
        return domain_from_row(row, found.get)

    def cached_domain(self, name: str) -> Domain | None:
        return self._domains.get(name)

    @_translated
    async def get_domain(self, name: str) -> Domain | None:
        cached = self._domains.get(name)
        if cached is not None:
            return cached
        row = _first(
            await self._reader.execute_fetchall(f"{_DOMAIN_SELECT} WHERE name = ?", (name,))
        )
        if row is None:
            return None
        return await self.decode_domain(row)

    @_translated
    async def list_domains(self, app: str | None, after: str, limit: int) -> list[Domain]:
        if app:
            sql = f"{_DOMAIN_SELECT} WHERE app = ? AND name > ? ORDER BY name LIMIT ?"
            params: tuple[Any, ...] = (app, after, limit)
        else:
            sql = f"{_DOMAIN_SELECT} WHERE name > ? ORDER BY name LIMIT ?"
            params = (after, limit)
        # One query for the rows and one for their certificates, however long the page:
        # a snapshot of 100,000 names pages through here.
        return await self.decode_domains(await self._reader.execute_fetchall(sql, params))

    @_translated
    async def due_domains(self, now: datetime, limit: int) -> list[Domain]:
        sql = f"{_DOMAIN_SELECT} WHERE next_run_at <= ? ORDER BY next_run_at LIMIT ?"
        rows = await self._reader.execute_fetchall(sql, (to_micros(now), limit))
        return [await self.decode_domain(row) for row in rows]

    @_translated
    async def due_names(
        self, now: datetime, limit: int, exclude: Collection[str] = ()
    ) -> list[str]:
        # Only placeholders are formatted in; the names themselves are bound.
        skip = f" AND name NOT IN ({', '.join('?' for _ in exclude)})" if exclude else ""
        sql = (
            f"SELECT name FROM domains WHERE next_run_at <= ?{skip} "  # noqa: S608
            "ORDER BY next_run_at LIMIT ?"
        )
        return [
            row[0]
            for row in await self._reader.execute_fetchall(sql, (to_micros(now), *exclude, limit))
        ]

    @_translated
    async def names_with_last_error(self, reason: str) -> list[str]:
        # A scan (no index on the reason): the scheduler asks once per start.
        sql = "SELECT name FROM domains WHERE last_error_reason = ? ORDER BY name"
        return [row[0] for row in await self._reader.execute_fetchall(sql, (reason,))]

    @_translated
    async def due_candidates(
        self, now: datetime, limit: int, exclude: Collection[str] = (), owner: str = ""
    ) -> list[Candidate]:
        # Only placeholders are formatted in; the names themselves are bound.
        skip = f" AND d.name NOT IN ({', '.join('?' for _ in exclude)})" if exclude else ""
        sql = (
            "SELECT name, app, next_run_at, not_after, tier FROM ("  # noqa: S608
            " SELECT d.name, d.app, d.next_run_at, c.not_after,"
            "  CASE WHEN d.le_cert_id IS NOT NULL THEN 0"
            "   WHEN d.letsencrypt_enabled = 1 AND (d.le_state = 'CREATING'"
            "    OR d.last_error_reason IN (?, ?, ?, ?, ?)) THEN 2 ELSE 1 END"
            "  AS tier"
            " FROM domains d LEFT JOIN certificates c ON c.id = d.le_cert_id"
            f" WHERE d.next_run_at <= ?{skip}"
            "  AND (d.lease_until IS NULL OR d.lease_until <= ? OR d.lease_owner = ?)"
            ") ORDER BY tier, CASE WHEN tier = 0 THEN not_after END,"
            " ROW_NUMBER() OVER (PARTITION BY app, tier ORDER BY next_run_at, name),"
            " next_run_at, name LIMIT ?"
        )
        at = to_micros(now)
        params = (*_HOLD_REASONS, at, *exclude, at, owner, limit)
        rows = await self._reader.execute_fetchall(sql, params)
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
        # Only placeholders are formatted in; the names themselves are bound.
        where = [f"name NOT IN ({', '.join('?' for _ in exclude)})"] if exclude else []
        params: list[object] = list(exclude)
        if after is not None:
            where.append("next_run_at > ?")
            params.append(to_micros(after))
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        sql = f"SELECT MIN(next_run_at) FROM domains{clause}"  # noqa: S608
        row = _first(await self._reader.execute_fetchall(sql, params))
        return from_micros(row[0]) if row is not None else None

    @_translated
    async def limit_spends(
        self, bucket: str, key: str, since: datetime, limit: int
    ) -> list[datetime]:
        return await _limit_spends(self._reader, bucket, key, since, limit)

    @_translated
    async def limit_spends_of(self, queries: Sequence[SpendQuery]) -> list[list[datetime]]:
        return await _limit_spends_of(self._reader, queries)

    @_translated
    async def limit_pauses(
        self, keys: Collection[tuple[str, str]], now: datetime
    ) -> dict[tuple[str, str], datetime]:
        return await _limit_pauses(self._reader, keys, now)

    @_translated
    async def events_after(self, revision: int, limit: int) -> list[Event]:
        recent = self._recent_events(revision, limit)
        if recent is not None:
            rows: Iterable[Any] = recent
        else:
            sql = (
                "SELECT revision, type, domain, payload, challenge_token, challenge_keyauth, at "
                "FROM events WHERE revision > ? ORDER BY revision LIMIT ?"
            )
            rows = await self._reader.execute_fetchall(sql, (revision, limit))
        events = []
        for row in rows:
            domain = None
            if row["payload"]:
                payload = json.loads(row["payload"])
                payload.setdefault("include_apex", 0)  # events older than migration 002
                payload.setdefault("delegation_label", "")  # and than migration 003
                payload.setdefault("forced_retry_at", None)  # and than migration 004
                payload.setdefault("ari_renew_at", None)  # and than migration 006
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

    def _recent_events(self, revision: int, limit: int) -> list[Any] | None:
        """The event rows after ``revision`` from this process's own last commits, if they
        hold the next one; else None (read the log).

        The event hub reads right after each commit that wrote events: a query for rows
        this process has just written, a thread hop each. They are kept as written (the
        same row values, decoded by the same code below), only while their revisions run
        without a gap (another process's write leaves one: the window starts afresh), and
        never past their end: what comes after the window is read from the log, so a
        short answer here is followed by a read of the file, never taken for the end.
        """
        window = self._events
        if not window or not window[0]["revision"] <= revision + 1 <= window[-1]["revision"]:
            return None
        start = revision + 1 - window[0]["revision"]
        return [window[i] for i in range(start, min(len(window), start + limit))]

    def _remember_events(self, rows: Sequence[dict[str, Any]]) -> None:
        """Keep a committed transaction's event rows for ``_recent_events`` (under the lock)."""
        for row in rows:
            if self._events and row["revision"] != self._events[-1]["revision"] + 1:
                self._events.clear()  # a gap: someone else wrote events in between
            self._events.append(row)

    @_translated
    async def current_revision(self) -> int:
        row = _first(
            await self._reader.execute_fetchall(
                "SELECT seq FROM sqlite_sequence WHERE name = 'events'"
            )
        )
        return int(row[0]) if row is not None else 0

    async def compacted_through(self) -> int:
        if self._compacted is None:  # read once; compact_events keeps it current
            raw = await self.get_meta("compacted_through")
            self._compacted = int(raw.decode()) if raw else 0
        return self._compacted

    @asynccontextmanager
    async def _immediate(self) -> AsyncIterator[None]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` on the writer, under the write lock.

        Whatever ends the block early (an error, or the compactor cancelled at
        shutdown, even while ``BEGIN`` itself is in flight on aiosqlite's thread)
        ends in a rollback queued behind it, so no transaction outlives the lock.
        The driver's ``rollback()`` does nothing when no transaction is open, unlike
        a ``ROLLBACK`` statement ("cannot rollback - no transaction is active").
        """
        async with self._write_lock:
            try:
                await self._writer.execute("BEGIN IMMEDIATE")
                yield
                await self._writer.commit()
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    await self._writer.rollback()
                raise

    @_translated
    async def compact_events(self, before: datetime) -> int:
        """Drop events older than ``before``; the newest stays so revisions keep growing."""
        through: int | None = None
        deleted = 0
        async with self._immediate():
            row = _first(
                await self._writer.execute_fetchall(
                    "SELECT MAX(revision) FROM events WHERE at < ? AND revision < "
                    "(SELECT MAX(revision) FROM events)",
                    (to_micros(before),),
                )
            )
            through = row[0] if row is not None else None
            if through is not None:
                cur2 = await self._writer.execute(
                    "DELETE FROM events WHERE revision <= ?", (through,)
                )
                deleted = cur2.rowcount
                await self._writer.execute(
                    "INSERT INTO meta (key, value) VALUES ('compacted_through', ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (str(through).encode(),),
                )
        if through is None:
            return 0
        self._compacted = int(through)
        while self._events and self._events[0]["revision"] <= through:
            self._events.popleft()  # as the log: compacted events are gone
        return int(deleted)

    @_translated
    async def compact_certificates(self, before: datetime, now: datetime) -> int:
        """Delete certificates, with their sealed keys, retired before ``before``.

        Retired: no longer the domain's Let's Encrypt or custom certificate (the one
        serving, or the warm standby), so nothing will serve it again. A row also
        waits until every watch event from before its retirement is compacted: a
        router resuming there would be told to serve it. Rows no domain names but
        not marked yet (kept by an older version) start their retention at the first
        run after each start.
        """
        async with self._immediate():
            if not self._swept:  # once per start: every certificate row is visited
                await self._mark_unnamed(now)
            row = _first(
                await self._writer.execute_fetchall(
                    "SELECT value FROM meta WHERE key = 'compacted_through'"
                )
            )
            compacted = int(bytes(row[0]).decode()) if row is not None else 0
            # zeroed in the file: see _SECURE_DELETE
            gone = [
                int(r[0])
                for r in await self._writer.execute_fetchall(
                    "DELETE FROM certificates WHERE retired_at < ? AND retired_revision <= ? "
                    "RETURNING id",
                    (to_micros(before), compacted + 1),
                )
            ]
        self._swept = True
        for cert_id in gone:
            self._certificates.pop(cert_id, None)
        return len(gone)

    async def _mark_unnamed(self, now: datetime) -> None:
        """Retire, as of ``now``, rows no domain names that carry no mark (an older version's)."""
        row = _first(await self._writer.execute_fetchall("SELECT MAX(revision) FROM events"))
        newest = row[0] if row is not None and row[0] is not None else 0
        await self._writer.execute(
            "UPDATE certificates SET retired_at = ?, retired_revision = ? "
            "WHERE retired_at IS NULL AND NOT EXISTS (SELECT 1 FROM domains d "
            "WHERE d.name = certificates.domain "
            "AND certificates.id IN (d.le_cert_id, d.custom_cert_id))",
            # a domain's newest event names only what its row names, so any event that
            # may name one of these is older than the newest event overall
            (to_micros(now), newest),
        )

    @_translated
    async def load_key(self, certificate_id: int) -> bytes | None:
        row = _first(
            await self._reader.execute_fetchall(
                "SELECT key_sealed FROM certificates WHERE id = ?", (certificate_id,)
            )
        )
        return bytes(row[0]) if row is not None else None

    @_translated
    async def load_keys(self, certificate_ids: Collection[int]) -> dict[int, bytes]:
        """The sealed keys of ``certificate_ids`` by id, one query per ``_IN_CHUNK``."""
        found: dict[int, bytes] = {}
        for chunk in _chunks(list(certificate_ids)):
            marks = ", ".join("?" for _ in chunk)
            rows = await self._reader.execute_fetchall(
                f"SELECT id, key_sealed FROM certificates WHERE id IN ({marks})",  # noqa: S608
                chunk,
            )
            found.update((int(row[0]), bytes(row[1])) for row in rows)
        return found

    @_translated
    async def get_order(self, domain: str) -> PendingOrder | None:
        return await _get_order(self._reader, domain)

    @_translated
    async def get_meta(self, key: str) -> bytes | None:
        row = _first(
            await self._reader.execute_fetchall("SELECT value FROM meta WHERE key = ?", (key,))
        )
        return bytes(row[0]) if row is not None else None

    @_translated
    async def names_issued_since(self, names: tuple[str, ...], since: datetime) -> bool:
        return await _names_issued_since(self._reader, names, since)

    # -- claims and leases: the same semantics as PostgreSQL's, under the single writer --

    async def _write(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        """One statement in a transaction of its own, behind the one writer; its rows."""
        async with self._write_lock:
            try:
                rows = list(await self._writer.execute_fetchall(sql, params))
                await self._writer.commit()
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    await self._writer.rollback()
                raise
        return rows

    @_translated
    async def claim_due(
        self, owner: str, names: Sequence[str], now: datetime, lease: timedelta
    ) -> list[str]:
        if not names:
            return []
        at = to_micros(now)
        marks = ", ".join("?" for _ in names)
        rows = await self._write(
            "UPDATE domains SET lease_owner = ?, lease_until = ? "  # noqa: S608
            f"WHERE name IN ({marks}) AND next_run_at <= ? "
            "AND (lease_until IS NULL OR lease_until <= ? OR lease_owner = ?) RETURNING name",
            (owner, to_micros(now + lease), *names, at, at, owner),
        )
        granted = {row[0] for row in rows}
        return [name for name in names if name in granted]

    @_translated
    async def renew_leases(
        self, owner: str, names: Collection[str], now: datetime, lease: timedelta
    ) -> list[str]:
        if not names:
            return []
        marks = ", ".join("?" for _ in names)
        rows = await self._write(
            f"UPDATE domains SET lease_until = ? WHERE name IN ({marks}) "  # noqa: S608
            "AND lease_owner = ? RETURNING name",
            (to_micros(now + lease), *names, owner),
        )
        return [row[0] for row in rows]

    @_translated
    async def release(self, owner: str, names: Collection[str]) -> None:
        if names:
            marks = ", ".join("?" for _ in names)
            await self._write(
                "UPDATE domains SET lease_owner = '', lease_until = NULL "  # noqa: S608
                f"WHERE name IN ({marks}) AND lease_owner = ?",
                (*names, owner),
            )

    @_translated
    async def next_claim_time(
        self,
        owner: str,
        now: datetime,
        exclude: Collection[str] = (),
        after: datetime | None = None,
    ) -> datetime | None:
        skip = f" AND name NOT IN ({', '.join('?' for _ in exclude)})" if exclude else ""
        later = " AND next_run_at > ?" if after is not None else ""
        at = to_micros(now)
        sql = (
            "SELECT (SELECT next_run_at FROM domains WHERE next_run_at IS NOT NULL "  # noqa: S608
            f"AND (lease_until IS NULL OR lease_until <= ? OR lease_owner = ?){skip}{later} "
            "ORDER BY next_run_at LIMIT 1), "
            "(SELECT MIN(lease_until) FROM domains WHERE lease_until > ? AND lease_owner != ? "
            f"AND next_run_at IS NOT NULL{skip})"
        )
        first = (at, owner, *exclude, *([to_micros(after)] if after is not None else []))
        row = _first(await self._reader.execute_fetchall(sql, (*first, at, owner, *exclude)))
        times = [t for t in (row[0], row[1]) if t is not None] if row is not None else []
        return from_micros(min(times)) if times else None

    @_translated
    async def take_lease(self, name: str, owner: str, now: datetime, lease: timedelta) -> bool:
        rows = await self._write(
            "INSERT INTO leases (name, owner, expires_at) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, "
            "expires_at = excluded.expires_at "
            "WHERE leases.expires_at <= ? OR leases.owner = excluded.owner RETURNING owner",
            (name, owner, to_micros(now + lease), to_micros(now)),
        )
        return bool(rows)

    @_translated
    async def drop_lease(self, name: str, owner: str) -> None:
        await self._write("DELETE FROM leases WHERE name = ? AND owner = ?", (name, owner))

    @_translated
    async def lease_owners(self, prefix: str, now: datetime) -> list[str]:
        return [
            row[0]
            for row in await self._reader.execute_fetchall(
                "SELECT owner FROM leases WHERE substr(name, 1, ?) = ? AND expires_at > ? "
                "ORDER BY owner",
                (len(prefix), prefix, to_micros(now)),
            )
        ]

    @_translated
    async def put_challenge(
        self, token: str, key_authorization: str, owner: str, expires: datetime
    ) -> None:
        await self._write(
            "INSERT INTO challenges (token, owner, key_authorization, expires_at) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (token, owner) DO UPDATE SET "
            "key_authorization = excluded.key_authorization, expires_at = excluded.expires_at",
            (token, owner, key_authorization, to_micros(expires)),
        )

    @_translated
    async def remove_challenge(self, token: str, owner: str) -> None:
        await self._write("DELETE FROM challenges WHERE token = ? AND owner = ?", (token, owner))

    @_translated
    async def get_challenge(self, token: str, now: datetime) -> str | None:
        row = _first(
            await self._reader.execute_fetchall(
                "SELECT key_authorization FROM challenges WHERE token = ? AND expires_at > ? "
                "LIMIT 1",
                (token, to_micros(now)),
            )
        )
        return str(row[0]) if row is not None else None

    @_translated
    async def purge_expired(self, now: datetime) -> int:
        at = to_micros(now)
        async with self._write_lock:
            try:
                first = await self._writer.execute(
                    "DELETE FROM challenges WHERE expires_at <= ?", (at,)
                )
                second = await self._writer.execute(
                    "DELETE FROM leases WHERE expires_at <= ?", (at,)
                )
                await self._writer.commit()
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    await self._writer.rollback()
                raise
        return int(first.rowcount) + int(second.rowcount)


async def _names_issued_since(conn: _Reads, names: tuple[str, ...], since: datetime) -> bool:
    return (
        _first(
            await conn.execute_fetchall(
                "SELECT 1 FROM issuances WHERE names_key = ? AND issued_at > ? LIMIT 1",
                (names_key(names), to_micros(since)),
            )
        )
        is not None
    )


async def _migrate(conn: aiosqlite.Connection) -> None:
    """Apply the numbered ``migrations/*.sql`` not applied yet, each in its own transaction.

    Functions a migration needs that SQLite lacks are registered here, in Python,
    for the migrations only (so no schema object ever depends on them).
    """
    await conn.create_function(
        "certbroker_legacy_label", 1, delegation.legacy_label, deterministic=True
    )
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version INTEGER PRIMARY KEY, applied_at TEXT)"
    )
    applied = {
        row[0] for row in await conn.execute_fetchall("SELECT version FROM schema_migrations")
    }
    for version, sql in _migrations():
        if version in applied:
            continue
        log.info("applying migration %03d", version)
        await conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in sql.split(";\n"):
                if statement.strip():
                    await conn.execute(statement)
            await conn.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?, datetime('now'))",
                (version,),
            )
        except BaseException:
            await conn.execute("ROLLBACK")
            raise
        await conn.execute("COMMIT")


async def _limit_spends(
    conn: _Reads, bucket: str, key: str, since: datetime, limit: int
) -> list[datetime]:
    cutoff = to_micros(since)
    assert cutoff is not None
    rows = await conn.execute_fetchall(
        "SELECT at FROM limit_spends WHERE bucket = ? AND key = ? AND at >= COALESCE("
        " (SELECT MAX(at) FROM limit_spends WHERE bucket = ? AND key = ? AND at <= ?), ?)"
        " ORDER BY at DESC LIMIT ?",
        (bucket, key, bucket, key, cutoff, cutoff + 1, limit),
    )
    return [must_time(row[0]) for row in reversed(list(rows))]


# One bucket's spends as ``_limit_spends`` reads them, tagged with its place in the batch.
_SPENDS_PART = (
    "SELECT * FROM (SELECT ? AS i, at FROM limit_spends WHERE bucket = ? AND key = ? "
    "AND at >= COALESCE((SELECT MAX(at) FROM limit_spends WHERE bucket = ? AND key = ? "
    "AND at <= ?), ?) ORDER BY at DESC LIMIT ?)"
)


async def _limit_spends_of(conn: _Reads, queries: Sequence[SpendQuery]) -> list[list[datetime]]:
    """``_limit_spends`` of each query in one statement (UNION ALL of the same selects)."""
    if not queries:
        return []
    params: list[Any] = []
    for i, (bucket, key, since, limit) in enumerate(queries):
        cutoff = to_micros(since)
        assert cutoff is not None
        params += [i, bucket, key, bucket, key, cutoff, cutoff + 1, limit]
    sql = " UNION ALL ".join(_SPENDS_PART for _ in queries)
    found: list[list[datetime]] = [[] for _ in queries]
    for row in await conn.execute_fetchall(sql, params):
        found[row[0]].append(must_time(row[1]))
    for times in found:
        times.reverse()  # each part came newest first (its LIMIT keeps the newest)
    return found


async def _limit_pauses(
    conn: _Reads, keys: Collection[tuple[str, str]], now: datetime
) -> dict[tuple[str, str], datetime]:
    pairs = list(dict.fromkeys(keys))
    if not pairs:
        return {}
    # Only placeholders are formatted in; the keys themselves are bound.
    values = ", ".join("(?, ?)" for _ in pairs)
    rows = await conn.execute_fetchall(
        "SELECT bucket, key, until FROM limit_pauses WHERE until > ? "  # noqa: S608
        f"AND (bucket, key) IN (VALUES {values})",
        (to_micros(now), *(part for pair in pairs for part in pair)),
    )
    return {(row[0], row[1]): must_time(row[2]) for row in rows}


async def _get_order(conn: _Reads, domain: str) -> PendingOrder | None:
    row = _first(
        await conn.execute_fetchall(
            "SELECT domain, registered_domain, names_json, key_sealed, order_url, started_at "
            "FROM orders WHERE domain = ?",
            (domain,),
        )
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


@dataclass(frozen=True)
class _Outcome:
    """What a statement run on the writer's thread left: its rows, id and count."""

    rows: list[Any]
    lastrowid: int | None
    rowcount: int


_Statement = tuple[str, Sequence[Any]]


#: Statements to run right after one whose outcome they need (its id): ``_Batched.run``.
_Then = Callable[[_Outcome], list[_Statement]]


def _run_batch(
    db: sqlite3.Connection, pending: list[_Statement], last: _Statement, then: _Then | None
) -> _Outcome:
    """On the writer's thread: ``pending`` in order, then ``last``, whose outcome it
    returns, then what ``then`` makes of that outcome."""
    for sql, params in pending:
        db.execute(sql, params)
    cursor = db.execute(*last)
    try:
        outcome = _Outcome(cursor.fetchall(), cursor.lastrowid, cursor.rowcount)
    finally:
        cursor.close()
    for sql, params in then(outcome) if then is not None else ():
        db.execute(sql, params)
    return outcome


class _Batched:
    """The writer connection as a transaction uses it: writes whose outcome nobody reads
    (the domain row after its event, a spend, an order row, an issuance…) are kept
    (``defer``) and run on the writer's thread together with the next statement that
    must answer (its event's id, a read) or before the commit: ONE hop for all of them
    instead of one each (a hop is a queue put, a thread switch and a wake-up of a busy
    event loop, ~90 µs; the statements themselves take a few µs).

    Nothing changes but when a statement crosses to the thread: the same statements in
    the same order on the same connection, each read seeing every write before it, all
    in the one transaction that commits or rolls back whole (a failing deferred write
    fails the statement it rides with, inside the transaction, which then rolls back).
    ``execute`` is the plain path, after the deferred writes: for statements a test
    wrapper of the writer must see (``wrap_writer``: a certificate's insert).

    The batch goes through aiosqlite's queue (``Connection._execute``, the function its
    own methods use) on the unwrapped writer, so it is ordered with everything else
    queued on that connection.
    """

    def __init__(self, conn: aiosqlite.Connection, raw: aiosqlite.Connection) -> None:
        self._conn = conn
        self._raw = raw
        self._pending: list[_Statement] = []

    def defer(self, sql: str, params: Sequence[Any]) -> None:
        self._pending.append((sql, params))

    async def run(
        self, sql: str, params: Sequence[Any] = (), then: _Then | None = None
    ) -> _Outcome:
        """``sql`` after the deferred writes, in one hop; ``then``: statements made from its
        outcome (run on the thread, right after it: pure, no I/O of their own), in the same hop.
        """
        pending, self._pending = self._pending, []
        raw = self._raw
        result: _Outcome = await raw._execute(  # type: ignore[no-untyped-call]
            lambda: _run_batch(raw._conn, pending, (sql, params), then)
        )
        return result

    async def execute_fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return (await self.run(sql, params)).rows

    async def flush(self) -> None:
        """Run the deferred writes now (before a commit, or a statement on the plain path)."""
        if self._pending:
            last = self._pending.pop()
            await self.run(*last)

    async def execute(self, sql: str, params: Sequence[Any]) -> aiosqlite.Cursor:
        """The plain path: the deferred writes first, then ``sql`` through the connection."""
        await self.flush()
        return await self._conn.execute(sql, params)


class _SqliteTransaction:
    def __init__(self, store: SqliteStore, conn: _Batched) -> None:
        self._store = store
        self._conn = conn
        self.written: dict[str, Domain] = {}
        self.removed: set[str] = set()
        self.removed_certificates: set[int] = set()
        self.added_certificates: set[int] = set()
        self.last_revision = 0
        self.events: list[dict[str, Any]] = []  # rows appended, as events_after reads them
        # Each domain as committed before this transaction (first read), for ``changes``.
        self.before: dict[str, Domain | None] = {}

    async def flush(self) -> None:
        """Run the deferred writes (``_Batched``): the store calls it before committing."""
        await self._conn.flush()

    async def get_domain(self, name: str) -> Domain | None:
        if name in self.written:
            return self.written[name]
        if name in self.removed:
            return None
        # The cache is committed, and no other writer runs while we hold the lock.
        found = self._store.cached_domain(name)
        if found is None:
            row = _first(
                await self._conn.execute_fetchall(f"{_DOMAIN_SELECT} WHERE name = ?", (name,))
            )
            found = None if row is None else await self._store.decode_domain(row, self._conn)
        self.before.setdefault(name, found)
        return found

    async def _remember(self, name: str) -> None:
        """Every path reads a domain before writing it; this covers one that did not."""
        if name not in self.before and name not in self.written and name not in self.removed:
            await self.get_domain(name)

    def changes(self) -> list[Change]:
        """What this transaction did to domains, each once (added then removed: nothing)."""
        found = [Change(self.before.get(name), after) for name, after in self.written.items()]
        for name in self.removed:
            before = self.before.get(name)
            if before is not None:
                found.append(Change(before, None))
        return found

    async def _append_event(
        self,
        event: EventType,
        name: str,
        payload: str | None,
        at: datetime,
        token: str = "",
        key_authorization: str = "",
        then: _Then | None = None,
    ) -> int:
        cur = await self._conn.run(
            "INSERT INTO events (type, domain, payload, challenge_token, challenge_keyauth, at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (event.value, name, payload, token, key_authorization, to_micros(at)),
            then,
        )
        revision = cur.lastrowid
        assert revision is not None
        self.last_revision = revision
        self.events.append(
            {
                "revision": revision,
                "type": event.value,
                "domain": name,
                "payload": payload,
                "challenge_token": token,
                "challenge_keyauth": key_authorization,
                "at": to_micros(at),
            }
        )
        return revision

    async def put_domain(
        self, domain: Domain, event: EventType = EventType.DOMAIN_UPDATED
    ) -> Domain:
        # The payload leaves the revision out (it is the event's own id, filled in when
        # read), so the event is one INSERT: writes are serialised, round trips count.
        await self._remember(domain.name)
        payload = json.dumps(domain_to_row(_with_revision(domain, 0)))
        retire = self._retires(domain)

        def row_and_retire(event_row: _Outcome) -> list[_Statement]:
            # The row carries its event's id as revision: written in the event's hop.
            assert event_row.lastrowid is not None
            row = domain_to_row(_with_revision(domain, event_row.lastrowid))
            written: list[_Statement] = [(_PUT_DOMAIN, tuple(row[c] for c in DOMAIN_COLUMNS))]
            if retire is not None:
                written.append(retire(event_row.lastrowid))
            return written

        revision = await self._append_event(
            event, domain.name, payload, domain.updated_at, then=row_and_retire
        )
        stored = _with_revision(domain, revision)
        self.written[domain.name] = stored
        self.removed.discard(domain.name)
        return stored

    def _retires(self, domain: Domain) -> Callable[[int], _Statement] | None:
        """The statement (given the write's revision) that marks the certificates this
        write stops naming: their keys' retention starts now.

        None when the previous row is known (cached) and named no other certificate,
        so an ordinary write costs no extra statement.
        """
        kept = [c.id for c in (domain.le_cert, domain.custom_cert) if c is not None]
        previous = self.written.get(domain.name) or (
            None if domain.name in self.removed else self._store.cached_domain(domain.name)
        )
        if previous is not None and all(
            c.id in kept for c in (previous.le_cert, previous.custom_cert) if c is not None
        ):
            return None
        first, second = (*kept, 0, 0)[:2]  # ids start at 1: 0 names nothing
        at, name = to_micros(domain.updated_at), domain.name
        return lambda revision: (
            "UPDATE certificates SET retired_at = ?, retired_revision = ? "
            "WHERE domain = ? AND retired_at IS NULL AND id NOT IN (?, ?)",
            (at, revision, name, first, second),
        )

    async def put_schedule(self, domain: Domain) -> Domain:
        # Only the columns a re-check moves (see lifecycle.worth_an_event); the row keeps
        # its revision, since no event was added, and names the same certificates.
        await self._remember(domain.name)
        assigns = ", ".join(f"{c} = ?" for c in SCHEDULE_COLUMNS)
        row = domain_to_row(domain)
        self._conn.defer(
            f"UPDATE domains SET {assigns} WHERE name = ?",  # noqa: S608
            (*(row[c] for c in SCHEDULE_COLUMNS), domain.name),
        )
        self.written[domain.name] = domain
        return domain

    async def delete_domain(self, domain: Domain) -> int:
        await self._remember(domain.name)
        revision = await self._append_event(
            EventType.DOMAIN_REMOVED,
            domain.name,
            json.dumps(domain_to_row(_with_revision(domain, domain.revision))),
            domain.updated_at,
        )
        self._conn.defer("DELETE FROM domains WHERE name = ?", (domain.name,))
        self._conn.defer("DELETE FROM orders WHERE domain = ?", (domain.name,))
        self.removed_certificates.update(
            row[0]
            for row in await self._conn.execute_fetchall(
                "SELECT id FROM certificates WHERE domain = ?", (domain.name,)
            )
        )
        self._conn.defer("DELETE FROM certificates WHERE domain = ?", (domain.name,))
        self.written.pop(domain.name, None)
        self.removed.add(domain.name)
        return revision

    async def keep_backoff(self, name: str, app: str, retry: RetryState, now: datetime) -> None:
        assert retry.next_attempt_at is not None
        until = to_micros(retry.next_attempt_at)
        # What has run out goes (indexed): the table holds only names backing off now.
        self._conn.defer(
            "DELETE FROM removed_backoff WHERE next_attempt_at <= ?", (to_micros(now),)
        )
        self._conn.defer(
            "INSERT OR REPLACE INTO removed_backoff (name, app, attempt, next_attempt_at, "
            "last_error_reason, last_error_message, last_error_at, forced_retry_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                name,
                app,
                retry.attempt,
                until,
                retry.last_error_reason,
                retry.last_error_message,
                to_micros(retry.last_error_at),
                to_micros(retry.forced_at),
            ),
        )

    async def take_backoff(self, name: str, now: datetime) -> tuple[str, RetryState] | None:
        row = _first(
            await self._conn.execute_fetchall(
                "DELETE FROM removed_backoff WHERE name = ? RETURNING app, attempt, "
                "next_attempt_at, last_error_reason, last_error_message, last_error_at, "
                "forced_retry_at",
                (name,),
            )
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
        cur = await self._conn.execute(
            "INSERT INTO certificates (domain, source, chain_pem, key_sealed, sans_json, subject, "
            "issuer, serial, not_before, not_after, fingerprint, key_algorithm, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
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
            ),
        )
        assert cur.lastrowid is not None
        # what a reload gives back: created_at is the receipt time (notBefore if unknown)
        stored = replace(info, id=cur.lastrowid, received_at=info.received_at or info.not_before)
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
        self._conn.defer(
            "INSERT INTO issuances (domain, registered_domain, names_key, serial, issued_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (domain, registered_domain, names_key(names), serial, to_micros(at)),
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
        self._conn.defer(
            "INSERT INTO limit_spends (bucket, key, domain, at) VALUES (?, ?, ?, ?)",
            (bucket, key, domain, to_micros(at)),
        )

    async def refund_limit_spends(self, domain: str, buckets: Collection[str]) -> int:
        kinds = list(buckets)
        if not kinds:
            return 0
        # Only placeholders are formatted in; the bucket names themselves are bound.
        marks = ", ".join("?" for _ in kinds)
        cur = await self._conn.run(
            f"DELETE FROM limit_spends WHERE domain = ? AND bucket IN ({marks}) "  # noqa: S608
            "AND at > COALESCE((SELECT MAX(issued_at) FROM issuances WHERE domain = ?), -1)",
            (domain, *kinds, domain),
        )
        return int(cur.rowcount)

    async def pause_limit(self, bucket: str, key: str, until: datetime) -> None:
        self._conn.defer(
            "INSERT INTO limit_pauses (bucket, key, until) VALUES (?, ?, ?) "
            "ON CONFLICT (bucket, key) DO UPDATE SET until = MAX(until, excluded.until)",
            (bucket, key, to_micros(until)),
        )

    async def prune_limit_records(self, before: datetime) -> int:
        cutoff = to_micros(before)
        spends = await self._conn.run("DELETE FROM limit_spends WHERE at < ?", (cutoff,))
        pauses = await self._conn.run("DELETE FROM limit_pauses WHERE until < ?", (cutoff,))
        return int(spends.rowcount) + int(pauses.rowcount)

    async def get_order(self, domain: str) -> PendingOrder | None:
        return await _get_order(self._conn, domain)

    async def put_order(self, order: PendingOrder) -> None:
        self._conn.defer(
            "INSERT OR REPLACE INTO orders (domain, registered_domain, names_key, names_json, "
            "key_sealed, order_url, started_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                order.domain,
                order.registered_domain,
                names_key(order.names),
                json.dumps(list(order.names)),
                order.key_sealed,
                order.order_url,
                to_micros(order.started_at),
            ),
        )

    async def delete_order(self, domain: str) -> None:
        self._conn.defer("DELETE FROM orders WHERE domain = ?", (domain,))

    async def add_challenge_event(
        self, domain: str, event: EventType, token: str, key_authorization: str, at: datetime
    ) -> int:
        return await self._append_event(event, domain, None, at, token, key_authorization)

    async def domains_under(self, base: str, other_than_app: str) -> list[Domain]:
        # A scan (no index finds names by suffix); only adding a wildcard asks.
        suffix = f".{base}"
        rows = await self._conn.execute_fetchall(
            f"{_DOMAIN_SELECT} WHERE app != ? AND substr(name, -?) = ?",
            (other_than_app, len(suffix), suffix),
        )
        # This connection sees the transaction's own writes: nothing to merge.
        return [await self._store.decode_domain(row, self._conn) for row in rows]

    async def family_rows(
        self, names: Sequence[str], covered_by: str | None, other_than_app: str, limit: int
    ) -> list[Domain]:
        # One query, each part an index search: the primary key, and domains_exact_parent
        # as the two ranges of app around the caller's, each in index order (an app's own
        # rows under covered_by are never walked; the ORDER BY keeps a planner with
        # statistics off a scan that a LIMIT makes look cheap). Sees this transaction's writes.
        parts: list[str] = []
        params: list[Any] = []
        if names:
            marks = ", ".join("?" for _ in names)
            parts.append(f"{_DOMAIN_SELECT} WHERE app != ? AND name IN ({marks})")
            params += [other_than_app, *names]
        if covered_by is not None:
            for side in ("app > ? ORDER BY app", "app < ? ORDER BY app DESC"):
                parts.append(
                    f"SELECT * FROM ({_DOMAIN_SELECT} WHERE exact_parent = ? "  # noqa: S608
                    f"AND {side} LIMIT ?)"
                )
                params += [covered_by, other_than_app, limit]
        if not parts:
            return []
        rows = await self._conn.execute_fetchall(" UNION ALL ".join(parts), params)
        found = [await self._store.decode_domain(row, self._conn) for row in rows]
        return in_family_order(found, names, limit)

    async def ensure_meta(self, key: str, value: bytes) -> bytes:
        self._conn.defer(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
            (key, value),
        )
        row = _first(
            await self._conn.execute_fetchall("SELECT value FROM meta WHERE key = ?", (key,))
        )
        assert row is not None
        return bytes(row[0])

    async def set_meta(self, key: str, value: bytes) -> None:
        self._conn.defer(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    async def lease_holder(self, name: str, now: datetime) -> str | None:
        row = _first(
            await self._conn.execute_fetchall(
                "SELECT lease_owner FROM domains WHERE name = ? AND lease_until > ?",
                (name, to_micros(now)),
            )
        )
        return None if row is None or not row[0] else str(row[0])


def _with_revision(domain: Domain, revision: int) -> Domain:
    return replace(domain, revision=revision)
