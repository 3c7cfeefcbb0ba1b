"""The event hub: wakes watchers when the store commits; it holds no truth of its own.

One fetcher reads each new batch of events from the store once and keeps the
most recent ones in a bounded window, so a thousand watchers cost one query per
commit, not a thousand. A watcher behind the window reads from the store's log;
one behind the log's compaction point is told so and must re-snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator

from certbroker.errors import BrokerError, OutOfRange
from certbroker.model import Event
from certbroker.store.base import Store
from certbroker.store_health import describe

log = logging.getLogger(__name__)
_PAGE = 500
# Reading new events failed: retry after 0.1 s, doubling to 5 s; log once per 30 s.
_RETRY_FIRST = 0.1
_RETRY_MAX = 5.0
#: How often an announced revision that no read shows is looked for (every _RETRY_FIRST).
_UNSEEN_RETRIES = 50
_LOG_EVERY = 30.0


class RevisionCompacted(OutOfRange):
    reason = "REVISION_COMPACTED"


class EventHub:
    def __init__(self, store: Store, window: int = 4096) -> None:
        self._store = store
        self._window: deque[Event] = deque(maxlen=window)
        self._head = 0  # newest revision the window holds (or knows of)
        self._wanted = 0  # newest revision a commit announced
        self._changed = asyncio.Event()
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.closing = False

    async def start(self) -> None:
        # Listen first: a commit announced while the head is read is not lost (with
        # several brokers on one database, another's commit may land at any moment).
        self._store.on_commit(self.notify)
        self._head = await self._store.current_revision()
        self._wanted = max(self._wanted, self._head)
        self._task = asyncio.create_task(self._fetch_loop(), name="event-hub")

    def close_streams(self) -> None:
        """Shutdown: every ``follow`` returns at once, so streams end before the grace period."""
        self.closing = True
        self._wake_all()

    async def stop(self) -> None:
        self.close_streams()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._wake_all()

    @property
    def revision(self) -> int:
        return self._head

    def notify(self, revision: int) -> None:
        """Called by the store after a commit that appended events."""
        if revision > self._wanted:
            self._wanted = revision
            self._kick.set()

    def _wake_all(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _fetch_loop(self) -> None:
        delay = _RETRY_FIRST
        failures = 0
        unseen = 0  # reads in a row that did not show an announced commit
        logged_at: float | None = None
        while True:
            await self._kick.wait()
            self._kick.clear()
            while self._head < self._wanted:
                try:
                    batch = await self._store.events_after(self._head, _PAGE)
                except Exception as error:  # a transient store error must not kill the hub
                    # A database that cannot be read fails every try: back off and log once
                    # per interval, not ten tracebacks a second.
                    failures += 1
                    now = asyncio.get_running_loop().time()
                    if logged_at is None or now - logged_at >= _LOG_EVERY:
                        log.warning(
                            "reading new events failed %d time(s) (%s); retrying in %gs",
                            failures,
                            describe(error),
                            delay,
                            exc_info=not isinstance(error, BrokerError),
                        )
                        logged_at, failures = now, 0
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, _RETRY_MAX)
                    continue
                delay = _RETRY_FIRST
                if not batch:
                    # A commit was announced but the read does not show it yet (a read
                    # snapshot from before it, a replica behind). Look again shortly: the
                    # next announcement, which would otherwise wake us, may never come.
                    unseen += 1
                    if unseen > _UNSEEN_RETRIES:
                        log.warning(
                            "revision %d was announced but is not readable; waiting for "
                            "the next commit",
                            self._wanted,
                        )
                        unseen = 0
                        break
                    await asyncio.sleep(_RETRY_FIRST)
                    continue
                unseen = 0
                self._window.extend(batch)
                self._head = batch[-1].revision
                self._wake_all()

    async def wait_beyond(self, revision: int, seconds: float) -> int:
        """Wait until an event after ``revision`` exists or ``seconds`` pass; return the head."""
        if self._head > revision:
            return self._head
        changed = self._changed
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):  # no Task per waiter, unlike wait_for
                await changed.wait()
        return self._head

    async def events_after(self, revision: int) -> list[Event]:
        """The next events after ``revision`` (possibly none): from the window, else the log."""
        if revision < await self._store.compacted_through():
            raise RevisionCompacted(
                f"revision {revision} is older than the retained event log; "
                "re-snapshot with after_revision=0"
            )
        window = self._window
        if window and window[0].revision <= revision + 1:
            if revision >= window[-1].revision:
                return []
            start = revision + 1 - window[0].revision
            if 0 <= start < len(window) and window[start].revision == revision + 1:
                return [window[i] for i in range(start, min(len(window), start + _PAGE))]
            return [e for e in window if e.revision > revision][:_PAGE]
        return await self._store.events_after(revision, _PAGE)

    async def follow(self, after: int, heartbeat: float) -> AsyncIterator[Event | int]:
        """Every event after ``after`` in revision order, then live; an ``int`` is a heartbeat."""
        position = after
        while not self.closing:
            batch = await self.events_after(position)
            if batch:
                for event in batch:
                    yield event
                position = batch[-1].revision
                continue
            head = await self.wait_beyond(position, heartbeat)
            if head <= position and not self.closing:
                yield max(head, position)
