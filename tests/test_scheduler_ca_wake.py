"""Domains held for a CA outage are released even if the store fails as the CA returns.

A partition that cut both the CA and the database heals in any order: the probe
may find the CA back while the store still refuses. The held domains are never due
on their own (one probe releases them all), so a release that failed once must be
tried again; else they wait for a restart, renewals included, until certificates
expire. The real scheduler and SQLite store under a fake clock, the fake CA.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from certbroker import lifecycle
from certbroker.errors import Unavailable
from certbroker.model import LetsEncryptState
from tests.fakes.issuer import FakeIssuer
from tests.fakes.world import World, world

NAMES = [f"d{i}.shop.test" for i in range(3)]


async def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.005)


def issuer(w: World) -> FakeIssuer:
    assert w.issuer is not None
    return w.issuer


async def test_held_domains_are_released_once_the_store_answers_after_the_ca_came_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with world(tmp_path) as w:
        issuer(w).down = True
        for name in NAMES:
            await w.add(name)
        await w.settled()
        outage = w.scheduler.ca.outage
        assert outage is not None
        for name in NAMES:
            assert lifecycle.held_for_ca(await w.domain(name))

        original = w.store.names_with_last_error
        failures = 0

        async def store_down(reason: str) -> list[str]:  # the database is still unreachable
            nonlocal failures
            failures += 1
            raise Unavailable("the broker's database cannot be read or written")

        monkeypatch.setattr(w.store, "names_with_last_error", store_down)
        issuer(w).down = False
        probes = issuer(w).probes
        w.clock.set(outage.next_probe)
        await eventually(lambda: issuer(w).probes > probes and failures >= 1)
        await eventually(lambda: w.scheduler.ca.available)

        monkeypatch.setattr(w.store, "names_with_last_error", original)  # the store is back
        for _ in range(20):  # a few minutes of the fake clock: no restart, no user action
            await w.advance(timedelta(seconds=15))
            if len(issuer(w).calls) == len(NAMES):
                break
        await w.settled()
        for name in NAMES:
            done = await w.domain(name)
            assert not lifecycle.held_for_ca(done), name
            assert done.le_state is LetsEncryptState.IN_USE, name
