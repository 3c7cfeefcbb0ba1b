"""Issuance throughput: N domains added at once until all are IN_USE, against Pebble.

Starts challtestsrv and Pebble (PEBBLE_VA_NOSLEEP=1, PEBBLE_AUTHZREUSE=0, nonce
rejection 0), the broker as a subprocess (its HTTP-01 port is Pebble's httpPort),
adds N domains concurrently and follows WatchStatus until every one is IN_USE.
Then, against the same Pebble, a bare concurrent acme-library loop issues N names
(bench/bare_acme.py: 16 threads, 50 ms polls) for the ratio broker/bare.

    .venv/bin/python bench/issuance.py [--domains 50] [--runs 1]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc

from bench._common import broker, cpu_seconds, machine_info, percentile
from bench.bare_acme import run_bare
from certbroker.v1 import broker_pb2, broker_pb2_grpc, domain_pb2
from tests.infra.challtestsrv import ChallTestSrv
from tests.infra.pebble import Pebble
from tests.infra.ports import free_port


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def run_broker(dns: ChallTestSrv, pebble: Pebble, http01: int, n: int) -> dict[str, float]:
    env = {
        "CERTBROKER_ACME_DIRECTORY": pebble.directory_url,
        "CERTBROKER_ACME_CA_BUNDLE": pebble.ca_bundle_path,
        "CERTBROKER_DNS_SERVERS": dns.dns_address,
        "CERTBROKER_PLATFORM_TARGETS": "127.0.0.1",
        "CERTBROKER_HTTP01_LISTEN": f"127.0.0.1:{http01}",
        "CERTBROKER_MAX_CONCURRENT_ORDERS": str(max(32, n)),
    }
    names = [f"b{i}.{uuid.uuid4().hex[:8]}.example.test" for i in range(n)]
    async with broker(env) as (addr, proc), grpc.aio.insecure_channel(addr) as channel:
        stub = broker_pb2_grpc.CertificateBrokerServiceStub(channel)
        watch = stub.WatchStatus(broker_pb2.WatchStatusRequest(after_revision=0))
        async for response in watch:  # wait for the snapshot to end
            if response.event.type == broker_pb2.EVENT_TYPE_SNAPSHOT_COMPLETE:
                break
        cpu_before = cpu_seconds(proc.pid)
        started = time.monotonic()
        await asyncio.gather(
            *(
                stub.IssueCertificate(broker_pb2.IssueCertificateRequest(domain=name, app="bench"))
                for name in names
            )
        )
        done: dict[str, float] = {}
        deadline = started + 120
        async for response in watch:
            event = response.event
            if event.domain.lets_encrypt_state == domain_pb2.LETS_ENCRYPT_STATE_IN_USE:
                done.setdefault(event.domain.domain, time.monotonic() - started)
                if len(done) == n:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(done)} of {n} IN_USE after 120 s")
        wall = time.monotonic() - started
        watch.cancel()
        times = sorted(done.values())
        return {
            "wall": wall,
            "p50": percentile(times, 50),
            "p95": percentile(times, 95),
            "cpu": cpu_seconds(proc.pid) - cpu_before,
            "peak_rss": _peak_rss_mb(proc.pid),
        }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--domains", type=int, default=50)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    print(machine_info())
    print(f"settings: {args.domains} domains, Pebble VA_NOSLEEP=1 AUTHZREUSE=0 NONCEREJECT=0")
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
        for run in range(args.runs):
            got = await run_broker(dns, pebble, http01, args.domains)
            bare = await asyncio.to_thread(run_bare, pebble, args.domains)
            print(
                f"run {run + 1}: broker {args.domains} IN_USE in {got['wall']:.2f} s "
                f"({args.domains / got['wall']:.1f} certs/s; time-to-IN_USE p50 "
                f"{got['p50']:.2f} s, p95 {got['p95']:.2f} s; broker CPU {got['cpu']:.2f} s, "
                f"peak RSS {got['peak_rss']:.0f} MiB) | bare acme loop {bare:.2f} s "
                f"({args.domains / bare:.1f} certs/s) | ratio broker/bare {got['wall'] / bare:.2f}"
            )


if __name__ == "__main__":
    asyncio.run(main())
