"""Who goes first when the CA's tokens are scarce, and when renewals come due. Pure.

Order of the due work the scheduler claims (``order``):

1. renewals (the domain has a Let's Encrypt certificate), the one closest to
   expiry first: a renewal that misses its certificate's expiry takes a site
   down, a first certificate that waits an hour does not. Renewals are exempt
   from the account's new-orders bucket at the CA, so they rarely wait anyway;
2. first certificates that need no token yet (DNS still to be checked, a
   delegation to be found): cheap, and they never touch the CA;
3. first certificates ready to order, each consuming a token of the account's
   new-orders bucket (``LimitsLedger.budget``).

Tiers 2 and 3 go round-robin between apps: every app's most overdue domain,
then every app's second, and so on, apps served least recently first. An app
that imports 10,000 names therefore gets one token in N when N apps are
waiting, and a small app's first certificate does not queue behind the import.

``claim`` walks that order with the free worker slots and the tokens the
account has; what needs a token it cannot have stays due, unworked and
unwritten, until the next token (``Claim.starved``) — not retried and
re-held one by one, which for a big import would be a write per domain per
token.

``spread_renewal`` is the renewal time itself: not every certificate at two
thirds of its life, but a point spread (deterministically, by the hash of its
names) over the twelfth of its life before that, so a bulk import's renewals
come as a trickle over days, not as one storm on day 60.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Final

from certbroker.backoff import RENEW_AT_FRACTION

#: Renewals are spread over this fraction of a certificate's life, ending at two thirds:
#: days 52.5 to 60 of a 90-day certificate, 26.25 to 30 of a 45-day one.
SPREAD_FRACTION: Final = 1 / 12
_NEVER: Final = datetime.min.replace(tzinfo=UTC)
_FAR: Final = datetime.max.replace(tzinfo=UTC)


class Kind(StrEnum):
    RENEWAL = "RENEWAL"  # the domain has a Let's Encrypt certificate
    FIRST = "FIRST"  # it has none yet


@dataclass(frozen=True)
class Candidate:
    """A due domain, as far as its priority goes (``Store.due_candidates``)."""

    name: str
    app: str
    kind: Kind
    due_at: datetime
    expires_at: datetime | None = None  # of its Let's Encrypt certificate (renewals)
    needs_token: bool = False  # ready to order a first certificate (state CREATING)


@dataclass(frozen=True)
class Claim:
    chosen: list[Candidate]
    # Free slots were left but ready first certificates had no token: they stay due
    # and wait for the next token (the scheduler sleeps until then, or a change).
    starved: bool


def tier(candidate: Candidate) -> int:
    if candidate.kind is Kind.RENEWAL:
        return 0
    return 2 if candidate.needs_token else 1


def order(
    candidates: Iterable[Candidate], last_served: Mapping[str, datetime] | None = None
) -> list[Candidate]:
    """Renewals by expiry, then first certificates round-robin between apps (see above).

    ``last_served``: when each app last got a token (apps missing: never), so the
    round-robin goes on across passes instead of restarting at the same app.
    """
    served = last_served or {}
    tiers: list[list[Candidate]] = [[], [], []]
    for candidate in candidates:
        tiers[tier(candidate)].append(candidate)
    renewals = sorted(tiers[0], key=lambda c: (c.expires_at or _FAR, c.due_at, c.name))
    return [*renewals, *round_robin(tiers[1], served), *round_robin(tiers[2], served)]


def round_robin(candidates: Sequence[Candidate], served: Mapping[str, datetime]) -> list[Candidate]:
    """Each app's first (by due time), then each app's second …; least recently served first."""
    by_app: dict[str, list[Candidate]] = {}
    for candidate in sorted(candidates, key=lambda c: (c.due_at, c.name)):
        by_app.setdefault(candidate.app, []).append(candidate)
    apps = sorted(by_app, key=lambda app: (served.get(app, _NEVER), by_app[app][0].due_at, app))
    result: list[Candidate] = []
    for rank in range(max((len(q) for q in by_app.values()), default=0)):
        result.extend(by_app[app][rank] for app in apps if rank < len(by_app[app]))
    return result


def claim(ordered: Sequence[Candidate], free: int, tokens: int) -> Claim:
    """The first ``free`` of ``ordered`` that can run now: at most ``tokens`` of them ready
    first certificates (the rest of those wait for tokens, the others run)."""
    chosen: list[Candidate] = []
    starved = False
    for candidate in ordered:
        if len(chosen) >= free:
            return Claim(chosen, starved=False)
        if candidate.needs_token:
            if tokens <= 0:
                starved = True
                continue
            tokens -= 1
        chosen.append(candidate)
    return Claim(chosen, starved=starved and len(chosen) < free)


def spread_renewal(name: str, not_before: datetime, not_after: datetime) -> datetime:
    """When to renew a certificate for ``name`` valid ``not_before`` to ``not_after``.

    A fixed point per name (SHA-256 of it, so every replica and restart agrees)
    in the last ``SPREAD_FRACTION`` of the life before ``RENEW_AT_FRACTION``;
    never later than two thirds, so the margin before expiry only grows.
    """
    life = not_after - not_before
    digest = hashlib.sha256(name.encode()).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)
    start = RENEW_AT_FRACTION - SPREAD_FRACTION
    return not_before + life * (start + SPREAD_FRACTION * position)


def spread_window(not_before: datetime, not_after: datetime) -> tuple[datetime, datetime]:
    """The earliest and latest ``spread_renewal`` for a certificate with this life."""
    life = not_after - not_before
    return (
        not_before + life * (RENEW_AT_FRACTION - SPREAD_FRACTION),
        not_before + life * RENEW_AT_FRACTION,
    )
