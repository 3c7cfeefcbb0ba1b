"""Poll waits: soon at first, doubling to once a second, never sooner than Retry-After.

The schedule alone (pure), then the order machine's waits against an in-memory
CA that keeps its authorization pending and its order processing for a while.
"""

from __future__ import annotations

import pytest
from acme import challenges, messages

from certbroker.acme.account import jwk_and_alg, new_account_key
from certbroker.acme.http01 import Http01Responder
from certbroker.acme.keys import generate_private_key
from certbroker.acme.orders import Challenges, OrderMachine
from certbroker.acme.polling import MAX_POLL_WAIT, PollSchedule
from tests.fakes.acme_ca import FakeCa

ACCOUNT = jwk_and_alg(new_account_key())[0]


def test_waits_start_short_and_double_up_to_the_cap() -> None:
    schedule = PollSchedule(first=0.05, cap=1.0)
    assert [schedule.delay(n) for n in range(1, 8)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert schedule.delay(10_000) == 1.0  # no overflow after a long wait


def test_retry_after_is_a_floor_and_is_capped() -> None:
    schedule = PollSchedule(first=0.05, cap=1.0)
    assert schedule.delay(1, 3.0) == 3.0  # longer than ours: honoured
    assert schedule.delay(5, 0.2) == 0.8  # shorter than ours: ours
    assert schedule.delay(1, 3600.0) == MAX_POLL_WAIT  # a stuck poll surfaces as a timeout


def test_a_first_wait_above_the_cap_is_refused() -> None:
    with pytest.raises(ValueError, match="first <= cap"):
        PollSchedule(first=2.0, cap=1.0)


class SlowCa(FakeCa):
    """Authorizations valid only at the ``authz_polls``-th fetch after the answer; the
    order processing for ``order_polls`` fetches; ``retry_after`` on every fetch."""

    def __init__(self, authz_polls: int, order_polls: int, retry_after: float | None) -> None:
        super().__init__()
        self.authz_polls = authz_polls
        self.order_polls = order_polls
        self.retry_after = retry_after
        self.authz_fetches = 0
        self.order_fetches = 0

    async def answer(
        self, challb: messages.ChallengeBody, response: challenges.ChallengeResponse
    ) -> None:
        """Recorded; the authorization turns valid only after enough polls."""
        for authz in self.authzs.values():
            if any(c.uri == challb.uri for c in authz.challenges):
                self.answered.append(str(authz.identifier.value))

    async def fetch_authz(self, url: str) -> tuple[messages.Authorization, float | None]:
        self.authz_fetches += 1
        if self.answered and self.authz_fetches >= self.authz_polls:
            self.authzs[url] = self.authzs[url].update(status=messages.STATUS_VALID)
        return self.authzs[url], self.retry_after

    async def fetch_order(self, url: str) -> tuple[messages.Order | None, float | None]:
        self.order_fetches += 1
        if self.order_fetches < self.order_polls:
            return self._body(url), self.retry_after  # still processing
        order, _ = await super().fetch_order(url)
        return order, self.retry_after


async def issue_recording_waits(ca: SlowCa) -> list[float]:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(round(seconds, 6))

    orders = OrderMachine(
        ca, lambda: ACCOUNT, Http01Responder(), poll_interval=0.05, poll_cap=1.0, sleep=sleep
    )
    issued = await orders.place(["a.test"], generate_private_key(), Challenges())
    assert issued.chain_pem
    return waits


async def test_a_slow_authorization_and_order_are_polled_with_growing_waits() -> None:
    ca = SlowCa(authz_polls=8, order_polls=3, retry_after=None)
    waits = await issue_recording_waits(ca)
    authz_waits = [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]  # 8 polls: ~3.5 s, not 70 polls
    assert waits == [*authz_waits, 0.05, 0.1, 0.2]
    assert ca.authz_fetches == 8 and ca.order_fetches == 3


async def test_the_servers_retry_after_sets_the_pace_when_longer() -> None:
    ca = SlowCa(authz_polls=2, order_polls=2, retry_after=2.0)
    waits = await issue_recording_waits(ca)
    # the answers of newOrder and finalize came with none; each fetch said 2 s
    assert waits == [0.05, 2.0, 0.05, 2.0]


async def test_an_order_not_ready_at_finalize_is_polled_after_a_wait_not_at_once() -> None:
    ca = SlowCa(authz_polls=1, order_polls=1, retry_after=None)
    ca.not_ready_once = True  # the first finalize answers orderNotReady
    waits = await issue_recording_waits(ca)
    # the authorization's poll; a wait before the order is fetched and finalized again;
    # then its processing polls, from the start of the schedule
    assert waits == [0.05, 0.05, 0.05] and ca.finalized == 2
