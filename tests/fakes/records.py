"""An in-memory ``LimitRecords`` (store/base.py): the limits ledger without SQLite.

For the pure ledger tests and the limits bench; it follows the SQLite store's
documented semantics (``limit_spends``' anchor and cap, refunds only after the
domain's newest issuance), which tests/store/test_sqlite_limits.py checks on the
real store.
"""

from __future__ import annotations

import bisect
from collections.abc import Collection, Sequence
from datetime import datetime

from certbroker.store.base import SpendQuery, names_key


class MemoryLimitRecords:
    def __init__(self) -> None:
        self._spends: dict[tuple[str, str], list[tuple[datetime, int, str]]] = {}
        self._pauses: dict[tuple[str, str], datetime] = {}
        self._issued_names: dict[str, list[datetime]] = {}
        self._issued_domain: dict[str, datetime] = {}
        self._seq = 0
        self.reads = 0  # spend reads: one per limit_spends or limit_spends_of call

    # -- what the scheduler writes -------------------------------------------------------

    def record_issuance(self, domain: str, names: tuple[str, ...], at: datetime) -> None:
        self._issued_names.setdefault(names_key(names), []).append(at)
        self._issued_domain[domain] = max(at, self._issued_domain.get(domain, at))

    def count(self, bucket: str, key: str) -> int:
        return len(self._spends.get((bucket, key), []))

    # -- LimitReads ---------------------------------------------------------------------------

    async def limit_spends(
        self, bucket: str, key: str, since: datetime, limit: int
    ) -> list[datetime]:
        self.reads += 1
        return await self._spends_of(bucket, key, since, limit)

    async def _spends_of(
        self, bucket: str, key: str, since: datetime, limit: int
    ) -> list[datetime]:
        rows = self._spends.get((bucket, key), [])
        after = bisect.bisect_right(rows, since, key=lambda r: r[0])
        start = after
        if after > 0:  # the newest at or before since, with any others at that same time
            anchor = rows[after - 1][0]
            start = bisect.bisect_left(rows, anchor, key=lambda r: r[0])
        return [r[0] for r in rows[max(start, len(rows) - limit) :]]

    async def limit_spends_of(self, queries: Sequence[SpendQuery]) -> list[list[datetime]]:
        self.reads += 1
        return [await self._spends_of(*query) for query in queries]

    async def limit_pauses(
        self, keys: Collection[tuple[str, str]], now: datetime
    ) -> dict[tuple[str, str], datetime]:
        return {k: self._pauses[k] for k in keys if k in self._pauses and self._pauses[k] > now}

    # -- LimitRecords -------------------------------------------------------------------------

    async def names_issued_since(self, names: tuple[str, ...], since: datetime) -> bool:
        return any(at > since for at in self._issued_names.get(names_key(names), []))

    async def add_limit_spend(self, bucket: str, key: str, domain: str, at: datetime) -> None:
        self._seq += 1
        bisect.insort(self._spends.setdefault((bucket, key), []), (at, self._seq, domain))

    async def refund_limit_spends(self, domain: str, buckets: Collection[str]) -> int:
        issued = self._issued_domain.get(domain)
        gone = 0
        for (bucket, _key), rows in self._spends.items():
            if bucket not in buckets:
                continue
            kept = [r for r in rows if not (r[2] == domain and (issued is None or r[0] > issued))]
            gone += len(rows) - len(kept)
            rows[:] = kept
        return gone

    async def pause_limit(self, bucket: str, key: str, until: datetime) -> None:
        current = self._pauses.get((bucket, key))
        self._pauses[(bucket, key)] = until if current is None else max(current, until)

    async def prune_limit_records(self, before: datetime) -> int:
        gone = 0
        for rows in self._spends.values():
            kept = [r for r in rows if r[0] >= before]
            gone += len(rows) - len(kept)
            rows[:] = kept
        for key in [k for k, until in self._pauses.items() if until < before]:
            del self._pauses[key]
            gone += 1
        return gone
