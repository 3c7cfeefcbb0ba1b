"""Who goes first when tokens are scarce, and the spread of renewal times."""

from __future__ import annotations

import statistics
from datetime import UTC, datetime, timedelta

from certbroker.backoff import renewal_time
from certbroker.priorities import (
    Candidate,
    Kind,
    claim,
    order,
    spread_renewal,
    spread_window,
)

NOW = datetime(2026, 3, 1, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


def renewal(name: str, expires_in: timedelta, app: str = "a") -> Candidate:
    return Candidate(name, app, Kind.RENEWAL, NOW - MINUTE, expires_at=NOW + expires_in)


def first(name: str, app: str, due_minutes_ago: int = 0, *, ready: bool = True) -> Candidate:
    return Candidate(name, app, Kind.FIRST, NOW - due_minutes_ago * MINUTE, needs_token=ready)


def names(candidates: list[Candidate]) -> list[str]:
    return [c.name for c in candidates]


def test_renewals_come_first_the_one_closest_to_expiry_first() -> None:
    due = [
        first("new.big", "big", 500),
        renewal("r-week", timedelta(days=7)),
        renewal("r-expired", -timedelta(hours=1)),
        renewal("r-day", timedelta(days=1)),
    ]
    assert names(order(due)) == ["r-expired", "r-day", "r-week", "new.big"]


def test_first_certificates_go_round_robin_between_apps() -> None:
    big = [first(f"b{i}", "big", 100 - i) for i in range(5)]  # imported long ago
    small = [first("s0", "small", 1), first("s1", "small", 0)]
    other = [first("o0", "other", 2)]
    ordered = names(order(big + small + other))
    assert ordered[:3] == ["b0", "o0", "s0"]  # each app's most overdue, oldest app first
    assert ordered[3:5] == ["b1", "s1"]
    assert ordered[5:] == ["b2", "b3", "b4"]


def test_the_round_robin_continues_with_the_apps_served_least_recently() -> None:
    due = [first("b0", "big", 9), first("s0", "small", 1)]
    assert names(order(due))[0] == "b0"
    served = {"big": NOW - MINUTE}  # big just got the last token; small never did
    assert names(order(due, served))[0] == "s0"
    served = {"big": NOW - MINUTE, "small": NOW}
    assert names(order(due, served))[0] == "b0"


def test_domains_that_need_no_token_yet_go_before_those_that_do() -> None:
    """A DNS check costs the CA nothing: it is never stuck behind the token queue."""
    due = [first("ready", "big", 50), first("checking", "big", 1, ready=False)]
    assert names(order(due)) == ["checking", "ready"]


def test_claim_takes_no_more_ready_first_certificates_than_there_are_tokens() -> None:
    ordered = order(
        [
            renewal("r", timedelta(days=3)),
            first("b0", "big", 9),
            first("b1", "big", 8),
            first("s0", "small", 1),
            first("dns", "small", 0, ready=False),
        ]
    )
    result = claim(ordered, free=10, tokens=1)
    assert names(result.chosen) == ["r", "dns", "b0"]
    assert result.starved  # b1 and s0 wait for the next token, slots were free
    everything = claim(ordered, free=10, tokens=5)
    assert len(everything.chosen) == 5 and not everything.starved


def test_claim_stops_at_the_free_slots_without_calling_it_starvation() -> None:
    ordered = order([first(f"b{i}", "big", 10 - i) for i in range(4)])
    result = claim(ordered, free=2, tokens=10)
    assert names(result.chosen) == ["b0", "b1"]
    assert not result.starved  # the slots were the limit, not the tokens
    assert claim(ordered, free=0, tokens=10).chosen == []


def test_a_small_app_is_served_within_a_round_when_a_big_import_waits() -> None:
    """Token by token: 19 small apps each get their first certificate before the
    big app's 20th, though the big import was there first."""
    big = [first(f"big{i}", "big", 10_000 - i) for i in range(1000)]
    small = [first(f"app{a}-0", f"app{a:02}", 0) for a in range(19)]
    waiting = big + small
    served: dict[str, datetime] = {}
    got: list[Candidate] = []
    for token in range(40):
        chosen = claim(order(waiting, served), free=32, tokens=1).chosen
        assert len(chosen) == 1
        got.append(chosen[0])
        served[chosen[0].app] = NOW + token * MINUTE
        waiting.remove(chosen[0])
    big_served = [c for c in got if c.app == "big"]
    smalls = {c.app for c in got[:21] if c.app != "big"}
    assert len(smalls) == 19
    assert len(big_served) >= 20  # and the big app keeps going at its share


def test_renewal_spread_is_deterministic_and_inside_the_window() -> None:
    start, end = NOW, NOW + timedelta(days=90)
    at = spread_renewal("shop.example.com", start, end)
    assert at == spread_renewal("shop.example.com", start, end)
    earliest, latest = spread_window(start, end)
    assert earliest == start + timedelta(days=52.5)
    assert latest == renewal_time(start, end) == start + timedelta(days=60)
    assert earliest <= at <= latest


def test_a_bulk_import_renews_as_a_trickle_not_a_storm() -> None:
    """10,000 certificates issued the same second: renewals spread over 7.5 days."""
    start, end = NOW, NOW + timedelta(days=90)
    times = [spread_renewal(f"d{i}.example.com", start, end) for i in range(10_000)]
    earliest, latest = spread_window(start, end)
    assert all(earliest <= t <= latest for t in times)
    per_day: dict[int, int] = {}
    for t in times:
        day = int((t - earliest) / timedelta(days=1))
        per_day[day] = per_day.get(day, 0) + 1
    assert len(per_day) == 8  # days 0..7 of the 7.5-day window
    full_days = [per_day[d] for d in range(7)]
    assert max(full_days) < 1.1 * statistics.mean(full_days)  # no day much busier
    assert max(full_days) < 1500  # vs 10,000 on one day without the spread
