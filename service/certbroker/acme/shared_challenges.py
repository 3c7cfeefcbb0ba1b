"""HTTP-01 answers every broker serves, whichever broker's order they belong to.

Routers forward ``/.well-known/acme-challenge/`` to the broker service, which a
load balancer spreads over the brokers, so the CA's request for a token may
reach a broker that did not place the order. ``SharedChallenges`` is what the
issuer publishes through: the answer goes into this broker's responder (served
here at once) and into the store (``Store.put_challenge``), and ``publish``
returns only once the store has it, so the CA, told to validate only after
that, finds it on every broker. The responder asks ``lookup`` on a local miss:
a read of the store, cached briefly.

The cache: a found answer is kept ``positive_ttl`` (an answer outliving its
order a few seconds is harmless: a key authorization is public, the token
random), a miss ``negative_ttl`` (a burst of requests for one unknown token
costs one query); at most ``max_entries`` tokens, oldest out first. At most
``max_lookups`` queries run at once, each bounded by ``lookup_timeout``; the
CA's several vantage points asking for one token share one query. A store that
cannot answer gives a 404 (the CA fails that validation, the scheduler retries
the order), never a hang.

On one SQLite broker nothing of this is needed (no other broker exists); the
server wires it for a shared (PostgreSQL) store only.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from datetime import timedelta

from certbroker.acme.http01 import Http01Responder
from certbroker.clock import Clock
from certbroker.store.base import Store

log = logging.getLogger(__name__)

#: How long a published row lives if its broker dies before withdrawing it. Longer
#: than an order (the issuer gives one two minutes) and any resume of it, which
#: publishes again anyway.
CHALLENGE_TTL = timedelta(minutes=15)


class SharedChallenges:
    """Publishes through the store, looks up through a bounded cache. No I/O until used."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        responder: Http01Responder,
        owner: str,
        *,
        ttl: timedelta = CHALLENGE_TTL,
        positive_ttl: float = 5.0,
        negative_ttl: float = 1.0,
        max_entries: int = 10_000,
        max_lookups: int = 16,
        lookup_timeout: float = 2.0,
    ) -> None:
        self._store = store
        self._clock = clock
        self._responder = responder
        self._owner = owner
        self._ttl = ttl
        self._positive_ttl = positive_ttl
        self._negative_ttl = negative_ttl
        self._max_entries = max_entries
        self._lookups = asyncio.Semaphore(max_lookups)
        self._lookup_timeout = lookup_timeout
        self._cache: OrderedDict[str, tuple[str | None, float]] = OrderedDict()
        self._pending: dict[str, asyncio.Future[str | None]] = {}
        self.queries = 0  # store reads made for lookups, for tests and figures

    # -- the issuer's side (``ChallengeResponder``) -----------------------------------

    async def publish(self, token: str, key_authorization: str) -> None:
        """Served here at once, by every broker once this returns (raises if the store fails)."""
        self._responder.add(token, key_authorization)
        try:
            await self._store.put_challenge(
                token, key_authorization, self._owner, self._clock.now() + self._ttl
            )
        except BaseException:
            self._responder.remove(token)
            raise

    async def unpublish(self, token: str) -> None:
        """Withdraw one publication; the store row goes with the last local reference.

        A failure is only logged: the row expires by itself (``CHALLENGE_TTL``).
        """
        self._responder.remove(token)
        if self._responder.get(token) is not None:
            return  # another order here still answers with it
        try:
            await self._store.remove_challenge(token, self._owner)
        except Exception as error:
            log.warning("could not withdraw an HTTP-01 answer from the store: %s", error)

    # -- the responder's side (``Http01Responder.lookup``) ----------------------------

    async def lookup(self, token: str) -> str | None:
        """The answer another broker published for ``token``; cached, bounded, never raises."""
        now = asyncio.get_running_loop().time()
        cached = self._cache.get(token)
        if cached is not None and cached[1] > now:
            return cached[0]
        pending = self._pending.get(token)
        if pending is not None:  # several vantage points asking at once: one query
            return await asyncio.shield(pending)
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._pending[token] = future
        try:
            found = await self._query(token)
            future.set_result(found)
        finally:
            del self._pending[token]
            if not future.done():
                future.set_result(None)
        return found

    async def _query(self, token: str) -> str | None:
        try:
            async with asyncio.timeout(self._lookup_timeout), self._lookups:
                self.queries += 1
                found = await self._store.get_challenge(token, self._clock.now())
        except Exception as error:  # not cached: the next request asks again
            log.warning("HTTP-01 lookup in the store failed: %s", error)
            return None
        ttl = self._positive_ttl if found is not None else self._negative_ttl
        self._cache[token] = (found, asyncio.get_running_loop().time() + ttl)
        self._cache.move_to_end(token)
        while len(self._cache) > self._max_entries:
            self._cache.popitem(last=False)
        return found
