"""A CA outage in the middle of issuance: how fast the broker recovers, and what it costs.

Starts challtestsrv and Pebble (PEBBLE_VA_NOSLEEP=1, PEBBLE_AUTHZREUSE=0, nonce
rejection 0) and the broker as a subprocess. First a baseline: N domains added
at once, time until all are IN_USE. Then a second broker (fresh store) adds N
other domains; when half are IN_USE, Pebble is stopped for ``--outage`` seconds
and restarted on the same ports with its state wiped (accounts, orders, root),
as a staging CA reset would. Printed: the time from the CA's return until all
are IN_USE (target: ≤ 10 s plus the baseline), orders Pebble accepted per
domain (target: ≤ 2), and the broker's CPU while the CA was down (target: idle).

    .venv/bin/python bench/outage.py [--domains 200] [--outage 60]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc

from bench._common import broker, cpu_seconds, machine_info
from certbroker.v1 import broker_pb2, broker_pb2_grpc, domain_pb2
from tests.infra.challtestsrv import ChallTestSrv
from tests.infra.pebble import Pebble
from tests.infra.ports import free_port

IN_USE = domain_pb2.LETS_ENCRYPT_STATE_IN_USE


async def run(
    dns: ChallTestSrv, pebble: Pebble, http01: int, n: int, outage: float | None
) -> dict[str, float]:
    env = {
        "CERTBROKER_ACME_DIRECTORY": pebble.directory_url,
        "CERTBROKER_ACME_CA_BUNDLE": pebble.ca_bundle_path,
        "CERTBROKER_DNS_SERVERS": dns.dns_address,
        "CERTBROKER_PLATFORM_TARGETS": "127.0.0.1",
        "CERTBROKER_HTTP01_LISTEN": f"127.0.0.1:{http01}",
        "CERTBROKER_MAX_CONCURRENT_ORDERS": "32",
        # Every name is under example.test: the weekly quota (50) would hold most of them.
        "CERTBROKER_QUOTA_PER_REGISTERED_DOMAIN": str(10 * n),
    }
    names = [f"o{i}.{uuid.uuid4().hex[:8]}.example.test" for i in range(n)]
    figures: dict[str, float] = {}
    async with broker(env) as (addr, proc), grpc.aio.insecure_channel(addr) as channel:
        stub = broker_pb2_grpc.CertificateBrokerServiceStub(channel)
        watch = stub.WatchStatus(broker_pb2.WatchStatusRequest(after_revision=0))
        async for response in _until(watch, time.monotonic() + 60):  # the snapshot's end
            if response.event.type == broker_pb2.EVENT_TYPE_SNAPSHOT_COMPLETE:
                break
        orders_before = pebble.order_count()
        started = time.monotonic()
        await asyncio.gather(
            *(
                stub.IssueCertificate(broker_pb2.IssueCertificateRequest(domain=name, app="bench"))
                for name in names
            )
        )
        done: set[str] = set()
        held: set[str] = set()
        returned: float | None = None
        deadline = started + 600
        # A domain that never reaches IN_USE must not hang the bench: the watch times out.
        async for response in _until(watch, deadline):
            domain = response.event.domain
            if domain.retry.last_error_reason == "CA_UNAVAILABLE":
                held.add(domain.domain)
            if domain.lets_encrypt_state == IN_USE:
                done.add(domain.domain)
                if len(done) == n:
                    break
                if outage is not None and returned is None and len(done) >= n // 2:
                    figures["in_use_at_stop"] = len(done)
                    await asyncio.to_thread(pebble.stop_keeping_ports)
                    cpu_down = cpu_seconds(proc.pid)
                    down_at = time.monotonic()
                    await asyncio.sleep(outage)
                    figures["cpu_outage"] = cpu_seconds(proc.pid) - cpu_down
                    figures["outage_s"] = time.monotonic() - down_at
                    await asyncio.to_thread(pebble.restart_on_same_ports)
                    returned = time.monotonic()
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(done)} of {n} IN_USE after 600 s")
        end = time.monotonic()
        watch.cancel()
        figures["wall"] = end - started
        figures["orders_per_domain"] = (pebble.order_count() - orders_before) / n
        figures["held"] = len(held)
        if returned is not None:
            figures["after_return"] = end - returned
        attempts = [
            (await stub.GetStatus(broker_pb2.GetStatusRequest(domain=name))).domain.retry.attempt
            for name in names
        ]
        figures["max_attempt"] = max(attempts)
    return figures


async def _until(
    watch: grpc.aio.UnaryStreamCall[broker_pb2.WatchStatusRequest, broker_pb2.WatchStatusResponse],
    deadline: float,
) -> AsyncIterator[broker_pb2.WatchStatusResponse]:
    """The watch's responses until ``deadline`` (then raise: the bench failed)."""
    while True:
        left = deadline - time.monotonic()
        try:
            response = await asyncio.wait_for(watch.read(), timeout=max(0.1, left))
        except TimeoutError:
            raise RuntimeError("not all domains reached IN_USE before the deadline") from None
        if response is grpc.aio.EOF:
            return
        yield response


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--domains", type=int, default=200)
    parser.add_argument("--outage", type=float, default=60.0)
    args = parser.parse_args()
    print(machine_info())
    print(
        f"settings: {args.domains} domains, outage {args.outage:.0f} s with a state reset, "
        "max concurrent orders 32, Pebble VA_NOSLEEP=1 AUTHZREUSE=0 NONCEREJECT=0"
    )
    http01 = free_port()
    with (
        ChallTestSrv.running(default_ipv4="127.0.0.1") as dns,
        Pebble.running(
            http_port=http01,
            dns_server=dns.dns_address,
            nonce_reject_percent=0,
            authz_reuse_percent=0,
        ) as pebble,
    ):
        base = await run(dns, pebble, http01, args.domains, None)
        print(
            f"no outage: {args.domains} IN_USE in {base['wall']:.2f} s, "
            f"orders/domain {base['orders_per_domain']:.2f}"
        )
        got = await run(dns, pebble, http01, args.domains, args.outage)
        print(
            f"outage: CA stopped with {got['in_use_at_stop']:.0f}/{args.domains} IN_USE for "
            f"{got['outage_s']:.1f} s; broker CPU during the outage {got['cpu_outage']:.2f} s "
            f"({100 * got['cpu_outage'] / got['outage_s']:.1f}% of a core); "
            f"{got['held']:.0f} domains shown CA_UNAVAILABLE; "
            f"highest attempt {got['max_attempt']:.0f}"
        )
        target = 10 + base["wall"]
        print(
            f"recovery: all IN_USE {got['after_return']:.2f} s after the CA's return "
            f"(target <= {target:.1f} s = 10 s + no-outage time); "
            f"orders placed per domain {got['orders_per_domain']:.2f} (target <= 2); "
            f"total {got['wall']:.1f} s"
        )


if __name__ == "__main__":
    asyncio.run(main())
