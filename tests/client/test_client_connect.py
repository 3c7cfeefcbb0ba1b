"""The client's channel options against a broker that answers slowly.

A connection attempt must be allowed more than a fraction of a second: the
HTTP/2 preface (after TCP and, in production, a TLS handshake) comes late
from a loaded host or across regions. With ``grpc.min_reconnect_backoff_ms``
at 200 (which gRPC uses as the per-attempt deadline) every call here failed
UNAVAILABLE after 0.2 s.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from certbroker_client.client import BrokerClient, BrokerError
from tests.broker import broker_settings, started_broker

DELAY = 0.6  # seconds before the proxy connects through: the broker "answers late"


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def slow_proxy(port: int) -> AsyncIterator[int]:
    """A TCP proxy to ``port`` that waits ``DELAY`` before passing bytes either way."""
    tasks: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await asyncio.sleep(DELAY)
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except asyncio.CancelledError:
            writer.close()
        finally:
            tasks.discard(task)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_broker_that_answers_late_is_still_reached(tmp_path: Path) -> None:
    async with (
        started_broker(broker_settings(tmp_path)) as broker,
        slow_proxy(broker.running.port) as port,
        BrokerClient.connect(f"127.0.0.1:{port}", timeout=10) as client,
    ):
        with pytest.raises(BrokerError) as answer:
            await client.get_status("late.example.com")
    assert answer.value.code is grpc.StatusCode.NOT_FOUND  # the broker answered
