"""Unary GetStatus throughput and latency against a broker holding many domains.

Prints requests/s and p50/p99 latency of ``GetStatus`` (random known domains,
closed loop at a fixed concurrency), then the same client pattern against a
bare ``grpc.aio`` echo server in the same run, and the ratio. The echo server
is the ceiling of "gRPC in Python on this machine": the ratio shows what the
broker's own work (lookup, proto building) costs, independent of the hardware.

    .venv/bin/python bench/getstatus.py [--duration 10] [--concurrency 32]

Both servers are subprocesses on loopback, stopped by PID when the run ends.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time

import grpc
import grpc.aio

# bench/ is on sys.path when this file runs as a script.
from _common import (
    ECHO_METHOD,
    LoadResult,
    broker,
    closed_loop,
    cpu_seconds,
    echo_server,
    machine_info,
    rss_mb,
    section,
)

from certbroker.v1 import broker_pb2, broker_pb2_grpc

TARGET_RATIO = 0.60


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per server")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    p.add_argument("--concurrency", type=int, default=32, help="requests in flight")
    p.add_argument("--channels", type=int, default=1, help="client channels (round robin)")
    p.add_argument("--domains", type=int, default=10_000, help="domains in the broker")
    p.add_argument("--add-concurrency", type=int, default=64, help="parallel adds at setup")
    p.add_argument("--seed", type=int, default=1, help="random seed for domain choice")
    return p.parse_args()


def domain_name(i: int) -> str:
    return f"site{i:05d}.customer{i % 997:03d}.example.com"


async def add_domains(addr: str, count: int, concurrency: int) -> list[str]:
    names = [domain_name(i) for i in range(count)]
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = broker_pb2_grpc.CertificateBrokerServiceStub(channel)
        queue = iter(enumerate(names))

        async def worker() -> None:
            for i, name in queue:
                await stub.IssueCertificate(
                    broker_pb2.IssueCertificateRequest(
                        domain=name, app=f"app{i % 50}", disable_letsencrypt=True
                    ),
                    timeout=30,
                )

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return names


async def load_broker(addr: str, names: list[str], args: argparse.Namespace) -> LoadResult:
    channels = [grpc.aio.insecure_channel(addr) for _ in range(args.channels)]
    stubs = [broker_pb2_grpc.CertificateBrokerServiceStub(c) for c in channels]
    rng = random.Random(args.seed)
    try:

        async def call(i: int) -> object:
            request = broker_pb2.GetStatusRequest(domain=rng.choice(names))
            return await stubs[i % len(stubs)].GetStatus(request, timeout=10)

        return await closed_loop(
            call, duration=args.duration, concurrency=args.concurrency, warmup=args.warmup
        )
    finally:
        for c in channels:
            await c.close()


async def load_echo(addr: str, names: list[str], args: argparse.Namespace) -> LoadResult:
    """Same client shape as the broker's: a proto request out, a proto response parsed."""
    channels = [grpc.aio.insecure_channel(addr) for _ in range(args.channels)]
    methods = [
        c.unary_unary(
            ECHO_METHOD,
            request_serializer=broker_pb2.GetStatusRequest.SerializeToString,
            response_deserializer=broker_pb2.GetStatusRequest.FromString,
        )
        for c in channels
    ]
    rng = random.Random(args.seed)
    try:

        async def call(i: int) -> object:
            request = broker_pb2.GetStatusRequest(domain=rng.choice(names))
            return await methods[i % len(methods)](request, timeout=10)

        return await closed_loop(
            call, duration=args.duration, concurrency=args.concurrency, warmup=args.warmup
        )
    finally:
        for c in channels:
            await c.close()


async def main() -> int:
    args = parse_args()
    print(machine_info())
    print(
        f"settings: {args.domains} domains, concurrency {args.concurrency}, "
        f"{args.channels} channel(s), {args.duration:g} s measured after {args.warmup:g} s "
        "warm-up; client: grpc.aio, one process"
    )
    async with broker() as (addr, proc):
        with section(f"adding {args.domains} domains (disable_letsencrypt)"):
            t0 = time.monotonic()
            names = await add_domains(addr, args.domains, args.add_concurrency)
            took = time.monotonic() - t0
            print(f"   {args.domains / took:.0f} adds/s")
        with section("GetStatus against the broker"):
            cpu0, own0 = cpu_seconds(proc.pid), time.process_time()
            broker_result = await load_broker(addr, names, args)
            cpu, own = cpu_seconds(proc.pid) - cpu0, time.process_time() - own0
            print(f"   broker: {broker_result.summary()}")
            print(
                f"   broker process: {cpu / (args.duration + args.warmup) * 100:.0f} % CPU "
                f"during the load, RSS {rss_mb(proc.pid):.0f} MiB; client process "
                f"{own / (args.duration + args.warmup) * 100:.0f} % CPU"
            )
    async with echo_server() as (addr, proc):
        with section("the same client against a bare grpc.aio echo server"):
            cpu0, own0 = cpu_seconds(proc.pid), time.process_time()
            echo_result = await load_echo(addr, names, args)
            cpu, own = cpu_seconds(proc.pid) - cpu0, time.process_time() - own0
            print(f"   echo:   {echo_result.summary()}")
            print(
                f"   echo process: {cpu / (args.duration + args.warmup) * 100:.0f} % CPU; "
                f"client process {own / (args.duration + args.warmup) * 100:.0f} % CPU"
            )
    ratio = broker_result.rate / echo_result.rate if echo_result.rate else 0.0
    verdict = "meets" if ratio >= TARGET_RATIO else "BELOW"
    print(
        f"result: GetStatus {broker_result.rate:.0f} req/s vs echo {echo_result.rate:.0f} req/s"
        f" = {ratio:.0%} of bare gRPC ({verdict} the {TARGET_RATIO:.0%} target)"
    )
    return 0 if not broker_result.errors else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
