"""How fast is custom-certificate intake, in-process, next to cryptography's verifier alone?

Why: the upload path has a 2 ms budget per leaf + 2 intermediates bundle. This
prints validations/second and µs/bundle for

1. ``CustomCertificateValidator.validate`` (parse PEM bundle + key, choose the leaf,
   our own checks, path building, re-serialisation, info),
2. cryptography's verifier alone, built once, on pre-parsed certificates,
3. the same verifier with the PEM bundle parsed on every call,

for an all-ECDSA P-256 hierarchy and an RSA-2048 one (a realistic mix of what CAs
issue); then the same intake end to end over gRPC:

4. ``UploadCustom`` against a real broker *subprocess* (its own interpreter, so the
   figures are the server's, not the client's GIL contention), trusting the bench
   PKI's root through ``CERTBROKER_TRUST_BUNDLE``: the same bundle again (validated,
   then a no-op: no write), a new bundle each call (validated, sealed, written with
   its event), and a refused bundle (intermediate missing: INVALID_ARGUMENT), each at
   concurrency 1 (latency) and ``--concurrency`` (throughput), with the broker's CPU
   per call read from /proc, beside a bare ``grpc.aio`` echo server fed the same bytes.

Run from the repository root::

    .venv/bin/python bench/validate.py [--seconds 2] [--duration 5] [--concurrency 8]
    .venv/bin/python bench/validate.py --no-grpc     # the in-process figures only
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.pki

import cryptography
import grpc
import grpc.aio

# bench/ is on sys.path when this file runs as a script.
from _common import ECHO_METHOD, LoadResult, broker, closed_loop, cpu_seconds, echo_server
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store

from certbroker.v1 import broker_pb2, broker_pb2_grpc
from certbroker.x509 import CustomCertificateValidator
from tests.pki import NOW, KeyKind, TestPKI, cached_key

DOMAIN = "www.example.com"


def measure(work: Callable[[], object], seconds: float) -> tuple[int, float]:
    """Run ``work`` repeatedly for about ``seconds``; return (iterations, µs per call)."""
    for _ in range(50):  # warm caches
        work()
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(100):
            work()
        count += 100
        now = time.perf_counter()
        if now >= deadline:
            return count, (now - start) / count * 1e6


def report(label: str, work: Callable[[], object], seconds: float) -> float:
    count, micros = measure(work, seconds)
    print(f"  {label:<46} {1e6 / micros:>9,.0f} /s  {micros:>8.1f} µs  (n={count})")
    return micros


def run(kind: str, root_key: KeyKind, leaf_key: KeyKind, slot: int, seconds: float) -> float:
    pki = TestPKI(kind, key_slot=slot, root_key=root_key)
    leaf = pki.leaf(DOMAIN, key=cached_key(leaf_key, slot + 5))
    bundle = pki.bundle(leaf)
    key = leaf.key_pem()
    print(
        f"\n{kind}: root {root_key}, intermediates p256, leaf {leaf_key}; "
        f"bundle {len(bundle)} B PEM (leaf + 2 intermediates), key {len(key)} B PKCS#8 PEM"
    )
    validator = CustomCertificateValidator([pki.root.cert])
    store = Store([pki.root.cert])
    verifier = PolicyBuilder().store(store).time(NOW).build_server_verifier(x509.DNSName(DOMAIN))
    intermediates = [pki.int2.cert, pki.int1.cert]

    def verifier_only() -> object:
        return verifier.verify(leaf.cert, intermediates)

    def verifier_with_parsing() -> object:
        certs = x509.load_pem_x509_certificates(bundle)
        return verifier.verify(certs[0], certs[1:])

    def full() -> object:
        return validator.validate(DOMAIN, bundle, key, NOW)

    report("cryptography verifier (built once)", verifier_only, seconds)
    report("cryptography verifier + PEM parsing", verifier_with_parsing, seconds)
    return report("CustomCertificateValidator.validate (whole intake)", full, seconds)


# -- over gRPC --------------------------------------------------------------------------


def _worker_domain(n: int) -> str:
    return f"w{n}.bench.example.com"


Call = Callable[[int], Awaitable[object]]


async def _row(
    label: str,
    addr: str,
    pid: int,
    make_call: Callable[[grpc.aio.Channel], Call],
    *,
    duration: float,
    concurrency: int,
) -> LoadResult:
    """One closed-loop run on a fresh channel; prints rate, latency and server CPU per call."""
    warmup = 0.5
    async with grpc.aio.insecure_channel(addr) as channel:
        call = make_call(channel)
        cpu0 = cpu_seconds(pid)
        result = await closed_loop(call, duration=duration, concurrency=concurrency, warmup=warmup)
        cpu = cpu_seconds(pid) - cpu0
    # CPU was counted over warm-up + measurement; scale the measured calls to match.
    calls = len(result.latencies) * (result.seconds + warmup) / result.seconds
    per_call = f"{cpu / calls * 1e6:,.0f}" if calls else "?"
    print(f"  {label:<34} c={concurrency:<3} {result.summary()}  server CPU {per_call} µs/call")
    return result


async def grpc_part(duration: float, concurrency: int) -> None:
    """UploadCustom validations per second through a broker subprocess."""
    now = datetime.now(UTC)  # the subprocess runs on the system clock
    pki = TestPKI("Bench", key_slot=4)
    names = [_worker_domain(n) for n in range(concurrency)]
    # Every leaf names every worker's domain, so workers never contend for one row.
    leaves = [
        pki.leaf(*names, not_before=now - timedelta(days=1), not_after=now + timedelta(days=60))
        for _ in range(2)
    ]
    bundles = [(pki.bundle(leaf), leaf.key_pem()) for leaf in leaves]
    missing = (leaves[0].pem + pki.int1.pem, leaves[0].key_pem())  # int2 left out

    def request(i: int, pair: tuple[bytes, bytes]) -> broker_pb2.UploadCustomRequest:
        return broker_pb2.UploadCustomRequest(
            domain=names[i % concurrency], certificate=pair[0], private_key=pair[1]
        )

    payload = request(0, bundles[0]).SerializeToString()
    print(
        "\nUploadCustom over gRPC (broker subprocess, plaintext loopback, SQLite WAL): "
        f"leaf p256 ({len(names)} SANs) + 2 intermediates, {len(payload)} B per request; "
        f"{duration:g} s measured after 0.5 s warm-up per row"
    )

    def same(channel: grpc.aio.Channel) -> Call:
        stub = broker_pb2_grpc.CertificateBrokerServiceStub(channel)
        return lambda i: stub.UploadCustom(request(i, bundles[0]), timeout=30)

    def new(channel: grpc.aio.Channel) -> Call:
        stub = broker_pb2_grpc.CertificateBrokerServiceStub(channel)
        # each worker alternates between two certificates: every call replaces the last
        return lambda i: stub.UploadCustom(request(i, bundles[(i // concurrency) % 2]), timeout=30)

    def refused(channel: grpc.aio.Channel) -> Call:
        stub = broker_pb2_grpc.CertificateBrokerServiceStub(channel)

        async def call(i: int) -> object:
            try:
                await stub.UploadCustom(request(i, missing), timeout=30)
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.INVALID_ARGUMENT:
                    raise
                return error
            raise AssertionError("a bundle without its intermediate was accepted")

        return call

    def echo(channel: grpc.aio.Channel) -> Call:
        method = channel.unary_unary(ECHO_METHOD)
        return lambda i: method(payload, timeout=30)

    levels = sorted({1, concurrency})
    with tempfile.TemporaryDirectory(prefix="certbroker-bench-trust-") as tmp:
        trust = Path(tmp) / "trust.pem"
        trust.write_bytes(pki.root.pem)
        async with broker({"CERTBROKER_TRUST_BUNDLE": str(trust)}) as (addr, proc):
            async with grpc.aio.insecure_channel(addr) as channel:
                stub = broker_pb2_grpc.CertificateBrokerServiceStub(channel)
                for name in names:
                    await stub.IssueCertificate(
                        broker_pb2.IssueCertificateRequest(
                            domain=name, app="bench", disable_letsencrypt=True
                        )
                    )
            for label, make_call in [
                ("same bundle (validate, no write)", same),
                ("new bundle (validate + write)", new),
                ("refused (intermediate missing)", refused),
            ]:
                for c in levels:
                    await _row(label, addr, proc.pid, make_call, duration=duration, concurrency=c)
    async with echo_server() as (addr, proc):
        for c in levels:
            await _row(
                "bare grpc.aio echo, same bytes",
                addr,
                proc.pid,
                echo,
                duration=duration,
                concurrency=c,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per gRPC row")
    parser.add_argument("--concurrency", type=int, default=8, help="uploads in flight (besides 1)")
    parser.add_argument("--no-grpc", action="store_true", help="skip the over-gRPC part")
    args = parser.parse_args()
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    print(
        f"machine: {platform.machine()} {platform.processor() or ''}".rstrip()
        + f"; cores: {os.cpu_count()} (usable {affinity}); Python {platform.python_version()}; "
        f"cryptography {cryptography.__version__}; grpcio {grpc.__version__}"
    )
    print(
        f"settings: {args.seconds:g} s per in-process measurement (single thread), "
        f"domain {DOMAIN}, budget 2000 µs"
    )
    worst = max(
        run("ECDSA", "p256", "p256", 0, args.seconds),
        run("RSA", "rsa2048", "rsa2048", 1, args.seconds),
    )
    print(
        f"\nworst whole-intake time: {worst:.0f} µs ({'within' if worst < 2000 else 'OVER'} budget)"
    )
    if not args.no_grpc:
        asyncio.run(grpc_part(args.duration, max(args.concurrency, 1)))


if __name__ == "__main__":
    main()
