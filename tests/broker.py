"""A real broker in-process on a free loopback port, called through the generated stubs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc

from certbroker.clock import Clock
from certbroker.config import Settings
from certbroker.delegation import LabelKey
from certbroker.server import Running, run
from certbroker.store.delegation_secret import load_label_key
from certbroker.v1 import broker_pb2_grpc
from certbroker.x509.sealing import KeySealer


def broker_settings(tmp: Path, **overrides: Any) -> Settings:
    base = Settings(
        listen="127.0.0.1:0",
        db=str(tmp / "broker.sqlite3"),
        kek_file=str(tmp / "kek"),
        http01_listen=None,
        health_listen=("127.0.0.1", 0),  # a free port: parallel tests never share 50052
        acme_directory="",
        platform_targets=("127.0.0.1",),
    )
    return replace(base, **overrides)


@dataclass
class BrokerHandle:
    running: Running
    channel: grpc.aio.Channel
    stub: broker_pb2_grpc.CertificateBrokerServiceStub

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.running.port}"


@asynccontextmanager
async def started_broker(
    settings: Settings, clock: Clock | None = None, **run_options: Any
) -> AsyncIterator[BrokerHandle]:
    """``run_options`` go to ``run`` (e.g. ``open_store`` with a fault injected)."""
    running = await run(settings, clock, **run_options)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        yield BrokerHandle(running, channel, broker_pb2_grpc.CertificateBrokerServiceStub(channel))
    finally:
        await channel.close()
        # A stop that hangs is a bug to see, not a test run that never ends.
        await asyncio.wait_for(running.stop(0), timeout=60)


async def label_key(handle: BrokerHandle) -> LabelKey:
    """The broker's DNS-01 label key, read as every replica reads it: from the store, with the KEK.

    Tests use it to create a customer's delegation record before the broker asks for it.
    """
    sealer = KeySealer.load(handle.running.settings.kek_file)
    return await load_label_key(handle.running.store, sealer)
