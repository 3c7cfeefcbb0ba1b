"""GetStatus latency while another process sends oversized and malformed requests at full speed.

One broker; phases alternate in the same run (so load from other processes on
the machine hits both alike): GetStatus alone, paced at a fixed rate so both
kinds of phase carry the same load, then GetStatus while an abuser process
sends every kind of bad request back to back; a last phase alone. It prints
p50/p99 of each phase and of all phases of each kind, the abuser's calls per
kind and the status codes they got, and p99 under abuse against p99 without
(target: at most 2x). The figures come with ``uptime`` before and after.
Refusals are tallied by code and ErrorInfo reason, so the broker's per-peer
fairness (``TOO_MANY_BAD_REQUESTS``, ``TOO_MANY_IN_FLIGHT``, see
``certbroker.api.fairness``) shows apart from the field checks; ``--no-fairness``
turns it off in the broker to see what it buys.

    .venv/bin/python bench/abuse.py [--rounds 3] [--duration 5] [--mode cycle|per-kind]
        [--in-flight 4] [--control] [--no-fairness]

The abuser is this file run with ``--abuser ADDR``; everything is on loopback and
every process is stopped by its PID. Loops are bounded by time and by count.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import grpc.aio

# bench/ is on sys.path when this file runs as a script.
from _common import PYTHON, ROOT, LoadResult, broker, cpu_seconds, machine_info, percentile, section
from getstatus import add_domains
from google.protobuf.message import Message

from certbroker.v1 import broker_pb2, broker_pb2_grpc
from certbroker_client.client import BrokerError

TARGET = 2.0
KIND_NAMES = (  # the keys of _kinds(), in its order
    "GetStatus 2 MB domain",
    "GetStatus 200 KB domain",
    "GetStatus 253-char IDN",
    "GetStatus malformed name",
    "GetStatus garbage bytes",
    "WatchStatus 1,001 names",
    "WatchStatus 1,000 bad names",
    "WatchStatus 200k names",
    "UploadCustom 1,200 SANs",
    "UploadCustom 100 KB field",
    "ListDomains 100 KB token",
    "IssueCertificate 100 KB app",
)
MAX_CALLS = 2_000_000  # per process, whatever the duration says
SERVICE = "/certbroker.v1.CertificateBrokerService/"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per phase")
    p.add_argument("--rounds", type=int, default=3, help="alone/abused phase pairs")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds per phase")
    p.add_argument("--rate", type=float, default=200.0, help="GetStatus calls per second")
    p.add_argument("--concurrency", type=int, default=8, help="GetStatus calls in flight at most")
    p.add_argument("--in-flight", type=int, default=4, help="abuser workers (per kind: each)")
    p.add_argument(
        "--mode",
        choices=["cycle", "per-kind"],
        default="cycle",
        help="cycle: each worker goes round every kind; per-kind: workers for each kind",
    )
    p.add_argument(
        "--control",
        action="store_true",
        help="also a phase with valid GetStatus sent the same way (what any flood costs)",
    )
    p.add_argument("--domains", type=int, default=1000, help="domains in the broker")
    p.add_argument("--only", default="", help="send only the kinds whose name contains this")
    p.add_argument(
        "--skip", default="", help="comma-separated: leave out kinds whose name contains one"
    )
    p.add_argument(
        "--no-fairness",
        action="store_true",
        help="broker without its per-peer limits (CERTBROKER_*_PER_PEER off)",
    )
    p.add_argument("--abuser", metavar="ADDR", help=argparse.SUPPRESS)
    p.add_argument("--victim", default="", help=argparse.SUPPRESS)
    return p.parse_args()


def _chosen(kind: str, args: argparse.Namespace) -> bool:
    skipped = [part.strip() for part in args.skip.split(",") if part.strip()]
    return args.only in kind and not any(part in kind for part in skipped)


def uptime() -> str:
    try:
        return subprocess.run(
            ["uptime"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        return "load average: " + " ".join(f"{x:.2f}" for x in os.getloadavg())


# -- the abuser ---------------------------------------------------------------------------


def _san_leaf(count: int) -> tuple[bytes, bytes]:
    """A self-signed leaf naming ``count`` other hosts: refused for the name, listing SANs."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "abuse")])
    now = datetime.now(UTC)
    sans = [x509.DNSName(f"host{i:05d}.elsewhere-example.net") for i in range(count)]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _kinds(channel: grpc.aio.Channel, victim: str) -> dict[str, Callable[[], Awaitable[object]]]:
    """Every bad request the abuser sends, by name; each returns when refused.

    Requests are serialised once here and sent as bytes, so the abuser spends its
    CPU on sending, not on building 2 MB strings and 200,000-entry lists.
    """
    cert, key = _san_leaf(1200)
    idn = "ü" * 60

    def unary(method: str, request: Message) -> Callable[[], Awaitable[object]]:
        call = channel.unary_unary(SERVICE + method)
        data = request.SerializeToString()
        return lambda: call(data, timeout=30)

    def stream(request: broker_pb2.WatchStatusRequest) -> Callable[[], Awaitable[object]]:
        call = channel.unary_stream(SERVICE + "WatchStatus")
        data = request.SerializeToString()

        async def watch() -> None:
            async for _ in call(data, timeout=30):
                pass

        return watch

    def get(domain: str) -> Callable[[], Awaitable[object]]:
        return unary("GetStatus", broker_pb2.GetStatusRequest(domain=domain))

    garbage = channel.unary_unary(SERVICE + "GetStatus")
    return {
        "GetStatus 2 MB domain": get("-a." * 700_000),
        "GetStatus 200 KB domain": get("-a." * 66_000),
        "GetStatus 253-char IDN": get(".".join([idn] * 4) + ".de"),
        "GetStatus malformed name": get("bad..-name_.example"),
        "GetStatus garbage bytes": lambda: garbage(b"\xff\xff\xff\xff\x0f" * 100, timeout=30),
        "WatchStatus 1,001 names": stream(
            broker_pb2.WatchStatusRequest(domains=[f"n{i}.example.com" for i in range(1001)])
        ),
        "WatchStatus 1,000 bad names": stream(
            broker_pb2.WatchStatusRequest(
                domains=[f"{idn}{i}.de" for i in range(16)]
                + [f"x_{i}.{'a' * 60}.example" for i in range(984)]
            )
        ),
        "WatchStatus 200k names": stream(
            broker_pb2.WatchStatusRequest(domains=[f"n{i}.example.com" for i in range(200_000)])
        ),
        "UploadCustom 1,200 SANs": unary(
            "UploadCustom",
            broker_pb2.UploadCustomRequest(domain=victim, certificate=cert, private_key=key),
        ),
        "UploadCustom 100 KB field": unary(
            "UploadCustom",
            broker_pb2.UploadCustomRequest(domain=victim, certificate=b"A" * 100_000),
        ),
        "ListDomains 100 KB token": unary(
            "ListDomains", broker_pb2.ListDomainsRequest(page_token="A" * 100_000)
        ),
        "IssueCertificate 100 KB app": unary(
            "IssueCertificate", broker_pb2.IssueCertificateRequest(domain=victim, app="a" * 100_000)
        ),
    }


