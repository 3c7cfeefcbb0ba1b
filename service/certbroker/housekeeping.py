"""Background chores: compaction of the event log and of retired certificates' keys,
and challenge events.

All write through the store like everything else, so watchers see challenge
events in revision order and a compacted revision is reported precisely.

Several brokers on one store: compaction runs on one of them per interval (the
one holding the ``job:compaction`` lease, which it keeps while it lives), and
challenge events are written when a router watches them on *any* broker (each
broker with such watchers keeps a presence lease).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

from certbroker import limits
from certbroker.clock import Clock
from certbroker.errors import StoreUnavailable
from certbroker.model import EventType
from certbroker.store.base import Store

log = logging.getLogger(__name__)
JOB_COMPACTION = "job:compaction"
WATCHERS_PREFIX = "watchers:challenges:"  # + the broker id: a broker with such streams


class Compactor:
    """Every ``interval``: drops watch events older than the retention, then the rows and
    sealed keys of certificates retired longer than ``key_retention`` ago, then the
    rate-limit records older than any bucket reads (``limits.RECORDS_KEPT``).

    Why a grace period for keys: a retired certificate may still be in a router's
    memory or a backup being restored; erasing it a week later rather than at once
    costs nothing and leaves room to notice a mistaken delete.
    """

    def __init__(
        self,
        store: Store,
        clock: Clock,
        retention: timedelta,
        interval: timedelta,
        key_retention: timedelta = timedelta(days=7),
        *,
        owner: str | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._retention = retention
        self._interval = interval
        self._key_retention = key_retention
        self._owner = owner  # None: the only broker, no lease needed
        self._task: asyncio.Task[None] | None = None
        self.runs = 0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="compactor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def compact_once(self) -> int:
        """Events first: a certificate's row may wait on the events that name it."""
        dropped = await self._store.compact_events(self._clock.now() - self._retention)
        if dropped:
            log.info("compacted %d watch events older than %s", dropped, self._retention)
        now = self._clock.now()
        erased = await self._store.compact_certificates(now - self._key_retention, now)
        if erased:
            log.info(
                "erased %d retired certificates and their keys (retired over %s ago)",
                erased,
                self._key_retention,
            )
        async with self._store.transaction() as tx:
            pruned = await tx.prune_limit_records(now - limits.RECORDS_KEPT)
        if pruned:
            log.info("pruned %d rate-limit records no bucket looks at any more", pruned)
        return dropped

    async def run_if_due(self) -> bool:
        """Compact, and purge expired challenges and leases, if this broker holds the job.

        The lease lasts one interval and its holder takes it again at its next run,
        so one broker compacts per interval however many run; when it dies, the
        first broker to try after its lease lapsed takes over.
        """
        if self._owner is not None:
            now = self._clock.now()
            if not await self._store.take_lease(JOB_COMPACTION, self._owner, now, self._interval):
                return False
        self.runs += 1
        await self.compact_once()
        purged = await self._store.purge_expired(self._clock.now())
        if purged:
            log.info("purged %d expired challenge answers and leases", purged)
        return True

    async def _run(self) -> None:
        while True:
            # From start to start: a run that took long (waiting for the writer) while the
            # clock moved on does not push the next one a whole interval past that.
            started = self._clock.now()
            try:
                await self.run_if_due()
            except StoreUnavailable as error:  # a full disk, a lock: the health check says so
                log.warning("compaction postponed: %s", error)
            except Exception:
                log.exception("event compaction failed; will try again")
            await self._clock.sleep_until(started + self._interval)


class ChallengeEvents:
    """Turns the HTTP-01 responder's changes into watch events for routers that answer them.

    A token lives seconds; with no router asking, the write is pure cost, so it is
    made only while a stream with ``include_challenges`` is open: here, or (on a
    shared store, ``owner`` set) on any broker. Each broker with such streams holds
    a presence lease (``watchers:challenges:<owner>``) renewed every third of
    ``lease``; the others read the live ones (cached for ``presence_cache``) before
    skipping a write. A router that starts watching sees the tokens published
    from then on, give or take that cache, as on one broker.

    The responder calls back synchronously; the writes happen in order in one
    task, kept referenced until it finishes.
    """

    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        owner: str | None = None,
        lease: timedelta = timedelta(seconds=30),
        presence_cache: float = 1.0,
    ) -> None:
        self._store = store
        self._clock = clock
        self._owner = owner
        self._lease = lease
        self._presence_cache = presence_cache
        self._others_until = 0.0  # loop time until which "others watch" is known
        self._others = False
        # (token, key authorization or None, a stream here wanted it when it changed)
        self._queue: asyncio.Queue[tuple[str, str | None, bool]] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._presence: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.listeners = 0  # streams open here with include_challenges

    def add_listener(self) -> None:
        self.listeners += 1
        self._listening.set()
        self._idle.clear()
        if self._owner is not None and self._presence is None:
            self._presence = asyncio.get_running_loop().create_task(
                self._keep_presence(), name="challenge-watchers"
            )

    def remove_listener(self) -> None:
        self.listeners -= 1
        if self.listeners == 0:
            self._listening.clear()
            self._idle.set()

    def on_change(self, token: str, key_authorization: str | None) -> None:
        if self.listeners == 0 and self._owner is None:
            return
        self._queue.put_nowait((token, key_authorization, self.listeners > 0))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(
                self._drain(), name="challenge-events"
            )

    async def _drain(self) -> None:
        while not self._queue.empty():
            token, key_authorization, wanted_here = self._queue.get_nowait()
            try:
                if wanted_here or await self._others_watch():
                    await self._write(token, key_authorization)
            except Exception:
                log.exception("recording a challenge event failed")

    async def _others_watch(self) -> bool:
        if self._owner is None:
            return False
        now = asyncio.get_running_loop().time()
        if now >= self._others_until:
            prefix = WATCHERS_PREFIX
            self._others = bool(await self._store.lease_owners(prefix, self._clock.now()))
            self._others_until = now + self._presence_cache
        return self._others

    async def _write(self, token: str, key_authorization: str | None) -> None:
        kind = EventType.CHALLENGE_ADDED if key_authorization else EventType.CHALLENGE_REMOVED
        async with self._store.transaction() as tx:
            await tx.add_challenge_event(
                "", kind, token, key_authorization or "", self._clock.now()
            )

    async def _keep_presence(self) -> None:
        """While streams are open here, hold the presence lease; drop it when they close."""
        assert self._owner is not None
        name = f"{WATCHERS_PREFIX}{self._owner}"
        every = self._lease.total_seconds() / 3
        while True:
            await self._listening.wait()
            try:
                await self._store.take_lease(name, self._owner, self._clock.now(), self._lease)
            except Exception as error:
                log.warning("could not renew the challenge watchers' presence: %s", error)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(every):
                    await self._idle.wait()
            if not self.listeners:
                with contextlib.suppress(Exception):
                    await self._store.drop_lease(name, self._owner)

    async def stop(self) -> None:
        if self._presence is not None:
            self._presence.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._presence
            if self._owner is not None:
                with contextlib.suppress(Exception):
                    await self._store.drop_lease(f"{WATCHERS_PREFIX}{self._owner}", self._owner)
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)
