"""Issuance throughput: N domains added at once until all are IN_USE, against Pebble.

Starts challtestsrv and Pebble (PEBBLE_VA_NOSLEEP=1, PEBBLE_AUTHZREUSE=0, nonce
rejection 0), the broker as a subprocess (its HTTP-01 port is Pebble's httpPort),
adds N domains concurrently and follows WatchStatus until every one is IN_USE.
Against the same Pebble, a bare concurrent acme-library loop issues N names
(bench/bare_acme.py: 16 threads, 50 ms polls) for the ratio broker/bare.

Like with like: one Pebble for both, HTTP-01 on both, ECDSA P-256 certificate
keys and ES256 account keys on both, 16 ACME request threads on both (the
broker's CERTBROKER_ACME_WORKERS default), the account registered before the
clock starts on both (the broker by one untimed warm-up domain, the bare loop
by one untimed warm-up certificate). The broker's figure includes what only it
does: the IssueCertificate RPCs, the DNS/CAA pre-checks, the store writes, and
the WatchStatus events that say IN_USE.

Why pairs: on a shared machine the load moves by the second, and a single run
of each says more about the neighbours than about the broker. Each pair runs
both sides back to back, alternating which goes first; the ratio reported is
the median of the pairs' ratios, with their range and the load average. CPU
seconds per certificate (broker process or bare loop, Pebble, challtestsrv)
say what the time is made of when the cores are the bottleneck.

    .venv/bin/python bench/issuance.py [--domains 50] [--pairs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc

from bench._common import broker, cpu_seconds, machine_info, percentile
from bench.bare_acme import THREADS, run_bare_timed
from certbroker.v1 import broker_pb2, broker_pb2_grpc, domain_pb2
from tests.infra.challtestsrv import ChallTestSrv
from tests.infra.pebble import Pebble
from tests.infra.ports import free_port

DEADLINE_S = 120.0


@dataclass
class Phase:
    """One timed side of a pair: wall seconds and CPU seconds of each process."""

    wall: float
    cpu: float  # the broker process, or the bench process running the bare loop
    loop_cpu: float  # the broker's main thread (its event loop): its serial resource
    pebble_cpu: float
    dns_cpu: float
    p50: float = 0.0
    p95: float = 0.0


class CpuMeter:
    """CPU seconds of Pebble and challtestsrv (and one more process) over a phase."""

    def __init__(self, dns: ChallTestSrv, pebble: Pebble) -> None:
        self._pids = (pebble.pid or 0, dns.pid or 0)

    def read(self) -> tuple[float, float]:
        return cpu_seconds(self._pids[0]), cpu_seconds(self._pids[1])


def _main_thread_cpu(pid: int) -> float:
    """CPU seconds of a process's main thread (where the broker's event loop runs)."""
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def _issue_all(
    stub: broker_pb2_grpc.CertificateBrokerServiceStub,
    watch: grpc.aio.UnaryStreamCall,
    names: list[str],
    started: float,
    errors: dict[str, set[str]] | None = None,
) -> dict[str, float]:
    """Add ``names`` at once; seconds from ``started`` until each is IN_USE.

    ``errors`` collects the domains seen with a failed attempt, by reason: a retry waits
    the broker's backoff (a minute), and a pair with one is not like the others.
    """
    await asyncio.gather(
        *(
            stub.IssueCertificate(broker_pb2.IssueCertificateRequest(domain=name, app="bench"))
            for name in names
        )
    )
    wanted = set(names)
    done: dict[str, float] = {}
    try:
        async with asyncio.timeout(DEADLINE_S - (time.monotonic() - started)):
            async for response in watch:
                domain = response.event.domain
                if domain.retry.last_error_reason and errors is not None:
                    why = f"{domain.retry.last_error_reason}: {domain.retry.last_error_message}"
                    errors.setdefault(why[:160], set()).add(domain.domain)
                if (
                    domain.domain in wanted
                    and domain.lets_encrypt_state == domain_pb2.LETS_ENCRYPT_STATE_IN_USE
                ):
                    done.setdefault(domain.domain, time.monotonic() - started)
                    if len(done) == len(wanted):
                        return done
    except TimeoutError:
        pass
    raise RuntimeError(f"only {len(done)} of {len(names)} IN_USE after {DEADLINE_S:.0f} s")


async def run_broker(
    dns: ChallTestSrv, pebble: Pebble, http01: int, n: int, meter: CpuMeter
) -> tuple[Phase, float]:
    """A fresh broker: one untimed warm-up domain, then ``n`` timed; (phase, peak RSS).

    Failures seen on the way are printed (the broker's log tail too if it fails).
    """
    env = {
        "CERTBROKER_ACME_DIRECTORY": pebble.directory_url,
        "CERTBROKER_ACME_CA_BUNDLE": pebble.ca_bundle_path,
        "CERTBROKER_DNS_SERVERS": dns.dns_address,
        "CERTBROKER_PLATFORM_TARGETS": "127.0.0.1",
        "CERTBROKER_HTTP01_LISTEN": f"127.0.0.1:{http01}",
        "CERTBROKER_MAX_CONCURRENT_ORDERS": str(max(32, n)),
        "CERTBROKER_ACME_WORKERS": str(THREADS),
    }
    run = uuid.uuid4().hex[:8]
    # A registered domain each: the broker keeps Let's Encrypt's 50 certificates per
    # registered domain per week (its limits ledger), which Pebble does not.
    names = [f"www.b{i}-{run}.test" for i in range(n)]
    async with broker(env) as (addr, proc), grpc.aio.insecure_channel(addr) as channel:
        stub = broker_pb2_grpc.CertificateBrokerServiceStub(channel)
        watch = stub.WatchStatus(broker_pb2.WatchStatusRequest(after_revision=0))
        async for response in watch:  # wait for the snapshot to end
            if response.event.type == broker_pb2.EVENT_TYPE_SNAPSHOT_COMPLETE:
                break
        # the account is registered here, as the bare loop's is before its clock starts
        await _issue_all(stub, watch, [f"www.warm-{run}.test"], time.monotonic())
        cpu_before, (pebble_before, dns_before) = cpu_seconds(proc.pid), meter.read()
        loop_before = _main_thread_cpu(proc.pid)
        started = time.monotonic()
        errors: dict[str, set[str]] = {}
        try:
            done = await _issue_all(stub, watch, names, started, errors)
        except RuntimeError:
            print(f"broker log tail:\n{proc.log_tail(40)}", flush=True)
            raise
        finally:
            for why, failed in sorted(errors.items()):
                print(f"   {len(failed)} domain(s) had a failed attempt: {why}", flush=True)
        wall = time.monotonic() - started
        cpu = cpu_seconds(proc.pid) - cpu_before
        loop_cpu = _main_thread_cpu(proc.pid) - loop_before
        pebble_after, dns_after = meter.read()
        watch.cancel()
        times = sorted(done.values())
        phase = Phase(
            wall=wall,
            cpu=cpu,
            loop_cpu=loop_cpu,
            pebble_cpu=pebble_after - pebble_before,
            dns_cpu=dns_after - dns_before,
            p50=percentile(times, 50),
            p95=percentile(times, 95),
        )
        return phase, _peak_rss_mb(proc.pid)


def run_bare_phase(pebble: Pebble, n: int, meter: CpuMeter) -> Phase:
    """The bare loop in this process (nothing else runs here meanwhile)."""
    # Pebble's and challtestsrv's CPU include the untimed warm-up certificate (1 of n + 1)
    pebble_before, dns_before = meter.read()
    wall, cpu = run_bare_timed(pebble, n, warmup=1)
    pebble_after, dns_after = meter.read()
    return Phase(
        wall=wall,
        cpu=cpu,
        loop_cpu=0.0,  # the bare loop has no event loop of its own on the critical path
        pebble_cpu=pebble_after - pebble_before,
        dns_cpu=dns_after - dns_before,
    )


def _range(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f} (range {min(values):.2f}-{max(values):.2f})"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--domains", type=int, default=50)
    parser.add_argument("--pairs", type=int, default=5, help="interleaved broker/bare pairs")
    args = parser.parse_args()
    n = args.domains
    print(machine_info())
    print(
        f"settings: {n} domains per side, {args.pairs} pairs (first side alternating), "
        f"Pebble VA_NOSLEEP=1 AUTHZREUSE=0 NONCEREJECT=0, HTTP-01, P-256 keys, "
        f"{THREADS} ACME threads each, 1 untimed warm-up certificate each"
    )
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    http01 = free_port()
    ratios: list[float] = []
    brokers: list[Phase] = []
    bares: list[Phase] = []
    with (
        ChallTestSrv.running(default_ipv4="127.0.0.1") as dns,
        Pebble.running(
            http_port=http01,
            dns_server=dns.dns_address,
            nonce_reject_percent=0,
            authz_reuse_percent=0,
        ) as pebble,
    ):
        meter = CpuMeter(dns, pebble)
        for pair in range(args.pairs):
            load = os.getloadavg()[0]
            if pair % 2 == 0:
                got, rss = await run_broker(dns, pebble, http01, n, meter)
                bare = await asyncio.to_thread(run_bare_phase, pebble, n, meter)
            else:
                bare = await asyncio.to_thread(run_bare_phase, pebble, n, meter)
                got, rss = await run_broker(dns, pebble, http01, n, meter)
            brokers.append(got)
            bares.append(bare)
            ratios.append(got.wall / bare.wall)
            print(
                f"pair {pair + 1} ({'broker' if pair % 2 == 0 else 'bare'} first, load "
                f"{load:.2f}): broker {got.wall:.2f} s (IN_USE p50 {got.p50:.2f} s, p95 "
                f"{got.p95:.2f} s; CPU broker {got.cpu:.2f} s (event loop {got.loop_cpu:.2f}), "
                f"Pebble {got.pebble_cpu:.2f} s, "
                f"DNS {got.dns_cpu:.2f} s; peak RSS {rss:.0f} MiB) | bare {bare.wall:.2f} s "
                f"(CPU loop {bare.cpu:.2f} s, Pebble {bare.pebble_cpu:.2f} s) | "
                f"ratio {ratios[-1]:.2f}",
                flush=True,
            )
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"broker wall s: {_range([p.wall for p in brokers])}")
    print(f"bare wall s:   {_range([p.wall for p in bares])}")
    per = 1000 / n
    print(
        "CPU ms per certificate (medians): "
        f"broker {statistics.median(p.cpu for p in brokers) * per:.1f} (its event loop "
        f"{statistics.median(p.loop_cpu for p in brokers) * per:.1f}) + Pebble "
        f"{statistics.median(p.pebble_cpu for p in brokers) * per:.1f} + DNS "
        f"{statistics.median(p.dns_cpu for p in brokers) * per:.1f} | bare loop "
        f"{statistics.median(p.cpu for p in bares) * per:.1f} + Pebble "
        f"{statistics.median(p.pebble_cpu for p in bares) * per:.1f} + DNS "
        f"{statistics.median(p.dns_cpu for p in bares) * per:.1f}"
    )
    cpu_ratios = [g.cpu / b.cpu for g, b in zip(brokers, bares, strict=True)]
    print(f"CPU ratio broker/bare loop: {_range(cpu_ratios)}")
    print(f"ratio broker/bare: {_range(ratios)} over {len(ratios)} pairs")


if __name__ == "__main__":
    asyncio.run(main())
