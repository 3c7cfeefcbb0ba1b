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
from tests.broker import broker_settings
from tests.infra.challtestsrv import ChallTestSrv
from tests.infra.pebble import Pebble
from tests.infra.ports import free_port
from tests.integration.lab import NINETY_DAYS, BrokerProcess
from tests.pki import TestPKI
from tests.tls import MtlsFiles

CUSTOM_PKI = TestPKI("Router E2E", key_slot=3)


class MtlsBrokerProcess(BrokerProcess):
    """``BrokerProcess`` with mTLS, roles, a trust bundle and quick heartbeats."""

    def __init__(self, *args: object, extra_env: dict[str, str], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.extra_env = extra_env

    def env(self) -> dict[str, str]:
        env = super().env()
        env.update(self.extra_env)
        return env


@dataclass
class Topology:
    """Everything one test module needs, started and wired together."""

    pebble: Pebble
    dns: ChallTestSrv
    broker: MtlsBrokerProcess
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
    workdir.mkdir(parents=True, exist_ok=True)
    router_http, http01_port, broker_port = free_port(), free_port(), free_port()
    mtls = MtlsFiles(workdir / "mtls")
    server_id, router_id, api_id = (
        mtls.issue("broker", server=True),
        mtls.issue("router-1"),
        mtls.issue("api-1"),
    )
    trust = workdir / "trust.pem"
    trust.write_bytes(CUSTOM_PKI.root.pem)
    async with contextlib.AsyncExitStack() as stack:
        pebble = stack.enter_context(
            Pebble.running(
                http_port=router_http,
                dns_server=dns.dns_address,
                nonce_reject_percent=0,
                authz_reuse_percent=0,
                validity_seconds=validity_seconds,
            )
        )
        settings = broker_settings(
            workdir,
            acme_directory=pebble.directory_url,
            acme_ca_bundle=pebble.ca_bundle_path,
            dns_servers=(("127.0.0.1", dns.dns_port),),
            platform_targets=("127.0.0.1",),
            http01_listen=("127.0.0.1", http01_port),
        )
        broker = MtlsBrokerProcess(
            settings,
            broker_port,
            workdir / "broker.log",
            extra_env={
                "CERTBROKER_TLS_CERT": str(server_id.cert),
                "CERTBROKER_TLS_KEY": str(server_id.key),
                "CERTBROKER_TLS_CLIENT_CA": str(mtls.ca),
                "CERTBROKER_ROLES": "router-1=router,api-1=api",
                "CERTBROKER_TRUST_BUNDLE": str(trust),
                "CERTBROKER_HEARTBEAT_INTERVAL": "1s",
            },
        )
        await asyncio.to_thread(broker.start)
        stack.callback(broker.terminate)
        api = BrokerClient.connect(
            f"127.0.0.1:{broker_port}",
            tls=TlsFiles(ca=mtls.ca, cert=api_id.cert, key=api_id.key),
            timeout=10,
        )
        stack.push_async_callback(api.close)
        router_tls = TlsFiles(ca=mtls.ca, cert=router_id.cert, key=router_id.key)
        changes: list[MapChange] = []
        watcher = RouterWatcher.connect(
            f"127.0.0.1:{broker_port}",
            router_tls,
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
                http01_forward=("127.0.0.1", http01_port),
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
            pebble=pebble,
            dns=dns,
            broker=broker,
            mtls=mtls,
            api=api,
            watcher=watcher,
            router=router,
            router_tls=router_tls,
            http01_port=http01_port,
            workdir=workdir,
            changes=changes,
            watching=watching,
        )
