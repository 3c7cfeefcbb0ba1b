"""Background chores that keep the store small: event-log compaction, challenge events.

Both write through the store like everything else, so watchers see challenge
events in revision order and a compacted revision is reported precisely.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

from certbroker.clock import Clock
from certbroker.model import EventType
from certbroker.store.base import Store

log = logging.getLogger(__name__)


class Compactor:
    """Drops watch events older than the retention, every ``interval``."""

    def __init__(
        self, store: Store, clock: Clock, retention: timedelta, interval: timedelta
    ) -> None:
        self._store = store
        self._clock = clock
        self._retention = retention
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="compactor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def compact_once(self) -> int:
        dropped = await self._store.compact_events(self._clock.now() - self._retention)
        if dropped:
            log.info("compacted %d watch events older than %s", dropped, self._retention)
        return dropped

    async def _run(self) -> None:
        while True:
            try:
                await self.compact_once()
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
