"""Which brokers serve a PostgreSQL database right now: a shared advisory lock each holds.

Why: ``certbroker rotate-kek`` must not re-seal keys under a KEK that a running
broker does not hold (it could no longer open them), and several brokers share
one PostgreSQL database, so the SQLite rule (an ``flock`` on ``DB.lock``) has no
file to lock. The PostgreSQL equivalent: every serving broker holds
``pg_advisory_lock_shared(SERVING_LOCK)`` on a connection of its own for as long
as it runs; the rotation takes the same key *exclusively* inside its one
transaction (``pg_try_advisory_xact_lock``), so

- it is refused while any broker runs, and the refusal names each one from
  ``pg_stat_activity`` (the connection's ``application_name`` carries the
  broker id, its address and since when it is connected);
- a broker starting while a rotation runs is refused (it would read the old
  KEK canary and then meet keys it cannot open);
- a broker that dies (even ``kill -9``) drops its connection and the server
  drops the lock with it: no stale mark, no clock, no lease to wait out.

Advisory locks live in the server's memory, not in tables: they are never in
a dump, a restore or a replica. If the connection is lost while the broker
runs, the broker takes the lock again and re-checks its KEK against the
database's canary (a rotation may have run in the gap); see ``ServingMark``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg

log = logging.getLogger(__name__)

#: pg_advisory_lock key (one bigint): "certserv". Distinct from the migration lock.
SERVING_LOCK = 0x6365727473657276
APPLICATION_PREFIX = "certbroker serve "
CONNECT_TIMEOUT = 10.0
PING_INTERVAL = 10.0  # seconds between checks that the holding connection still lives
_NAMEDATALEN = 63  # PostgreSQL truncates application_name to this many bytes


class RotationRunning(Exception):
    """A KEK rotation holds the lock exclusively: a broker may not start now."""


@dataclass(frozen=True)
class ServingBroker:
    """A session holding the serving lock, as ``pg_stat_activity`` shows it."""

    application_name: str
    client: str  # address:port, or "local socket" / "unknown"
    since: str  # backend start, ISO 8601

    @property
    def broker_id(self) -> str:
        name = self.application_name
        return name[len(APPLICATION_PREFIX) :] if name.startswith(APPLICATION_PREFIX) else name

    def describe(self) -> str:
        return f"{self.broker_id or 'unnamed'} (from {self.client}, connected since {self.since})"


def application_name(owner: str) -> str:
    """The ``application_name`` a broker's holding connection carries (fits NAMEDATALEN)."""
    return (APPLICATION_PREFIX + owner).encode()[:_NAMEDATALEN].decode(errors="ignore")


async def serving_brokers(conn: Any) -> list[ServingBroker]:
    """Every other session that holds the serving lock (granted), oldest first."""
    rows = await conn.fetch(
        "SELECT a.application_name, host(a.client_addr) AS addr, a.client_port, "
        "to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS since "
        "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.database = "
        "(SELECT oid FROM pg_database WHERE datname = current_database()) "
        "AND ((l.classid::bigint << 32) | l.objid::bigint) = $1 AND l.objsubid = 1 "
        "AND l.pid <> pg_backend_pid() ORDER BY a.backend_start",
        SERVING_LOCK,
    )
    found = []
    for row in rows:
        if row["addr"] is not None:
            client = f"{row['addr']}:{row['client_port']}"
        elif row["client_port"] == -1:
            client = "local socket"
        else:
            client = "unknown"  # another role's session, without pg_read_all_stats
        found.append(ServingBroker(row["application_name"] or "", client, row["since"] or "?"))
    return found


class ServingMark:
    """This broker's hold on the serving lock; ``stop()`` lets go.

    ``check`` runs after the lock is taken again on a new connection (the old one
    was lost): it raises if the database's KEK changed meanwhile (a rotation ran in
    the gap, which the lock could not refuse). Then ``failed`` is set with the
    reason in ``failure``: the broker must stop rather than serve on, since it seals
    new keys with a KEK the operator is about to retire and opens none of the
    re-sealed ones.
    """

    def __init__(
        self,
        dsn: str,
        owner: str,
        conn: asyncpg.Connection[asyncpg.Record],
        check: Callable[[], Awaitable[None]],
        *,
        ping_interval: float = PING_INTERVAL,
    ) -> None:
        self._dsn = dsn
        self._owner = owner
        self._conn: asyncpg.Connection[asyncpg.Record] | None = conn
        self._check = check
        self._ping = ping_interval
        self._task: asyncio.Task[None] | None = None
        self.failed = asyncio.Event()
        self.failure = ""

    @classmethod
    async def take(
        cls,
        dsn: str,
        owner: str,
        check: Callable[[], Awaitable[None]],
        *,
        ping_interval: float = PING_INTERVAL,
    ) -> ServingMark:
        """Hold the lock; ``RotationRunning`` if a KEK rotation holds it now."""
        conn = await _hold(dsn, owner)
        mark = cls(dsn, owner, conn, check, ping_interval=ping_interval)
        mark._task = asyncio.create_task(mark._keep(), name="serving-mark")
        return mark

    async def _keep(self) -> None:
        """Ping the holding connection; when it is gone, hold the lock again on a new one."""
        while True:
            await asyncio.sleep(self._ping)
            conn = self._conn
            try:
                if conn is None or conn.is_closed():
                    raise ConnectionError("closed")
                await conn.fetchval("SELECT 1", timeout=self._ping)
                continue
            except Exception as error:  # any failure: take the lock again
                log.warning(
                    "lost the PostgreSQL serving-lock connection (%s); taking it again", error
                )
                if conn is not None:
                    conn.terminate()
                self._conn = None
            await self._regain()

    async def _regain(self) -> None:
        delay = 1.0
        while self._conn is None:
            try:
                self._conn = await _hold(self._dsn, self._owner)
            except RotationRunning:
                log.warning("a KEK rotation is running on the database; waiting for it to end")
            except Exception as error:  # database away: keep trying
                log.warning("cannot take the serving lock again: %s", error)
            if self._conn is None:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        log.info("holding the PostgreSQL serving lock again")
        try:
            await self._check()
        except Exception as error:  # said loudly; the broker stops (``failed``)
            log.error("%s", error)
            self.failure = " ".join(str(error).split()) or type(error).__name__
            self.failed.set()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await asyncio.wait_for(conn.close(), 5)  # the session ends: the lock goes
            except Exception:
                conn.terminate()


async def _hold(dsn: str, owner: str) -> asyncpg.Connection[asyncpg.Record]:
    conn = await asyncpg.connect(
        dsn,
        timeout=CONNECT_TIMEOUT,
        server_settings={
            "application_name": application_name(owner),
            "tcp_keepalives_idle": "30",
            "tcp_keepalives_interval": "10",
            "tcp_keepalives_count": "3",
        },
    )
    try:
        held = await conn.fetchval("SELECT pg_try_advisory_lock_shared($1)", SERVING_LOCK)
    except BaseException:
        conn.terminate()
        raise
    if not held:
        await conn.close()
        raise RotationRunning
    return conn