async def abuse(args: argparse.Namespace) -> int:
    """Send bad requests back to back until the time is up; print the tally as JSON.

    ``cycle``: ``--in-flight`` workers, each going round all kinds (a client sending
    one bad request after another). ``per-kind``: that many workers for each kind,
    so slow kinds (2 MB sends) do not pace the cheap ones. ``--control`` sends a
    valid GetStatus instead, with the same number in flight: the same load made of
    good requests, to tell what the bad ones cost from what any flood costs.
    """
    tally: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    options = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
    async with grpc.aio.insecure_channel(args.abuser, options=options) as channel:
        every = _kinds(channel, args.victim)
        assert tuple(every) == KIND_NAMES, "KIND_NAMES must list _kinds() in order"
        kinds = [(k, c) for k, c in every.items() if _chosen(k, args)]
        workers = args.in_flight * (len(kinds) if args.mode == "per-kind" else 1)
        if args.control:
            valid = broker_pb2.GetStatusRequest(domain=args.victim).SerializeToString()
            get = channel.unary_unary(SERVICE + "GetStatus")
            kinds = [("GetStatus valid (control)", lambda: get(valid, timeout=30))]
        stop_at = time.monotonic() + args.duration
        calls = 0
        print("ready", flush=True)

        async def worker(offset: int) -> None:
            nonlocal calls
            i = offset
            while time.monotonic() < stop_at and calls < MAX_CALLS:
                name, call = kinds[i % len(kinds)]
                i += 1 if args.mode == "cycle" else 0
                calls += 1
                try:
                    await call()
                    tally[f"{name}: OK"] += 1
                except grpc.RpcError as error:
                    refusal = BrokerError.from_rpc_error(error)
                    reason = f" {refusal.reason}" if refusal.reason else " (gRPC's own)"
                    tally[f"{name}: {refusal.code.name}{reason}"] += 1
                    sizes[name] = max(sizes[name], len(refusal.message.encode()))

        await asyncio.gather(*(worker(n) for n in range(workers)))
    print(json.dumps({"tally": tally, "largest_message": sizes}), flush=True)
    return 0


