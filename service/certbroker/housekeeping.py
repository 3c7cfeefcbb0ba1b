"""Background chores: compaction of the event log and of retired certificates' keys,
and challenge events.

All write through the store like everything else, so watchers see challenge
events in revision order and a compacted revision is reported precisely.
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
    ) -> None:
        self._store = store
        self._clock = clock
        self._retention = retention
        self._interval = interval
        self._key_retention = key_retention
        self._task: asyncio.Task[None] | None = None

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

    async def _run(self) -> None:
        while True:
            try:
                await self.compact_once()
            except StoreUnavailable as error:  # a full disk, a lock: the health check says so
                log.warning("compaction postponed: %s", error)
            except Exception:
                log.exception("event compaction failed; will try again")
            await self._clock.sleep_until(self._clock.now() + self._interval)


class ChallengeEvents:
    """Turns the HTTP-01 responder's changes into watch events for routers that answer them.

    The responder calls back synchronously; the write happens in a task that is
    kept referenced until it finishes.
    """

    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock
        self._pending: set[asyncio.Task[None]] = set()
        self.listeners = 0  # streams open with include_challenges

    def on_change(self, token: str, key_authorization: str | None) -> None:
        if self.listeners == 0:
            return  # a token lives seconds; with no router asking, the write is pure cost
        task = asyncio.get_running_loop().create_task(self._write(token, key_authorization))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _write(self, token: str, key_authorization: str | None) -> None:
        kind = EventType.CHALLENGE_ADDED if key_authorization else EventType.CHALLENGE_REMOVED
        try:
            async with self._store.transaction() as tx:
                await tx.add_challenge_event(
                    "", kind, token, key_authorization or "", self._clock.now()
                )
        except Exception:
            log.exception("recording a challenge event failed")

    async def stop(self) -> None:
        await asyncio.gather(*self._pending, return_exceptions=True)
