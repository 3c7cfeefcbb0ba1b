"""What the routers say they serve: an in-memory registry of their reports.

Why it exists: "In use" is the broker's belief. Only the routers know which
revision they have actually applied, so each reports it (``ReportServing``)
periodically and after each change, and the broker can say how many routers
serve a domain's current certificate and which router is stuck behind.

Why in memory and not in the store: a report is a heartbeat, not a change of
state. Writing one per router every few seconds into the event log would make
every watcher replay them, and after a broker restart the routers report again
within one interval anyway.

Bounded on purpose: at most ``capacity`` routers are held (a misconfigured
fleet inventing a new ``router_id`` per restart must not grow memory without
end), ids are validated and length-bounded, and routers age out on the
injected clock: silent for ``stale_after`` intervals, a router no longer
counts as serving; silent for ``forget_after`` intervals, it is forgotten.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from certbroker.clock import Clock
from certbroker.errors import FieldViolation, InvalidArgument, ResourceExhausted

MAX_ROUTER_ID: Final = 128
_ROUTER_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]*")
STALE_AFTER: Final = 3
FORGET_AFTER: Final = 10


@dataclass(frozen=True, slots=True)
class RouterReport:
    """The last report of one router, with when it was first and last heard of."""

    router_id: str
    identity: str
    applied_revision: int
    domain_count: int
    first_seen: datetime
    last_seen: datetime


@dataclass(frozen=True, slots=True)
class RouterState:
    """A report as listed: ``live`` when it reported within ``stale_after`` intervals."""

    report: RouterReport
    live: bool


class ServingCounts:
    """The applied revisions of the live routers, sorted: one count per domain in O(log n)."""

    def __init__(self, revisions: list[int]) -> None:
        self._revisions = sorted(revisions)

    @property
    def known(self) -> int:
        """How many routers are live."""
        return len(self._revisions)

    def serving(self, revision: int) -> int:
        """How many live routers have applied ``revision`` or later."""
        return len(self._revisions) - bisect.bisect_left(self._revisions, revision)


def check_router_id(router_id: str) -> str:
    """A printable, bounded id (hostnames, pod names, ``host:port``); raises ``InvalidArgument``."""
    if not router_id:
        raise InvalidArgument.one("router_id", "must not be empty", reason="ROUTER_ID_INVALID")
    if len(router_id) > MAX_ROUTER_ID or not _ROUTER_ID.fullmatch(router_id):
        raise InvalidArgument.one(
            "router_id",
            f"must be 1-{MAX_ROUTER_ID} characters of A-Z a-z 0-9 . _ : @ - "
            "starting with a letter or digit",
            reason="ROUTER_ID_INVALID",
        )
    return router_id


class RouterRegistry:
    """Reports by ``router_id``; reads age routers out on the injected clock."""

    def __init__(
        self,
        clock: Clock,
        interval: timedelta = timedelta(seconds=10),
        capacity: int = 10_000,
        *,
        stale_after: int = STALE_AFTER,
        forget_after: int = FORGET_AFTER,
    ) -> None:
        """``interval``: how often routers are asked to report (told in every reply)."""
        if interval <= timedelta(0) or capacity < 1 or not 0 < stale_after <= forget_after:
            raise ValueError("interval > 0, capacity >= 1 and 0 < stale_after <= forget_after")
        self._clock = clock
        self.interval = interval
        self.capacity = capacity
        self._stale = interval * stale_after
        self._forget = interval * forget_after
        self._reports: dict[str, RouterReport] = {}
        # ServingCounts is rebuilt only when a report arrived or a counted router went stale.
        self._version = 0
        self._counts: tuple[int, datetime, ServingCounts] | None = None

    def __len__(self) -> int:
        return len(self._reports)

    def report(
        self, router_id: str, identity: str, applied_revision: int, domain_count: int
    ) -> RouterReport:
        """Record one report (validated first); ``ResourceExhausted`` when the registry is full."""
        violations: list[FieldViolation] = []
        try:
            check_router_id(router_id)
        except InvalidArgument as error:
            violations.extend(error.violations)
        if applied_revision < 0:
            violations.append(FieldViolation("applied_revision", "must not be negative"))
        if domain_count < 0:
            violations.append(FieldViolation("domain_count", "must not be negative"))
        if violations:
            raise InvalidArgument(violations, reason="REPORT_INVALID")
        now = self._clock.now()
        previous = self._reports.get(router_id)
        if previous is None and len(self._reports) >= self.capacity:
            self._forget_silent(now)
            if len(self._reports) >= self.capacity:
                raise ResourceExhausted(
                    f"the broker tracks at most {self.capacity} routers "
                    "(CERTBROKER_MAX_ROUTERS); silent ones are forgotten "
                    f"after {self._forget.total_seconds():g}s",
                    retry_after=self.interval,
                    reason="TOO_MANY_ROUTERS",
                )
        report = RouterReport(
            router_id=router_id,
            identity=identity,
            applied_revision=applied_revision,
            domain_count=domain_count,
            first_seen=previous.first_seen if previous is not None else now,
            last_seen=now,
        )
        self._reports[router_id] = report
        self._version += 1
        return report

    def routers(self) -> list[RouterState]:
        """Every router not yet forgotten, sorted by id, with whether it is live."""
        now = self._clock.now()
        self._forget_silent(now)
        return [
            RouterState(report, now - report.last_seen <= self._stale)
            for _, report in sorted(self._reports.items())
        ]

    def counts(self) -> ServingCounts:
        """Counts over the live routers; cached until a report arrives or one goes stale."""
        now = self._clock.now()
        cached = self._counts
        if cached is not None and cached[0] == self._version and now < cached[1]:
            return cached[2]
        self._forget_silent(now)
        live = [r for r in self._reports.values() if now - r.last_seen <= self._stale]
        counts = ServingCounts([r.applied_revision for r in live])
        # Valid until the oldest counted report goes stale (or forever, within reason).
        until = min((r.last_seen for r in live), default=now) + self._stale
        self._counts = (self._version, until if live else now + self._stale, counts)
        return counts

    def _forget_silent(self, now: datetime) -> None:
        silent = [k for k, r in self._reports.items() if now - r.last_seen > self._forget]
        for router_id in silent:
            del self._reports[router_id]
        if silent:
            self._version += 1