# -- the measuring side -------------------------------------------------------------------


async def paced_getstatus(
    stub: broker_pb2_grpc.CertificateBrokerServiceStub,
    names: list[str],
    args: argparse.Namespace,
) -> LoadResult:
    """GetStatus at ``args.rate`` per second (open loop, at most ``concurrency`` in flight).

    Latency is measured from the call's scheduled start, so a stalled broker
    shows as latency rather than as fewer calls.
    """
    rng = random.Random(1)
    result = LoadResult(seconds=args.duration)
    interval = 1.0 / args.rate
    slots = asyncio.Semaphore(args.concurrency)
    start = time.perf_counter()
    measure_from = start + args.warmup
    end = measure_from + args.duration
    tasks: set[asyncio.Task[None]] = set()

    async def one(scheduled: float) -> None:
        try:
            await stub.GetStatus(broker_pb2.GetStatusRequest(domain=rng.choice(names)), timeout=10)
        except grpc.RpcError as error:
            code = error.code().name if hasattr(error, "code") else "?"
            result.errors[code] = result.errors.get(code, 0) + 1
        else:
            if scheduled >= measure_from:
                result.latencies.append(time.perf_counter() - scheduled)
        finally:
            slots.release()

    n = 0
    while n < MAX_CALLS:
        scheduled = start + n * interval
        if scheduled >= end:
            break
        await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
        await slots.acquire()
        task = asyncio.create_task(one(scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        n += 1
    await asyncio.gather(*tasks)
    return result


def _report(label: str, result: LoadResult, extra: str = "") -> None:
    lat = sorted(result.latencies)
    errors = ", ".join(f"{k}={v}" for k, v in sorted(result.errors.items())) or "none"
    print(
        f"   {label}: p50 {percentile(lat, 50) * 1000:6.2f} ms  p99 "
        f"{percentile(lat, 99) * 1000:6.2f} ms  max {lat[-1] * 1000 if lat else 0:6.1f} ms  "
        f"({len(lat)} ok, errors: {errors}) {extra}"
    )


def _merge(results: list[LoadResult]) -> LoadResult:
    merged = LoadResult(seconds=sum(r.seconds for r in results))
    for result in results:
        merged.latencies.extend(result.latencies)
        for code, count in result.errors.items():
            merged.errors[code] = merged.errors.get(code, 0) + count
    return merged


async def _abused_round(
    stub: broker_pb2_grpc.CertificateBrokerServiceStub,
    addr: str,
    names: list[str],
    args: argparse.Namespace,
    tally: Counter[str],
    largest: list[int],
    *,
    control: bool = False,
) -> LoadResult:
    """One phase of paced GetStatus with an abuser (or control) process running beside it."""
    argv = [PYTHON, str(Path(__file__).resolve()), "--abuser", addr, "--victim", names[0]]
    argv += ["--duration", str(args.duration + args.warmup + 2), "--mode", args.mode]
    argv += ["--in-flight", str(args.in_flight), "--only", args.only, "--skip", args.skip]
    argv += ["--control"] if control else []
    abuser = subprocess.Popen(argv, stdout=subprocess.PIPE, cwd=ROOT, text=True)
    try:
        assert abuser.stdout is not None
        ready = await asyncio.to_thread(abuser.stdout.readline)
        if not ready.startswith("ready"):
            raise RuntimeError(f"abuser did not start: {ready!r}")
        result = await paced_getstatus(stub, names, args)
        out, _ = await asyncio.to_thread(abuser.communicate, timeout=60)
    finally:
        if abuser.poll() is None:
            abuser.kill()  # by PID, our own child
            abuser.wait(10)
    report = json.loads(out.strip().splitlines()[-1])
    tally.update(report["tally"])
    largest.append(max(report["largest_message"].values(), default=0))
    return result


async def measure(args: argparse.Namespace) -> int:
    print(machine_info())
    print(f"before: {uptime()}")
    kinds = sum(1 for name in KIND_NAMES if _chosen(name, args))
    in_flight = args.in_flight * (kinds if args.mode == "per-kind" else 1)
    fairness = "off" if args.no_fairness else "on (defaults)"
    print(
        f"settings: {args.domains} domains; GetStatus paced at {args.rate:g}/s (at most "
        f"{args.concurrency} in flight); {args.rounds} rounds of {args.duration:g} s alone, "
        f"under abuse{', under a valid flood' if args.control else ''} "
        f"(+{args.warmup:g} s warm-up each), then alone once more; abuser: a separate "
        f"process, mode {args.mode}, {in_flight} bad requests in flight, back to back; "
        f"per-peer fairness {fairness}"
    )
    phases: dict[str, list[LoadResult]] = {"alone": [], "under abuse": [], "valid flood": []}
    tally: Counter[str] = Counter()
    control_tally: Counter[str] = Counter()
    largest: list[int] = []
    off = {"CERTBROKER_MAX_INFLIGHT_PER_PEER": "0", "CERTBROKER_BAD_REQUESTS_PER_PEER": "off"}
    async with broker(off if args.no_fairness else None) as (addr, proc):
        with section(f"adding {args.domains} domains"):
            names = await add_domains(addr, args.domains, 32)
        async with grpc.aio.insecure_channel(addr) as channel:
            stub = broker_pb2_grpc.CertificateBrokerServiceStub(channel)

            async def phase(label: str) -> None:
                cpu0 = cpu_seconds(proc.pid)
                if label == "alone":
                    result = await paced_getstatus(stub, names, args)
                else:
                    into = tally if label == "under abuse" else control_tally
                    control = label == "valid flood"
                    result = await _abused_round(
                        stub, addr, names, args, into, largest, control=control
                    )
                busy = (cpu_seconds(proc.pid) - cpu0) / (result.seconds + args.warmup)
                phases[label].append(result)
                _report(f"{label:<11}", result, f"broker CPU {busy * 100:3.0f} %")

            for number in range(1, args.rounds + 1):
                with section(f"round {number}"):
                    await phase("alone")
                    await phase("under abuse")
                    if args.control:
                        await phase("valid flood")
            with section("alone once more"):
                await phase("alone")
    print("abuser calls by kind and the status they got (all rounds):")
    for key, count in sorted((tally + control_tally).items()):
        print(f"   {key:<68} {count:7d}")
    seconds = sum(r.seconds + args.warmup for r in phases["under abuse"])
    print(
        f"abuser: {sum(tally.values()) / seconds:.0f} bad requests/s on average; largest "
        f"error message it received: {max(largest, default=0)} bytes"
    )
    paced = sum(n for key, n in tally.items() if key.endswith(("_IN_FLIGHT", "_BAD_REQUESTS")))
    if paced:
        print(
            f"        {paced} of them refused by per-peer fairness before being read "
            "(TOO_MANY_BAD_REQUESTS held 0.5-1.5 s each: the abuser's workers wait for the answer)"
        )
    if args.control:
        seconds = sum(r.seconds + args.warmup for r in phases["valid flood"])
        print(f"control: {sum(control_tally.values()) / seconds:.0f} valid GetStatus/s on average")
    merged = {label: _merge(results) for label, results in phases.items() if results}
    print("all rounds:")
    for label, result in merged.items():
        _report(f"{label:<11}", result)
    p99 = {label: percentile(sorted(r.latencies), 99) for label, r in merged.items()}
    ratio = p99["under abuse"] / p99["alone"] if p99["alone"] else float("inf")
    verdict = "meets" if ratio <= TARGET else "MISSES"
    print(
        f"result: GetStatus p99 {p99['under abuse'] * 1000:.2f} ms under abuse vs "
        f"{p99['alone'] * 1000:.2f} ms without = {ratio:.2f}x ({verdict} the {TARGET:g}x target)"
    )
    if "valid flood" in p99:
        print(
            f"        and {p99['valid flood'] * 1000:.2f} ms under a flood of valid GetStatus "
            "with as many requests in flight"
        )
    print(f"after: {uptime()}")
    errors = [r.errors for r in merged.values() if r.errors]
    return 0 if not errors else 1


def main() -> int:
    args = parse_args()
    if args.abuser:
        return asyncio.run(abuse(args))
    return asyncio.run(measure(args))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
