"""Pebble and the broker (a process, with mTLS) for the tests of what serves its certificates.

The reference router (tests/router/) and the sync agents (tests/sync/) meet the
broker as in production: over mTLS, ``router-1`` in the ``router`` role (the only
one that receives keys) and ``api-1`` in the ``api`` role, as which the tests
manage domains. Pebble validates HTTP-01 through ``pebble_http_port``, the HTTP
port of the router or proxy under test, which forwards ``/.well-known/acme-challenge/``
to the broker's responder on ``MtlsLab.http01_port``. Each suite adds its own
router or proxy on top.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from certbroker_client.client import BrokerClient, TlsFiles
from tests.broker import broker_settings
from tests.infra.challtestsrv import ChallTestSrv
from tests.infra.pebble import Pebble
from tests.infra.ports import free_port
from tests.integration.lab import NINETY_DAYS, BrokerProcess
from tests.tls import MtlsFiles


@dataclass
class MtlsLab:
    """The running CA and broker, and the identities to reach the broker with."""

    pebble: Pebble
    broker: BrokerProcess
    mtls: MtlsFiles
    api: BrokerClient
    router_tls: TlsFiles
    http01_port: int

    @property
    def broker_addr(self) -> str:
        return f"127.0.0.1:{self.broker.port}"


@contextlib.asynccontextmanager
async def mtls_lab(
    workdir: Path,
    dns: ChallTestSrv,
    *,
    pebble_http_port: int,
    trust_root: bytes,
    validity_seconds: int = NINETY_DAYS,
) -> AsyncIterator[MtlsLab]:
    """Start Pebble and the broker (trusting ``trust_root`` for custom uploads); stop both by PID.

    ``api`` is connected as ``api-1`` and closed on the way out; ``router_tls``
    is the ``router-1`` identity for the caller's router or agent.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    http01_port, broker_port = free_port(), free_port()
    mtls = MtlsFiles(workdir / "mtls")
    server_id, router_id, api_id = (
        mtls.issue("broker", server=True),
        mtls.issue("router-1"),
        mtls.issue("api-1"),
    )
    trust = workdir / "trust.pem"
    trust.write_bytes(trust_root)
    async with contextlib.AsyncExitStack() as stack:
        pebble = stack.enter_context(
            Pebble.running(
                http_port=pebble_http_port,
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
        broker = BrokerProcess(
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
        yield MtlsLab(
            pebble=pebble,
            broker=broker,
            mtls=mtls,
            api=api,
            router_tls=TlsFiles(ca=mtls.ca, cert=router_id.cert, key=router_id.key),
            http01_port=http01_port,
        )
