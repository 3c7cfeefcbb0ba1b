"""Several brokers on one PostgreSQL: issuance, takeover after kill -9, GetStatus, CPU.

    python bench/ha.py [--domains 200] [--lease 30] [--duration 10]
                       [--setups sqlite:1,pg:1,pg:2,pg:3] [--no-takeover]

Starts challtestsrv, Pebble (no validation sleep, no authorization reuse) and a
throwaway PostgreSQL (fsync off), then for each setup (SQLite with one broker
for reference; PostgreSQL with 1, 2 and 3 brokers):

- issuance: ``--domains`` domains added through the brokers in turn, all at
  once, until every one is IN_USE: wall time, certificates/s, and CPU seconds
  per certificate of the brokers, Pebble and PostgreSQL (everything shares this
  machine's cores, so CPU per certificate is the figure that carries over);
- GetStatus: one load-generating process per broker (closed loop, 32 in
  flight, ``--duration`` s) against the domains just issued; the sum over
  brokers and the worst p50/p99.

Then the takeover: three brokers on PostgreSQL with ``CERTBROKER_LEASE=--lease``,
``--domains`` domains added; once a broker other than the one Pebble validates
through holds leases on orders already at the CA, it is ``kill -9``-ed. Printed:
how long until every lease it held was claimed by a survivor (target: lease +
5 s at most) and whether Pebble issued exactly one certificate per domain.

Only the first broker listens for HTTP-01 (on Pebble's validation port): the
others' orders are answered through the store, as behind a load balancer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import asyncpg
import grpc
from _common import (
    PYTHON,
    Process,
    broker_env,
    closed_loop,
    cpu_seconds,
    free_port,
    machine_info,
    percentile,
    section,
    start_broker,
)

from certbroker.v1 import broker_pb2, broker_pb2_grpc, domain_pb2
from certbroker.x509.sealing import KeySealer
from tests.infra.challtestsrv import ChallTestSrv
from tests.infra.pebble import Pebble
from tests.infra.postgres import Postgres, create_database

IN_USE = domain_pb2.LETS_ENCRYPT_STATE_IN_USE


@dataclass
class Lab:
    dns: ChallTestSrv
    pebble: Pebble
    postgres: Postgres
    http01: int
    workdir: Path


def tree_cpu_seconds(pid: int | None) -> float:
    """CPU of a process, its live children and its reaped ones (PostgreSQL's backends)."""
    if pid is None:
        return 0.0
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ppid = int(fields[1])
        if int(entry.name) == pid:
            total += sum(int(f) for f in fields[11:15]) / tick  # own + reaped children
        elif ppid == pid:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


@contextlib.asynccontextmanager
async def brokers(
    lab: Lab, db: str, count: int, lease: float, tag: str
) -> AsyncIterator[list[tuple[str, Process]]]:
    """``count`` brokers on ``db`` with one KEK; the first answers Pebble's HTTP-01 requests."""
    kek = lab.workdir / f"{tag}.kek"
    KeySealer.generate_file(str(kek))
    started: list[tuple[str, Process]] = []
    try:
        pending = []
        for i in range(count):
            port = free_port()
            env = broker_env(
                port,
                lab.workdir,
                {
                    "CERTBROKER_DB": db,
                    "CERTBROKER_KEK_FILE": str(kek),
                    "CERTBROKER_ACME_DIRECTORY": lab.pebble.directory_url,
                    "CERTBROKER_ACME_CA_BUNDLE": lab.pebble.ca_bundle_path,
                    "CERTBROKER_DNS_SERVERS": lab.dns.dns_address,
                    "CERTBROKER_PLATFORM_TARGETS": "127.0.0.1",
                    "CERTBROKER_HTTP01_LISTEN": f"127.0.0.1:{lab.http01}" if i == 0 else "off",
                    "CERTBROKER_LEASE": f"{lease:g}s",
                    "CERTBROKER_BROKER_ID": f"{tag}-{i}",
                    "CERTBROKER_QUOTA_PER_REGISTERED_DOMAIN": "1000000",
                    "CERTBROKER_QUOTA_PER_NAME_SET": "1000000",
                },
            )
            log = lab.workdir / f"{tag}-{i}.log"
            pending.append((f"127.0.0.1:{port}", start_broker(env, log, name=f"{tag}-{i}")))
        procs = await asyncio.gather(*(p for _, p in pending))
        started = [(addr, proc) for (addr, _), proc in zip(pending, procs, strict=True)]
        yield started
    finally:
        for _, proc in started:
            proc.stop()


async def add_all(addrs: Sequence[str], names: Sequence[str]) -> None:
    channels = [grpc.aio.insecure_channel(a) for a in addrs]
    stubs = [broker_pb2_grpc.CertificateBrokerServiceStub(c) for c in channels]
    gate = asyncio.Semaphore(64)

    async def add(i: int, name: str) -> None:
        async with gate:
            await stubs[i % len(stubs)].IssueCertificate(
                broker_pb2.IssueCertificateRequest(domain=name, app="bench"), timeout=60
            )

    try:
        await asyncio.gather(*(add(i, n) for i, n in enumerate(names)))
    finally:
        for channel in channels:
            await channel.close()


async def wait_in_use(addr: str, names: Sequence[str], timeout: float = 900) -> None:
    wanted = set(names)
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = broker_pb2_grpc.CertificateBrokerServiceStub(channel)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            done = 0
            after = ""
            while True:
                reply = await stub.ListDomains(
                    broker_pb2.ListDomainsRequest(page_size=1000, page_token=after)
                )
                done += sum(
                    1
                    for d in reply.domains
                    if d.domain in wanted and d.lets_encrypt_state == IN_USE
                )
                after = reply.next_page_token
                if not after:
                    break
            if done == len(wanted):
                return
            await asyncio.sleep(0.2)
    raise RuntimeError(f"not all {len(names)} domains IN_USE within {timeout} s")


def names_for(count: int, tag: str) -> list[str]:
    token = uuid.uuid4().hex[:6]
    return [f"d{i}.{tag}-{token}.example.test" for i in range(count)]


async def issuance(lab: Lab, backend: str, count: int, args: argparse.Namespace) -> None:
    tag = f"{backend}{count}"
    db = (
        str(lab.workdir / f"{tag}.sqlite3")
        if backend == "sqlite"
        else await create_database(lab.postgres, tag)
    )
    names = names_for(args.domains, tag)
    async with brokers(lab, db, count, args.lease, tag) as started:
        addrs = [a for a, _ in started]
        pids = [p.pid for _, p in started]
        cpu = (
            sum(cpu_seconds(p) for p in pids),
            cpu_seconds(lab.pebble.pid or 0),
            tree_cpu_seconds(lab.postgres.pid) if backend != "sqlite" else 0.0,
        )
        issued = lab.pebble.issued_count()
        t0 = time.monotonic()
        await add_all(addrs, names)
        await wait_in_use(addrs[0], names)
        wall = time.monotonic() - t0
        used = (
            sum(cpu_seconds(p) for p in pids) - cpu[0],
            cpu_seconds(lab.pebble.pid or 0) - cpu[1],
            (tree_cpu_seconds(lab.postgres.pid) if backend != "sqlite" else 0.0) - cpu[2],
        )
        n = len(names)
        extra = lab.pebble.issued_count() - issued - n
        label = f"{'SQLite' if backend == 'sqlite' else 'PostgreSQL'}, {count} broker(s)"
        print(
            f"   {label:<24} {n} certificates in {wall:6.1f} s = {n / wall:5.1f}/s   "
            f"CPU s/cert: brokers {used[0] / n:.3f}, Pebble {used[1] / n:.3f}, "
            f"PostgreSQL {used[2] / n:.3f}, total {sum(used) / n:.3f}"
            + (f"   ({extra} extra issuances!)" if extra else ""),
            flush=True,
        )
        rates = await getstatus(addrs, names, args.duration)
        total = sum(r["rate"] for r in rates)
        p50 = max(r["p50"] for r in rates) * 1000
        p99 = max(r["p99"] for r in rates) * 1000
        per = ", ".join(f"{r['rate']:.0f}" for r in rates)
        for i, r in enumerate(rates):
            if r["slow"] or r["errors"]:
                print(
                    f"   {'':<24} broker {i}: {r['slow']} calls over 1 s (the first "
                    f"{r['first_slow_at']:.1f} s into the run, warm-up included), "
                    f"errors {r['errors']}",
                    flush=True,
                )
        print(
            f"   {'':<24} GetStatus {total:7.0f} req/s summed ({per}); "
            f"p50 {p50:.1f} ms, p99 {p99:.1f} ms (worst broker)",
            flush=True,
        )


async def getstatus(addrs: Sequence[str], names: Sequence[str], duration: float) -> list[dict]:
    """One load-generating process per broker, all at once; their figures."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(list(names), f)
    try:
        procs = [
            await asyncio.create_subprocess_exec(
                PYTHON,
                __file__,
                "load",
                addr,
                f.name,
                str(duration),
                stdout=subprocess.PIPE,
            )
            for addr in addrs
        ]
        outs = await asyncio.gather(*(p.communicate() for p in procs))
    finally:
        os.unlink(f.name)
    return [json.loads(out) for out, _ in outs]


async def load(addr: str, names_file: str, duration: float) -> None:
    names = json.loads(Path(names_file).read_text())
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = broker_pb2_grpc.CertificateBrokerServiceStub(channel)

        slow: list[float] = []  # seconds into the run of each call over 1 s
        began = time.monotonic()

        async def call(i: int) -> object:
            started = time.monotonic()
            reply = await stub.GetStatus(
                broker_pb2.GetStatusRequest(domain=names[i % len(names)]), timeout=10
            )
            if time.monotonic() - started > 1.0:
                slow.append(started - began)
            return reply

        result = await closed_loop(call, duration=duration, concurrency=32)
    lat = sorted(result.latencies)
    figures = {"rate": result.rate, "p50": percentile(lat, 50), "p99": percentile(lat, 99)}
    figures |= {"slow": len(slow), "first_slow_at": min(slow, default=0.0)}
    print(json.dumps({**figures, "errors": result.errors}))


async def takeover(lab: Lab, args: argparse.Namespace) -> None:
    dsn = await create_database(lab.postgres, "takeover")
    names = names_for(args.domains, "takeover")
    async with brokers(lab, dsn, 3, args.lease, "take") as started:
        addrs = [a for a, _ in started]
        issued = lab.pebble.issued_count()
        adding = asyncio.create_task(add_all(addrs, names))
        conn = await asyncpg.connect(dsn)
        try:
            victim, held = await busy_broker(conn, ["take-1", "take-2"])
            index = int(victim.rsplit("-", 1)[1])
            killed = time.time()
            os.kill(started[index][1].pid, 9)
            lapse = max(held.values()) / 1e6 - killed  # the latest lease's time left
            taken = await watch_takeover(conn, victim, held)
        finally:
            await conn.close()
        await adding
        survivor = addrs[0]
        await wait_in_use(survivor, names)
        extra = lab.pebble.issued_count() - issued - len(names)
        slowest = max(taken.values()) - killed
        print(
            f"   kill -9 of {victim} holding {len(held)} leases (the last would lapse "
            f"{lapse:.1f} s later): all taken over {slowest:.1f} s after the kill "
            f"(lease {args.lease:g} s, target <= {args.lease + 5:g} s: "
            f"{'met' if slowest <= args.lease + 5 else 'MISSED'}); "
            f"Pebble issued {len(names) + extra} for {len(names)} domains",
            flush=True,
        )


async def busy_broker(
    conn: asyncpg.Connection, candidates: list[str]
) -> tuple[str, dict[str, int]]:
    """A candidate holding at least three leases on orders at the CA; its leases."""
    end = time.monotonic() + 300
    while time.monotonic() < end:
        now = int(time.time() * 1e6)
        rows = await conn.fetch(
            "SELECT d.lease_owner, count(*) FROM domains d JOIN orders o ON o.domain = d.name "
            "WHERE d.lease_until > $1 AND o.order_url <> '' AND d.lease_owner = ANY($2::text[]) "
            "GROUP BY 1 ORDER BY 2 DESC",
            now,
            candidates,
        )
        if rows and rows[0][1] >= 3:
            owner = rows[0][0]
            leases = await conn.fetch(
                "SELECT name, lease_until FROM domains WHERE lease_owner = $1 AND lease_until > $2",
                owner,
                now,
            )
            return owner, {r[0]: r[1] for r in leases}
        await asyncio.sleep(0.01)
    raise RuntimeError("no broker held leases on orders in flight")


async def watch_takeover(
    conn: asyncpg.Connection, victim: str, held: dict[str, int]
) -> dict[str, float]:
    """When each lease the victim held was first seen with another owner (epoch seconds)."""
    seen: dict[str, float] = {}
    end = time.monotonic() + 600
    while len(seen) < len(held) and time.monotonic() < end:
        rows = await conn.fetch(
            "SELECT name, lease_owner FROM domains WHERE name = ANY($1::text[])", list(held)
        )
        now = time.time()
        for name, owner in rows:
            if name not in seen and owner != victim:
                seen[name] = now
        await asyncio.sleep(0.05)
    return seen


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--domains", type=int, default=200)
    p.add_argument("--lease", type=float, default=30.0, help="CERTBROKER_LEASE in seconds")
    p.add_argument("--duration", type=float, default=10.0, help="GetStatus seconds per setup")
    p.add_argument(
        "--setups", default="sqlite:1,pg:1,pg:2,pg:3", help="backend:brokers, comma-separated"
    )
    p.add_argument("--no-takeover", action="store_true")
    return p.parse_args()


async def main(args: argparse.Namespace) -> None:
    print(machine_info())
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    with (
        tempfile.TemporaryDirectory(prefix="certbroker-ha-") as tmp,
        ChallTestSrv.running(default_ipv4="127.0.0.1") as dns,
        Postgres.running() as postgres,
    ):
        http01 = free_port()
        with Pebble.running(
            http_port=http01,
            dns_server=dns.dns_address,
            nonce_reject_percent=0,
            authz_reuse_percent=0,
        ) as pebble:
            lab = Lab(dns, pebble, postgres, http01, Path(tmp))
            with section(f"issuance of {args.domains} domains, then GetStatus"):
                for setup in args.setups.split(","):
                    backend, _, count = setup.partition(":")
                    await issuance(lab, "sqlite" if backend == "sqlite" else "pg", int(count), args)
            if not args.no_takeover:
                with section(f"takeover after kill -9 (3 brokers, lease {args.lease:g} s)"):
                    await takeover(lab, args)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "load":
        asyncio.run(load(sys.argv[2], sys.argv[3], float(sys.argv[4])))
    else:
        asyncio.run(main(parse_args()))
