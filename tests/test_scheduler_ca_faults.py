"""Faults at the CA under a fake clock: an outage pauses issuance for everyone instead of
aging each domain's backoff; a lost account is recovered; a forgotten order is replaced.

The real scheduler and SQLite store, the fake CA (``tests.fakes.issuer``): ``down``
makes every request fail as a connection refusal would, ``account_lost`` answers
accountDoesNotExist, ``deactivated`` answers unauthorized (the account's own look-up
included), ``unauthorized()`` refuses one request of a valid account,
``forgotten``/``forget_all`` answer 404 for order URLs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from certbroker import lifecycle
from certbroker.acme.keys import generate_private_key
from certbroker.model import LetsEncryptState
from certbroker.scheduler import ACCOUNT_RECOVERY_INTERVAL
from certbroker.store.base import PendingOrder
from tests.fakes.issuer import FakeIssuer, problem, unauthorized
from tests.fakes.world import World, world

S = LetsEncryptState
NAME = "www.shop.test"


async def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll (real time) until ``check()``; the probe runs in its own task."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.005)


async def events_for(w: World, name: str) -> int:
    return sum(1 for e in await w.store.events_after(0, 10_000) if e.domain_name == name)


def issuer(w: World) -> FakeIssuer:
    assert w.issuer is not None
    return w.issuer


async def probe_once(w: World) -> None:
    """Move the clock to the next probe and wait until it ran and its outcome settled."""
    outage = w.scheduler.ca.outage
    assert outage is not None
    probes = issuer(w).probes
    w.clock.set(outage.next_probe)
    await eventually(lambda: issuer(w).probes > probes)
    await eventually(lambda: w.scheduler.ca.outage is not outage)
    await w.settled()


async def test_domains_added_during_an_outage_are_held_once_and_issued_when_it_ends(
    tmp_path: Path,
) -> None:
    async with world(tmp_path) as w:
        issuer(w).down = True
        names = [f"d{i}.shop.test" for i in range(3)]
        for name in names:
            await w.add(name)
        await w.settled()
        first = w.scheduler.ca.outage
        assert first is not None
        for name in names:
            held = await w.domain(name)
            assert held.retry.last_error_reason == lifecycle.CA_UNAVAILABLE
            assert held.retry.attempt == 0
            assert held.retry.next_attempt_at == first.next_probe  # shown: the next probe
            assert held.le_state is S.CREATING  # DNS passed; the hold changes no state
        assert issuer(w).calls == []
        events = [await events_for(w, n) for n in names]

        waits = []
        for _ in range(8):  # a long outage: probes back off, domains stay untouched
            await probe_once(w)
            outage = w.scheduler.ca.outage
            assert outage is not None
            waits.append((outage.next_probe - w.clock.now()).total_seconds())
            for name in names:  # each held domain shows the new probe time ...
                held = await w.domain(name)
                assert held.retry.next_attempt_at == outage.next_probe
                assert held.retry.last_error_reason == lifecycle.CA_UNAVAILABLE
        assert waits == [10, 20, 40, 80, 160, 300, 300, 300]
        assert [await events_for(w, n) for n in names] == events  # ... with no event per probe
        assert issuer(w).calls == []  # and is never due on its own, its time passed or not
        assert [(await w.domain(n)).retry.attempt for n in names] == [0, 0, 0]

        issuer(w).down = False
        await probe_once(w)
        await eventually(lambda: len(issuer(w).calls) == 3)
        await w.settled()
        for name in names:
            done = await w.domain(name)
            assert done.le_state is S.IN_USE and done.retry.attempt == 0


async def test_a_renewal_due_during_a_10_minute_outage_happens_right_after(
    tmp_path: Path,
) -> None:
    async with world(tmp_path) as w:
        await w.add(NAME)
        await w.settled()
        first = await w.domain(NAME)
        renew_at = lifecycle.renewal_due(first)
        assert renew_at is not None
        issuer(w).down = True
        await w.until(renew_at)
        held = await w.domain(NAME)
        assert held.retry.last_error_reason == lifecycle.CA_UNAVAILABLE
        assert held.le_state is S.IN_USE  # the current certificate keeps serving
        outage_end = renew_at + timedelta(minutes=10)
        while w.clock.now() < outage_end:
            await probe_once(w)
        issuer(w).down = False
        back = w.scheduler.ca.outage
        assert back is not None
        await probe_once(w)
        await eventually(lambda: len(issuer(w).calls) == 2)
        await w.settled()
        renewed = await w.domain(NAME)
    assert renewed.le_cert is not None and first.le_cert is not None
    assert renewed.le_cert.serial != first.le_cert.serial
    assert renewed.retry.attempt == 0
    # Right after: at the first probe that found the CA back (≤ 5 min after it returned).
    assert renewed.le_cert.received_at == back.next_probe


async def test_held_renewals_are_due_before_first_certificates(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        await w.add("renew.shop.test")
        await w.settled()
        renew_at = lifecycle.renewal_due(await w.domain("renew.shop.test"))
        assert renew_at is not None
        w.clock.set(renew_at - timedelta(seconds=1))
        issuer(w).down = True
        await w.add("a-new.shop.test")
        await w.until(renew_at)
        issuer(w).down = False
        before = len(issuer(w).calls)
        await probe_once(w)
        await eventually(lambda: len(issuer(w).calls) == before + 2)
        woken = [c.names[0] for c in issuer(w).calls[before:]]
    assert woken == ["renew.shop.test", "a-new.shop.test"]


async def test_a_domain_whose_own_validation_fails_still_backs_off_while_the_ca_is_healthy(
    tmp_path: Path,
) -> None:
    async with world(tmp_path) as w:
        issuer(w).always_fail(NAME, problem("ACME_CONNECTION", retryable=True))
        await w.add(NAME)
        await w.settled()
        for attempt, minutes in ((1, 1), (2, 2), (3, 4), (4, 8)):
            failing = await w.domain(NAME)
            assert failing.retry.attempt == attempt
            wait = failing.retry.next_attempt_at - w.clock.now()  # type: ignore[operator]
            assert wait == timedelta(minutes=minutes)
            await w.advance(wait)
        assert w.scheduler.ca.available and issuer(w).probes == 0


async def test_an_account_the_ca_forgot_is_registered_again_once_per_interval(
    tmp_path: Path,
) -> None:
    async with world(tmp_path) as w:
        issuer(w).account_lost = True
        await w.add(NAME)
        await w.settled()
        done = await w.domain(NAME)
        assert done.le_state is S.IN_USE and done.retry.attempt == 0
        assert issuer(w).recoveries == [False]  # the stored key: the CA forgot it too

        # Lost again within the interval: no second registration, a normal failure.
        issuer(w).account_lost = True
        await w.add("b.shop.test")
        await w.settled()
        failed = await w.domain("b.shop.test")
        assert failed.retry.attempt == 1
        assert failed.retry.last_error_reason == "ACME_ACCOUNT_DOES_NOT_EXIST"
        assert issuer(w).recoveries == [False]

        # After the interval, recovered again; a deactivated account gets a new key.
        issuer(w).deactivated = True
        await w.advance(ACCOUNT_RECOVERY_INTERVAL)
        await w.add("c.shop.test")
        await w.settled()
        assert (await w.domain("c.shop.test")).le_state is S.IN_USE
        assert issuer(w).recoveries == [False, True]


async def test_an_order_the_ca_forgot_is_replaced_once_then_fails_normally(
    tmp_path: Path,
) -> None:
    async with world(tmp_path) as w:
        await w.scheduler.stop()
        await w.add(NAME)
        async with w.store.transaction() as tx:
            await tx.put_order(
                PendingOrder(
                    domain=NAME,
                    registered_domain="shop.test",
                    names=(NAME,),
                    key_sealed=w.sealer.seal(generate_private_key(), NAME),
                    started_at=w.clock.now(),
                    order_url="https://fake-ca.test/order/77",
                )
            )
        issuer(w).forgotten.add("https://fake-ca.test/order/77")
        await w.restart()
        replaced = await w.domain(NAME)
        assert replaced.le_state is S.IN_USE and replaced.retry.attempt == 0
        assert [c.resume_url for c in issuer(w).orders_for(NAME)] == [
            "https://fake-ca.test/order/77",
            "",
        ]

        # Every order and authorization URL 404s: one replacement per step, then a
        # normal failure that backs off, never a loop of 404s.
        issuer(w).forget_all = True
        await w.add("b.shop.test")
        await w.settled()
        failing = await w.domain("b.shop.test")
        assert len(issuer(w).orders_for("b.shop.test")) == 2
        assert failing.retry.attempt == 1
        await w.advance(timedelta(seconds=59))
        assert len(issuer(w).orders_for("b.shop.test")) == 2
        await w.advance(timedelta(seconds=1))
        assert len(issuer(w).orders_for("b.shop.test")) == 4
        assert (await w.domain("b.shop.test")).retry.attempt == 2


async def test_an_unauthorized_on_a_valid_account_is_the_domains_failure_not_a_new_account(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """At Let's Encrypt ``unauthorized`` also means an order or authorization of another
    account, or a name this account may not have: the account is looked at (once per
    interval) and, valid, kept; the domain backs off like any failure."""
    caplog.set_level(logging.INFO, logger="certbroker.scheduler")
    async with world(tmp_path) as w:
        issuer(w).fail(NAME, unauthorized())
        issuer(w).fail("b.shop.test", unauthorized())
        await w.add(NAME)
        await w.settled()
        failing = await w.domain(NAME)
        assert issuer(w).recoveries == []  # no new account registered
        assert issuer(w).status_checks == 1  # the account was looked at
        assert failing.retry.attempt == 1
        assert failing.retry.last_error_reason == "ACME_UNAUTHORIZED"
        assert failing.retry.next_attempt_at == w.clock.now() + timedelta(minutes=1)
        assert len(issuer(w).orders_for(NAME)) == 1  # not placed again in the same step
        assert w.scheduler.ca.available and w.scheduler.ca.outages == 0  # nor the CA's fault
        logged = caplog.text
        assert "the ACME account is valid: the domain's failure" in logged
        assert "recovering it" not in logged

        await w.add("b.shop.test")  # within the interval: the last look is reused
        await w.settled()
        assert (await w.domain("b.shop.test")).retry.attempt == 1
        assert issuer(w).status_checks == 1 and issuer(w).recoveries == []

        await w.advance(timedelta(minutes=1))  # the backoff over: ordered again, issued
        done = await w.domain(NAME)
        assert done.le_state is S.IN_USE and done.retry.attempt == 0
        assert len(issuer(w).orders_for(NAME)) == 2
        assert issuer(w).recoveries == []


async def test_a_deactivated_account_is_confirmed_then_replaced_with_a_new_key(
    tmp_path: Path,
) -> None:
    async with world(tmp_path) as w:
        issuer(w).deactivated = True
        await w.add(NAME)
        await w.settled()
        done = await w.domain(NAME)
        assert done.le_state is S.IN_USE and done.retry.attempt == 0
        assert issuer(w).status_checks == 1
        assert issuer(w).recoveries == [True]  # a new key: the old one cannot register again


async def test_a_hold_written_after_the_probe_found_the_ca_back_wakes_itself(
    tmp_path: Path,
) -> None:
    """A step that saw the outage but wrote its hold after the probe woke the held
    domains must not stay held until the end of the next outage."""
    async with world(tmp_path) as w:
        await w.scheduler.stop()
        await w.add(NAME)
        assert w.scheduler.ca.available
        late = lifecycle.CaUnavailable("ACME_NETWORK", "refused", w.clock.now())
        written = await w.scheduler._write(NAME, [late])
        assert written is not None and not lifecycle.held_for_ca(written)
        assert written.retry.next_attempt_at == w.clock.now()  # due at once
