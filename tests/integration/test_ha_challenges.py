"""Challenges across brokers, through real servers: one broker orders, another answers.

Two brokers on one PostgreSQL database. Broker A listens on the HTTP-01 port
Pebble validates on but works no domains (its scheduler is stopped); broker B
has no HTTP-01 listener and places the order. Pebble's request reaches A, which
finds B's answer in the store; and a router watching A with
``include_challenges`` gets the challenge's events although only B knew of it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from certbroker.housekeeping import WATCHERS_PREFIX
from certbroker.v1 import broker_pb2
from tests.broker import started_broker
from tests.integration.lab import Lab, in_use, unique_domain, wait_status

pytestmark = pytest.mark.integration


async def test_a_broker_answers_and_announces_the_challenges_of_another_brokers_order(
    lab: Lab, tmp_path: Path, postgres_dsn: str
) -> None:
    settings = lab.settings(tmp_path, db=postgres_dsn, broker_id="broker-a")
    quiet = replace(settings, http01_listen=None, broker_id="broker-b")
    name = unique_domain("ha")
    async with started_broker(settings) as a, started_broker(quiet) as b:
        await a.running.scheduler.stop()  # A orders nothing: every order is B's
        call = a.stub.WatchStatus(
            broker_pb2.WatchStatusRequest(after_revision=0, include_challenges=True)
        )
        seen: list[broker_pb2.WatchEvent] = []

        async def read() -> None:
            async for response in call:
                if response.HasField("event"):
                    seen.append(response.event)

        reader = asyncio.create_task(read())
        try:
            # A's router is known to every broker before B orders
            end = time.monotonic() + 15
            while await b.running.store.lease_owners(WATCHERS_PREFIX, datetime.now(UTC)) != [
                "broker-a"
            ]:
                assert time.monotonic() < end, "A's challenge watchers were never announced"
                await asyncio.sleep(0.05)
            await b.stub.IssueCertificate(
                broker_pb2.IssueCertificateRequest(domain=name, app="shop")
            )
            await wait_status(a.stub, name, in_use, timeout=60)  # validated through A only

            def kinds() -> list[int]:
                return [e.type for e in seen if e.type in (ADDED, REMOVED)]

            end = time.monotonic() + 15
            while kinds() != [ADDED, REMOVED]:
                assert time.monotonic() < end, f"challenge events seen on A: {kinds()}"
                await asyncio.sleep(0.05)
            added = next(e for e in seen if e.type == ADDED)
            assert added.challenge.token and added.challenge.key_authorization.startswith(
                added.challenge.token + "."
            )
        finally:
            call.cancel()
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)


ADDED = broker_pb2.EVENT_TYPE_CHALLENGE_ADDED
REMOVED = broker_pb2.EVENT_TYPE_CHALLENGE_REMOVED
