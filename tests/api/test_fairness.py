"""PeerLimits: the per-peer counting behind the fairness interceptor, on a hand-moved clock."""

from __future__ import annotations

from datetime import timedelta

import pytest

from certbroker.api.fairness import (
    IN_FLIGHT_RETRY,
    PENALTY,
    TOO_MANY_BAD_REQUESTS,
    TOO_MANY_IN_FLIGHT,
    PeerLimits,
)
from certbroker.limits import Bucket

TEN_PER_SECOND = Bucket(10, timedelta(seconds=1))


class Ticks:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def ticks() -> Ticks:
    return Ticks()


def _middle() -> float:
    return 0.5  # a hold of exactly PENALTY


def test_in_flight_is_capped_per_peer_and_frees_when_calls_end(ticks: Ticks) -> None:
    limits = PeerLimits(2, None, monotonic=ticks)
    assert limits.admit("a") is None
    assert limits.admit("a") is None
    refusal = limits.admit("a")
    assert refusal is not None
    assert refusal.reason == TOO_MANY_IN_FLIGHT
    assert refusal.retry_after == IN_FLIGHT_RETRY
    assert refusal.hold > timedelta(0) and refusal.parked  # held like a budget refusal
    assert "2 calls in flight; the limit is 2" in refusal.message
    second = limits.admit("a")
    assert second is not None and second.parked  # up to another max_in_flight held
    third = limits.admit("a")
    assert third is not None and third.hold == timedelta(0) and not third.parked  # at once
    assert limits.admit("b") is None  # another peer has its own count
    limits.unpark("a")
    limits.unpark("a")
    limits.release("a")
    assert limits.in_flight("a") == 1
    assert limits.admit("a") is None


def test_invalid_answers_past_their_bucket_are_held_and_nothing_else_is(ticks: Ticks) -> None:
    """A relayed tenant's typos slow down only the typo'd answers, never the valid calls."""
    limits = PeerLimits(100, Bucket(3, timedelta(seconds=3)), monotonic=ticks)
    assert limits.admit("api") is None
    assert [limits.invalid_answer("api") for _ in range(3)] == [timedelta(0)] * 3
    held = limits.invalid_answer("api")
    assert timedelta(seconds=0.5) <= held <= timedelta(seconds=1.5)
    assert limits.admit("api") is None  # valid calls still go in at once
    limits.release("api")
    limits.release("api")
    ticks.now += 1.0  # one token back: one more answer at once
    assert limits.invalid_answer("api") == timedelta(0)


def test_streams_are_not_counted_in_flight(ticks: Ticks) -> None:
    limits = PeerLimits(1, None, monotonic=ticks)
    assert limits.admit("a") is None
    assert limits.admit("a", counted=False) is None  # a stream: its own caps apply
    assert limits.in_flight("a") == 1
    limits.release("a", counted=False)
    assert limits.in_flight("a") == 1


def test_bad_requests_empty_the_budget_then_every_call_is_held_and_refused(ticks: Ticks) -> None:
    limits = PeerLimits(8, Bucket(3, timedelta(seconds=30)), monotonic=ticks, jitter=_middle)
    for _ in range(3):
        assert limits.admit("a") is None
        limits.release("a", bad=True)
    refusal = limits.admit("a")
    assert refusal is not None
    assert refusal.reason == TOO_MANY_BAD_REQUESTS
    assert refusal.hold == PENALTY
    assert refusal.retry_after == timedelta(seconds=10)  # one token back every 10 s
    assert limits.in_flight("a") == 1  # a held refusal is counted until released
    limits.release("a")
    assert limits.admit("b") is None  # other peers keep their budget
    ticks.now += 10
    assert limits.admit("a") is None  # a token came back
    limits.release("a", bad=False)
    assert limits.admit("a") is None  # good calls spend nothing


def test_retry_after_is_at_least_the_penalty(ticks: Ticks) -> None:
    limits = PeerLimits(8, TEN_PER_SECOND, monotonic=ticks)
    for _ in range(10):
        assert limits.admit("a") is None
        limits.release("a", bad=True)
    refusal = limits.admit("a")
    assert refusal is not None
    assert refusal.retry_after == PENALTY  # not 100 ms: a flood would come back 10x faster


def test_budget_refills_up_to_its_capacity_only(ticks: Ticks) -> None:
    limits = PeerLimits(100, TEN_PER_SECOND, monotonic=ticks)
    assert limits.admit("a") is None  # the peer stays known while in flight
    ticks.now += 3600  # an hour idle does not bank 36,000 bad requests
    for _ in range(10):
        assert limits.admit("a") is None
        limits.release("a", bad=True)
    assert limits.admit("a") is not None


def test_a_peer_at_its_cap_and_out_of_budget_is_refused_at_once(ticks: Ticks) -> None:
    limits = PeerLimits(1, Bucket(1, timedelta(seconds=60)), monotonic=ticks)
    assert limits.admit("a") is None
    limits.release("a", bad=True)
    assert limits.admit("a") is not None  # held: now at the cap
    refusal = limits.admit("a")
    assert refusal is not None
    assert refusal.reason == TOO_MANY_BAD_REQUESTS
    assert refusal.hold == timedelta(0)  # no more parked calls than the cap
    assert limits.in_flight("a") == 1


def test_without_an_in_flight_cap_refusals_are_not_held(ticks: Ticks) -> None:
    limits = PeerLimits(0, Bucket(1, timedelta(seconds=60)), monotonic=ticks)
    for _ in range(500):
        assert limits.admit("a") is None  # no cap
    limits.release("a", bad=True)
    refusal = limits.admit("a")
    assert refusal is not None
    assert refusal.hold == timedelta(0)


def test_everything_off(ticks: Ticks) -> None:
    limits = PeerLimits(0, None, monotonic=ticks)
    assert not limits.enabled
    for _ in range(1000):
        assert limits.admit("a") is None
        limits.release("a", bad=True)


def test_idle_peers_with_a_full_budget_are_forgotten(ticks: Ticks) -> None:
    limits = PeerLimits(4, TEN_PER_SECOND, monotonic=ticks)
    assert limits.admit("a") is None
    limits.release("a")
    assert limits._peers == {}
    assert limits.admit("a") is None
    limits.release("a", bad=True)
    assert set(limits._peers) == {"a"}  # remembered while its budget is spent
    ticks.now += 1
    assert limits.admit("a") is None
    limits.release("a")
    assert limits._peers == {}


def test_peers_remembered_are_bounded(ticks: Ticks) -> None:
    limits = PeerLimits(4, TEN_PER_SECOND, monotonic=ticks, max_peers=10)
    assert limits.admit("busy") is None  # in flight: never forgotten
    for n in range(50):
        assert limits.admit(f"p{n}") is None
        limits.release(f"p{n}", bad=True)
        assert len(limits._peers) <= 10
    assert limits.in_flight("busy") == 1


@pytest.mark.parametrize(("draw", "hold"), [(0.0, PENALTY / 2), (0.999, PENALTY * 1.499)])
def test_holds_are_spread_so_held_calls_do_not_come_back_together(
    ticks: Ticks, draw: float, hold: timedelta
) -> None:
    limits = PeerLimits(8, Bucket(1, timedelta(seconds=60)), monotonic=ticks, jitter=lambda: draw)
    assert limits.admit("a") is None
    limits.release("a", bad=True)
    refusal = limits.admit("a")
    assert refusal is not None
    assert refusal.hold == hold
    assert refusal.retry_after == timedelta(seconds=60)  # the advice is not jittered
