"""Unary GetStatus throughput and latency against a broker holding many domains.

Prints requests/s and p50/p99 latency of ``GetStatus`` (random known domains,
closed loop at a fixed concurrency), then the same client pattern against a
bare ``grpc.aio`` echo server in the same run, and the ratio. The echo server
is the ceiling of "gRPC in Python on this machine": the ratio shows what the
broker's own work (lookup, proto building) costs, independent of the hardware.

    .venv/bin/python bench/getstatus.py [--duration 10] [--concurrency 32]

``--telemetry`` compares the broker with itself instead: the same load with
Prometheus metrics (``CERTBROKER_METRICS_LISTEN``, scraped over HTTP every
``--scrape-interval`` seconds during the load) and JSON logs at INFO, against
metrics off and text logs, in alternating rounds (off/on, then on/off) so
drift on a shared machine hits both. Every domain gets a custom certificate
first (``--certs``), so the expiry gauge has one series per domain; the
database is filled once and each round starts from a copy. Target: on at
least 90 % of off. Use ``--duration 30`` or more so that scrapes (every 15 s,
a common Prometheus interval) fall inside the measured time.

Both servers are subprocesses on loopback, stopped by PID when the run ends.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

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
    free_port,
    machine_info,
    rss_mb,
    section,
)

from certbroker.v1 import broker_pb2, broker_pb2_grpc

TARGET_RATIO = 0.60
TELEMETRY_TARGET = 0.90


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per server")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    p.add_argument("--concurrency", type=int, default=32, help="requests in flight")
    p.add_argument("--channels", type=int, default=1, help="client channels (round robin)")
    p.add_argument("--domains", type=int, default=10_000, help="domains in the broker")
    p.add_argument("--add-concurrency", type=int, default=64, help="parallel adds at setup")
    p.add_argument("--seed", type=int, default=1, help="random seed for domain choice")
    p.add_argument("--telemetry", action="store_true", help="metrics+JSON logs on vs off")
    p.add_argument("--rounds", type=int, default=3, help="--telemetry: off/on pairs")
    p.add_argument("--certs", type=int, default=-1, help="--telemetry: custom certs (-1: all)")
    p.add_argument(
        "--scrape-interval", type=float, default=15.0, help="--telemetry: seconds between scrapes"
    )
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


class _Certificates:
    """A private CA (tests/pki.py) and one leaf per domain, valid now by the wall clock."""

    def __init__(self, names: list[str]) -> None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests.pki import TestPKI

        self.pki = TestPKI("Bench")
        now = datetime.now(UTC)
        self.bundles = {}
        for name in names:
            leaf = self.pki.leaf(
                name, not_before=now - timedelta(days=1), not_after=now + timedelta(days=60)
            )
            self.bundles[name] = (self.pki.bundle(leaf), leaf.key_pem())

    def trust_file(self, directory: Path) -> Path:
        path = directory / "bench-trust.pem"
        path.write_bytes(self.pki.root.pem)
        return path


async def upload_certs(addr: str, certs: _Certificates, concurrency: int) -> None:
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = broker_pb2_grpc.CertificateBrokerServiceStub(channel)
        queue = iter(certs.bundles.items())

        async def worker() -> None:
            for name, (bundle, key) in queue:
                await stub.UploadCustom(
                    broker_pb2.UploadCustomRequest(
                        domain=name, certificate=bundle, private_key=key
                    ),
                    timeout=60,
                )

        await asyncio.gather(*(worker() for _ in range(concurrency)))


async def scraper(port: int, interval: float, took: list[float], sizes: list[int]) -> None:
    """GET /metrics every ``interval`` s (in a thread, like Prometheus from outside)."""

    def get() -> int:
        url = f"http://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, timeout=30) as reply:
            return len(reply.read())

    while True:
        t0 = time.monotonic()
        sizes.append(await asyncio.to_thread(get))
        took.append(time.monotonic() - t0)
        await asyncio.sleep(interval)


async def prepare(
    args: argparse.Namespace, names: list[str], certs: _Certificates, folder: Path
) -> dict[str, str]:
    """Fill one database (domains, custom certificates) that every round starts from a copy of.

    Uploads are the slow part (each chain is validated): doing them once keeps the
    rounds short enough to run several, which a shared machine's noise needs.
    """
    env = {
        "CERTBROKER_DB": str(folder / "db.sqlite3"),
        "CERTBROKER_KEK_FILE": str(folder / "kek"),
        "CERTBROKER_TRUST_BUNDLE": str(certs.trust_file(folder)),
    }
    async with broker(env) as (addr, _):
        with section(f"preparing {len(names)} domains, {len(certs.bundles)} custom certificates"):
            await add_domains(addr, len(names), args.add_concurrency)
            await upload_certs(addr, certs, args.add_concurrency)
    return env


def _copy_store(prepared: dict[str, str], folder: Path) -> dict[str, str]:
    for key in ("CERTBROKER_DB", "CERTBROKER_KEK_FILE"):
        source = Path(prepared[key])
        for path in (source, *source.parent.glob(f"{source.name}-*")):
            shutil.copy2(path, folder / path.name)
    return {
        **prepared,
        "CERTBROKER_DB": str(folder / Path(prepared["CERTBROKER_DB"]).name),
        "CERTBROKER_KEK_FILE": str(folder / Path(prepared["CERTBROKER_KEK_FILE"]).name),
    }


async def telemetry_round(
    args: argparse.Namespace, on: bool, names: list[str], prepared: dict[str, str]
) -> tuple[LoadResult, float]:
    """One broker, one load; returns the result and the broker's CPU seconds during it."""
    label = "metrics + JSON logs ON " if on else "metrics + JSON logs OFF"
    metrics_port = free_port()
    with tempfile.TemporaryDirectory(prefix="certbroker-bench-round-") as tmp:
        extra = _copy_store(prepared, Path(tmp))
        if on:
            extra |= {
                "CERTBROKER_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
                "CERTBROKER_LOG_FORMAT": "json",
                "CERTBROKER_LOG_LEVEL": "INFO",
            }
        async with broker(extra) as (addr, proc):
            took: list[float] = []
            sizes: list[int] = []
            scraping = (
                asyncio.create_task(scraper(metrics_port, args.scrape_interval, took, sizes))
                if on
                else None
            )
            with section(f"{label}: GetStatus load"):
                cpu0 = cpu_seconds(proc.pid)
                result = await load_broker(addr, names, args)
                cpu = cpu_seconds(proc.pid) - cpu0
                if scraping is not None:
                    scraping.cancel()
                print(f"   {result.summary()}")
                print(
                    f"   broker {cpu / (args.duration + args.warmup) * 100:.0f} % CPU, "
                    f"RSS {rss_mb(proc.pid):.0f} MiB; load average {os.getloadavg()[0]:.2f}"
                )
                if took:
                    print(
                        f"   {len(took)} scrapes, {sizes[-1] / 1024:.0f} KiB each, "
                        f"{sum(took) / len(took) * 1000:.0f} ms on average, "
                        f"{max(took) * 1000:.0f} ms the slowest"
                    )
    return result, cpu


