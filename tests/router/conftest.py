"""The production topology on loopback: Pebble, challtestsrv, the broker and the reference router.

Pebble's ``httpPort`` is the *router's* HTTP port: the CA validates HTTP-01
through the router, which forwards ``/.well-known/acme-challenge/`` to the
broker's responder, as in production. The broker runs as a real process
(``BrokerProcess``) with mTLS: the router connects as ``router-1`` (role
``router``, the only one that receives keys) and the tests manage domains as
``api-1`` (role ``api``). The router runs in the test's event loop so tests
can read its revision and map directly; one test also runs the CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from certbroker.v1 import domain_pb2
from certbroker_client.client import BrokerClient, TlsFiles
from certbroker_client.reference_router import ReferenceRouter, RouterConfig
from certbroker_client.router import MapChange, RouterWatcher
from tests.infra.challtestsrv import ChallTestSrv
from tests.infra.pebble import Pebble
from tests.infra.ports import free_port
from tests.integration.lab import NINETY_DAYS, BrokerProcess
from tests.pki import TestPKI
from tests.routing_lab import mtls_lab
from tests.tls import MtlsFiles

CUSTOM_PKI = TestPKI("Router E2E", key_slot=3)


@dataclass
class Topology:
    """Everything one test module needs, started and wired together."""

    pebble: Pebble
    dns: ChallTestSrv
    broker: BrokerProcess
    mtls: MtlsFiles
    api: BrokerClient
    watcher: RouterWatcher
    router: ReferenceRouter
    router_tls: TlsFiles
    http01_port: int
    workdir: Path
    changes: list[MapChange] = field(default_factory=list)
    watching: asyncio.Task[None] | None = None

    @property
    def broker_addr(self) -> str:
        return f"127.0.0.1:{self.broker.port}"

    def pebble_root(self) -> bytes:
        return self.pebble.root_pem()

    async def wait_domain(
        self, name: str, done: Callable[[domain_pb2.Domain], bool], timeout: float = 60.0
    ) -> domain_pb2.Domain:
        """Poll GetStatus until ``done(domain)`` holds, then until the router reflects it."""
        deadline = time.monotonic() + timeout
        last: domain_pb2.Domain | None = None
        while time.monotonic() < deadline:
            last = await self.api.get_status(name)
            if done(last):
                remaining = max(0.1, deadline - time.monotonic())
                async with asyncio.timeout(remaining):
                    await self.watcher.wait_for_revision(last.revision)
                return last
            await asyncio.sleep(0.05)
        raise AssertionError(f"{name} did not get there in {timeout}s: {last}")


@pytest.fixture(scope="session")
def dns() -> Iterator[ChallTestSrv]:
    with ChallTestSrv.running(default_ipv4="127.0.0.1") as server:
        yield server


@contextlib.asynccontextmanager
async def topology(
    workdir: Path, dns: ChallTestSrv, validity_seconds: int = NINETY_DAYS
) -> AsyncIterator[Topology]:
    """Start Pebble, the broker (a process) and the router (in this loop); stop all by PID."""
    router_http = free_port()
    async with contextlib.AsyncExitStack() as stack:
        base = await stack.enter_async_context(
            mtls_lab(
                workdir,
                dns,
                pebble_http_port=router_http,
                trust_root=CUSTOM_PKI.root.pem,
                validity_seconds=validity_seconds,
            )
        )
        changes: list[MapChange] = []
        watcher = RouterWatcher.connect(
            base.broker_addr,
            base.router_tls,
            on_change=changes.append,
            idle_timeout=5.0,
            max_backoff=0.5,
        )
        stack.push_async_callback(watcher.close)
        router = ReferenceRouter(
            watcher.certificates,
            RouterConfig(
                https_listen=("127.0.0.1", 0),
                http_listen=("127.0.0.1", router_http),
                http01_forward=("127.0.0.1", base.http01_port),
            ),
        )
        await router.start()
        stack.push_async_callback(router.stop)
        watching = asyncio.create_task(watcher.run())

        async def cancel_watch() -> None:
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)

        stack.push_async_callback(cancel_watch)
        async with asyncio.timeout(15):
            await watcher.ready.wait()
        yield Topology(
            pebble=base.pebble,
            dns=dns,
            broker=base.broker,
            mtls=base.mtls,
            api=base.api,
            watcher=watcher,
            router=router,
            router_tls=base.router_tls,
            http01_port=base.http01_port,
            workdir=workdir,
            changes=changes,
            watching=watching,
        )
