"""Events only for observable changes: DNS re-checks that find the same write no event."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from certbroker.clock import FakeClock
from certbroker.v1 import broker_pb2, domain_pb2
from tests.broker import BrokerHandle, broker_settings, started_broker
from tests.infra.challtestsrv import ChallTestSrv

INTERVAL = timedelta(seconds=60)


async def wait_all(
    broker: BrokerHandle, app: str, done: Callable[[domain_pb2.Domain], bool], count: int
) -> list[domain_pb2.Domain]:
    """Poll ListDomains until ``count`` domains of ``app`` all satisfy ``done``."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        reply = await broker.stub.ListDomains(
            broker_pb2.ListDomainsRequest(app=app, page_size=1000)
        )
        if len(reply.domains) == count and all(done(d) for d in reply.domains):
            return list(reply.domains)
        await asyncio.sleep(0.05)
    raise AssertionError("the domains were not all checked in time")


def checked_at(when: datetime) -> Callable[[domain_pb2.Domain], bool]:
    return lambda d: d.dns.check_time.ToDatetime(UTC) == when


async def test_100_pending_domains_rechecked_10_times_write_no_events_after_the_first(
    dns_server: ChallTestSrv, tmp_path: Path
) -> None:
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    settings = broker_settings(
        tmp_path,
        # Never contacted: only domains that point at the platform are ordered.
        acme_directory="https://127.0.0.1:9/directory",
        dns_servers=(("127.0.0.1", dns_server.dns_port),),
        platform_targets=("192.0.2.10",),  # the DNS answers 127.0.0.1: never pointing
    )
    names = [f"p{i}.pending.example.test" for i in range(100)]
    async with started_broker(settings, clock) as broker:
        await asyncio.gather(
            *(
                broker.stub.IssueCertificate(
                    broker_pb2.IssueCertificateRequest(domain=n, app="pending")
                )
                for n in names
            )
        )
        first = await wait_all(broker, "pending", checked_at(clock.now()), len(names))
        assert {d.retry.last_error_reason for d in first} == {"DNS_NOT_POINTING"}
        store = broker.running.store
        revision = await store.current_revision()

        for _ in range(10):
            clock.advance(INTERVAL)
            rechecked = await wait_all(broker, "pending", checked_at(clock.now()), len(names))
            assert all(
                d.next_check_time.ToDatetime(UTC) == clock.now() + INTERVAL for d in rechecked
            )
        assert await store.current_revision() == revision  # 1,000 checks, no event

        # What a status page shows changing is still an event: a new answer for one name.
        dns_server.add_a(names[0], ["198.51.100.7"])
        try:
            clock.advance(INTERVAL)
            await wait_all(broker, "pending", checked_at(clock.now()), len(names))
        finally:
            dns_server.clear_a(names[0])
        events = await store.events_after(revision, 100)
        assert [e.domain_name for e in events] == [names[0]]
        assert events[0].domain is not None
        assert "A 198.51.100.7" in events[0].domain.dns.answered  # type: ignore[union-attr]