async def main_telemetry(args: argparse.Namespace) -> int:
    names = [domain_name(i) for i in range(args.domains)]
    count = args.domains if args.certs < 0 else min(args.certs, args.domains)
    with section(f"making {count} certificates"):
        certs = _Certificates(names[:count])
    off: list[LoadResult] = []
    on: list[LoadResult] = []
    cpu: dict[bool, float] = {False: 0.0, True: 0.0}
    with tempfile.TemporaryDirectory(prefix="certbroker-bench-prepared-") as tmp:
        prepared = await prepare(args, names, certs, Path(tmp))
        for round_ in range(args.rounds):
            for enabled in (False, True) if round_ % 2 == 0 else (True, False):
                result, seconds = await telemetry_round(args, enabled, names, prepared)
                (on if enabled else off).append(result)
                cpu[enabled] += seconds
    rate_off = sum(r.rate for r in off) / len(off)
    rate_on = sum(r.rate for r in on) / len(on)
    ratio = rate_on / rate_off if rate_off else 0.0
    verdict = "meets" if ratio >= TELEMETRY_TARGET else "BELOW"
    print(
        "result: GetStatus with metrics + JSON logs "
        f"{' / '.join(f'{r.rate:.0f}' for r in on)} req/s vs off "
        f"{' / '.join(f'{r.rate:.0f}' for r in off)} req/s: mean {rate_on:.0f} vs "
        f"{rate_off:.0f} = {ratio:.0%} ({verdict} the {TELEMETRY_TARGET:.0%} target); "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    # Requests per second of broker CPU: what the telemetry costs, whatever share of the
    # cores the other processes on a shared machine left the broker in each round.
    per_cpu = {
        enabled: sum(len(r.latencies) for r in runs) / cpu[enabled] if cpu[enabled] else 0.0
        for enabled, runs in ((False, off), (True, on))
    }
    print(
        f"per broker CPU-second: {per_cpu[True]:.0f} GetStatus with telemetry vs "
        f"{per_cpu[False]:.0f} without = {per_cpu[True] / per_cpu[False]:.0%}"
        if per_cpu[False]
        else "per broker CPU-second: unknown (no /proc)"
    )
    errors = any(r.errors for r in (*on, *off))
    return 0 if not errors else 1


async def main() -> int:
    args = parse_args()
    print(machine_info())
    print(
        f"settings: {args.domains} domains, concurrency {args.concurrency}, "
        f"{args.channels} channel(s), {args.duration:g} s measured after {args.warmup:g} s "
        "warm-up; client: grpc.aio, one process"
    )
    if args.telemetry:
        return await main_telemetry(args)
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
