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

Each ``router_id`` belongs to the caller identity (the mTLS client-certificate
name) that first reported it, until it is forgotten. Why: without that, any
router certificate (or a stolen one) could overwrite another router's entry,
and ``ListRouters`` and ``Domain.serving_routers`` would say what the attacker
likes. A report for an id another identity holds is refused
(``ROUTER_ID_TAKEN``) and changes nothing; the message does not name the
holder, so a caller cannot learn which certificate a router uses. Routers that
share one certificate share one identity and can still overwrite each other:
give each router its own certificate to tell them apart. In plaintext mode
every caller is ``local``, so nothing changes there. The stricter
``id_is_identity`` (``CERTBROKER_ROUTER_ID_IS_IDENTITY``) accepts only the
caller's own certificate name as its id, so a stolen certificate cannot even
invent routers or claim an id its router left.

Listing is paged in ``router_id`` order (:meth:`RouterRegistry.page`), so a
reply stays bounded whatever ``capacity`` is.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import heapq
import re
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from certbroker.clock import Clock
from certbroker.errors import (
    FieldViolation,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
)

MAX_ROUTER_ID: Final = 128
_ROUTER_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]*")
STALE_AFTER: Final = 3
FORGET_AFTER: Final = 10
#: ListRouters page size when the caller names none, and the most it may ask for. A
#: listed router is at most ~700 bytes (a 128-character id, the identity, times), so
#: a full page stays well under 1 MB, far below the 4 MiB reply limit.
DEFAULT_PAGE_SIZE: Final = 1000
MAX_PAGE_SIZE: Final = 1000
_TOKEN_PREFIX: Final = "router-after:"  # noqa: S105 (a page token, not a secret)
#: The longest token :func:`encode_page_token` makes (base64 of prefix + a 128-character id).
MAX_PAGE_TOKEN_LENGTH: Final = 4 * -(-(len(_TOKEN_PREFIX) + MAX_ROUTER_ID) // 3)


#: The identity ``api.auth`` gives every plaintext caller (its ``Role.LOCAL``): one
#: trusted operator, so the per-identity cap does not apply to it.
LOCAL_IDENTITY: Final = "local"


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


@dataclass(frozen=True, slots=True)
class RouterPage:
    """One page of :meth:`RouterRegistry.page`: ``next_page_token`` is empty on the last."""

    routers: list[RouterState]
    next_page_token: str


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


def encode_page_token(after: str) -> str:
    """Opaque to callers; the prefix tells our tokens (and ListDomains' apart) from others."""
    return base64.urlsafe_b64encode(f"{_TOKEN_PREFIX}{after}".encode()).decode().rstrip("=")


def decode_page_token(token: str) -> str:
    """The router_id a page token continues after ("" for none); raises ``InvalidArgument``.

    The length is checked before any decoding, and the id inside must be a valid
    router_id, so a forged token costs no more than a real one.
    """
    if not token:
        return ""
    after = ""
    if len(token) <= MAX_PAGE_TOKEN_LENGTH:
        try:
            padded = token + "=" * (-len(token) % 4)
            text = base64.b64decode(padded, altchars=b"-_", validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            text = ""
        if text.startswith(_TOKEN_PREFIX):
            after = text.removeprefix(_TOKEN_PREFIX)
    if len(after) > MAX_ROUTER_ID or not _ROUTER_ID.fullmatch(after):
        raise InvalidArgument.one(
            "page_token", "is not a token this server returned", reason="PAGE_TOKEN_INVALID"
        )
    return after


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
        id_is_identity: bool = False,
        per_identity: int | None = None,
    ) -> None:
        """``interval``: how often routers are asked to report (told in every reply).

        ``id_is_identity``: a report's ``router_id`` must be the caller's identity.
        ``per_identity``: how many ids one client certificate may hold (default half
        of ``capacity``), so one stolen or runaway certificate cannot fill the whole
        registry and lock every other router out; plaintext ``local`` callers, all
        one trusted identity, are held only to ``capacity``.
        """
        if interval <= timedelta(0) or capacity < 1 or not 0 < stale_after <= forget_after:
            raise ValueError("interval > 0, capacity >= 1 and 0 < stale_after <= forget_after")
        if per_identity is not None and per_identity < 1:
            raise ValueError("per_identity >= 1")
        self._clock = clock
        self._id_is_identity = id_is_identity
        self.per_identity = per_identity if per_identity is not None else max(1, capacity // 2)
        self._held: Counter[str] = Counter()  # ids held, by identity
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
        """Record one report (validated first) for ``identity``, the caller.

        ``PermissionDenied`` (``ROUTER_ID_TAKEN``) when another identity holds
        ``router_id`` (it is held until forgotten); ``ResourceExhausted`` when the
        registry is full. Either way nothing is recorded.
        """
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
        if self._id_is_identity and router_id != identity:
            raise PermissionDenied(
                f"router_id must be {identity!r}, this client certificate's name "
                "(CERTBROKER_ROUTER_ID_IS_IDENTITY is set)",
                reason="ROUTER_ID_NOT_IDENTITY",
            )
        now = self._clock.now()
        previous = self._reports.get(router_id)
        if previous is not None and now - previous.last_seen > self._forget:
            self._drop(router_id)  # forgotten: the id is free again
            self._version += 1
            previous = None
        if previous is not None and previous.identity != identity:
            raise PermissionDenied(
                f"router_id {router_id!r} is held by another client certificate; "
                "use this router's own id (an id is freed "
                f"{self._forget.total_seconds():g}s after its holder's last report)",
                reason="ROUTER_ID_TAKEN",
            )
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
        if previous is None and identity != LOCAL_IDENTITY:
            if self._held[identity] >= self.per_identity:
                self._forget_silent(now)
            if self._held[identity] >= self.per_identity:
                raise ResourceExhausted(
                    f"this client certificate already holds {self.per_identity} router ids "
                    "(CERTBROKER_MAX_ROUTERS_PER_IDENTITY); silent ones are forgotten "
                    f"after {self._forget.total_seconds():g}s",
                    retry_after=self.interval,
                    reason="TOO_MANY_ROUTERS_FOR_IDENTITY",
                )
        report = RouterReport(
            router_id=router_id,
            identity=identity,
            applied_revision=applied_revision,
            domain_count=domain_count,
            first_seen=previous.first_seen if previous is not None else now,
            last_seen=now,
        )
        if previous is None:
            self._held[identity] += 1
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

    def page(self, page_size: int, page_token: str) -> RouterPage:
        """Up to ``page_size`` routers after the token's id, in id order.

        ``page_size`` 0 means the default; more than the maximum is the maximum (as
        ListDomains does). A negative size or a token this server did not make is
        refused, both fields at once (``INVALID_ARGUMENT`` naming each).
        Ids are unique and the order total, so following ``next_page_token`` lists
        every router held throughout exactly once, whatever reports arrive between
        pages (a router first seen meanwhile appears if its id sorts after the token).
        """
        violations: list[FieldViolation] = []
        if page_size < 0:
            violations.append(FieldViolation("page_size", "must not be negative"))
        try:
            after = decode_page_token(page_token)
        except InvalidArgument as error:
            violations.extend(error.violations)
        if violations:  # the reasons ListDomains gives, for the first field refused
            reason = "PAGE_SIZE_INVALID" if page_size < 0 else "PAGE_TOKEN_INVALID"
            raise InvalidArgument(violations, reason=reason)
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        now = self._clock.now()
        self._forget_silent(now)
        # O(n log size): no full sort of up to ``capacity`` ids per page.
        ids = heapq.nsmallest(size + 1, (k for k in self._reports if k > after))
        more = len(ids) > size
        ids = ids[:size]
        states = [
            RouterState(report, now - report.last_seen <= self._stale)
            for report in (self._reports[k] for k in ids)
        ]
        return RouterPage(states, encode_page_token(ids[-1]) if more else "")

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
            self._drop(router_id)
        if silent:
            self._version += 1

    def _drop(self, router_id: str) -> None:
        identity = self._reports.pop(router_id).identity
        self._held[identity] -= 1
        if self._held[identity] <= 0:
            del self._held[identity]
