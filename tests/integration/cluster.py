"""Several ``certbroker serve`` processes on one PostgreSQL database, and a router's view of them.

``Cluster`` starts brokers as real processes (``kill -9`` must be real) with the
same KEK, database, CA and DNS, each with its own broker id; only the first
listens for HTTP-01 on the port Pebble validates on, so every order another
broker places is answered through the store. ``RouterWatch`` is a router that
knows every broker's address (the client library on a multi-address target):
it follows WatchStatus on one and, when that stream ends, resumes on the next
from the last revision it saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import asyncpg

from certbroker.v1 import broker_pb2
from certbroker.x509.sealing import KeySealer
from certbroker_client.client import BrokerClient
from tests.infra.ports import free_port
from tests.integration.lab import BrokerProcess, Lab

SNAPSHOT_TYPES = (broker_pb2.EVENT_TYPE_SNAPSHOT, broker_pb2.EVENT_TYPE_SNAPSHOT_COMPLETE)


@dataclass
class Member:
    broker_id: str
    process: BrokerProcess

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.process.port}"

    @property
    def pid(self) -> int:
        assert self.process.proc is not None
        return self.process.proc.pid


class Cluster:
    """``size`` brokers on ``dsn``; member 0 answers Pebble's HTTP-01 requests."""

    def __init__(
        self,
        lab: Lab,
        tmp: Path,
        dsn: str,
        *,
        size: int = 3,
        lease: str = "8s",
        trust_bundle: str | None = None,
    ) -> None:
        base = lab.settings(tmp, db=dsn)
        self.members: list[Member] = []
        for i in range(size):
            name = f"broker-{chr(ord('a') + i)}"
            settings = replace(base, http01_listen=base.http01_listen if i == 0 else None)
            extra = {
                "CERTBROKER_LEASE": lease,
                "CERTBROKER_BROKER_ID": name,
                "CERTBROKER_TRUST_BUNDLE": trust_bundle or "",
                # every test name is under example.test: not what these tests are about
                "CERTBROKER_QUOTA_PER_REGISTERED_DOMAIN": "100000",
            }
            process = BrokerProcess(settings, free_port(), tmp / f"{name}.log", extra)
            self.members.append(Member(name, process))
        self.dsn = dsn

    @property
    def addresses(self) -> list[str]:
        return [m.address for m in self.members]

    async def start(self) -> None:
        """All at once, as a deployment rolls out: they migrate and settle the canary together.

        The KEK file is made first, as a deployment provides it to every broker.
        """
        kek = self.members[0].process.settings.kek_file
        if not Path(kek).exists():
            KeySealer.generate_file(kek)
        await asyncio.gather(*(asyncio.to_thread(m.process.start) for m in self.members))

    def kill(self, member: Member) -> None:
        """``kill -9``: no shutdown, no released lease, no goodbye to the database."""
        member.process.kill()

    def stop(self) -> list[int | None]:
        return [m.process.terminate() for m in self.members]

    async def query(self, sql: str, *args: object) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.dsn)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()


def now_micros() -> int:
    """The store's time format (microseconds since the epoch) for lease columns."""
    return int(time.time() * 1_000_000)


class RouterWatch:
    """A router's watch over every broker: the client library on one channel to all of them.

    The target lists every broker (``ipv4:a:p,b:p,c:p``, starting with ``first``);
    gRPC's default ``pick_first`` connects to the first that answers, and when that
    broker dies the client's ``watch()`` resumes from its last revision on the
    next: what the README tells routers to do.
    """

    def __init__(self, addresses: Sequence[str], first: int) -> None:
        order = [*addresses[first:], *addresses[:first]]
        self.target = "ipv4:" + ",".join(order)
        self.client = BrokerClient.connect(self.target)
        self.events: list[broker_pb2.WatchEvent] = []
        self.position = 0
        self.following = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name=f"watch {self.target}")

    async def _run(self) -> None:
        async for event in self.client.watch(0, idle_timeout=10.0):
            if event.type == broker_pb2.EVENT_TYPE_SNAPSHOT_COMPLETE:
                self.following.set()
            if event.type in SNAPSHOT_TYPES:
                continue
            self.events.append(event)
            self.position = event.revision

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self.client.close()


def projection(event: broker_pb2.WatchEvent) -> tuple[object, ...]:
    """What a router acts on in an event; the same on every broker for one revision."""
    d = event.domain
    return (
        event.revision,
        event.type,
        d.domain,
        d.lets_encrypt_state,
        d.serving_source,
        d.lets_encrypt_certificate.serial,
        d.custom_certificate.serial,
    )
