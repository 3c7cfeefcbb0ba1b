"""100,000 names into the router library: start-up time, memory and handshakes per second.

Run from the repository root: ``.venv/bin/python bench/router_scale.py``
(``--names 100000 --max-contexts 1000 --hps-seconds 5`` are the defaults).

What is measured, through a real broker and ``WatchStatus`` (not a generated
snapshot fed to the map): the broker runs as its own process with mTLS, the
router (``RouterWatcher`` + ``CertificateMap`` + ``ReferenceRouter``, as
``certbroker router`` runs them) as another, connecting as ``router-1`` with
``include_keys``:

- snapshot transfer: the first snapshot event received -> ``SNAPSHOT_COMPLETE``
  received (each event is applied as it arrives, so this includes the map's
  work; the broker's own time to read, decrypt and send the names is in it too);
- time to serving: watcher started -> the map swapped in and the router
  answering (the figure a restart costs), and ``SNAPSHOT_COMPLETE`` -> serving;
- RSS of the router process: at start (imports, no names), serving, and after
  the cold handshakes have filled the context LRU (target < 500 MB);
- full TLS handshakes per second from client processes (no session reuse):
  warm names (their context built, 100 names in rotation) and cold names
  (every handshake a name never seen, so each builds its context: the worst
  case, e.g. a crawler walking every domain).

Separately, ``direct``: the same material fed to ``CertificateMap`` in a fresh
process without gRPC, for the library's own cost per name and memory.

Set-up, timed apart: 100,000 distinct leaves cost seconds to sign, so they
share one key (the router keeps one decoded copy per name anyway, as it would
with distinct keys) and are signed in worker processes; they are sized like
Let's Encrypt's (~1.2 KB DER: SKI/AKI, AIA, policies, and a filler extension
standing in for the SCT list) under one intermediate. The broker's store is
seeded directly through its store API in large transactions (the upload path
would validate each chain, ~1 ms, and commit per name), with the keys sealed
as the broker seals them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    PYTHON,
    ROOT,
    _start,
    _wait_ready,
    broker_env,
    cpu_seconds,
    machine_info,
    rss_mb,
    section,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from certbroker.v1 import broker_pb2, domain_pb2

RSS_TARGET_MB = 500.0
DV_POLICY = x509.ObjectIdentifier("2.23.140.1.2.1")
FILLER_OID = x509.ObjectIdentifier("1.3.6.1.4.1.55555.1")
SUFFIX = "scale.example.test"
ROUTER_ID = "scale-router"


def name(index: int) -> str:
    return f"n{index}.{SUFFIX}"


# -- set-up: leaves --------------------------------------------------------------


def _issuer() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, x509.Certificate]:
    """A root and one intermediate (Let's Encrypt's shape: leaf + one intermediate)."""
    now = datetime.now(UTC)
    root_key, int_key = (
        ec.generate_private_key(ec.SECP384R1()),
        ec.generate_private_key(ec.SECP384R1()),
    )

    def ca(subject: str, key: Any, issuer: x509.Name, signer: Any) -> x509.Certificate:
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=30))
            .not_valid_after(now + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(signer, hashes.SHA384())
        )

    root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Scale Bench Root")])
    root = ca("Scale Bench Root", root_key, root_name, root_key)
    intermediate = ca("Scale Bench R1", int_key, root.subject, root_key)
    return int_key, intermediate, root


def _sign_range(args: tuple[int, int, bytes, bytes, bytes]) -> list[str]:
    """Worker: leaves ``start..stop`` as PEM chains (leaf + intermediate)."""
    start, stop, int_key_pem, int_pem, leaf_key_pem = args
    int_key = serialization.load_pem_private_key(int_key_pem, None)
    intermediate = x509.load_pem_x509_certificate(int_pem)
    leaf_key = serialization.load_pem_private_key(leaf_key_pem, None)
    public = leaf_key.public_key()
    now = datetime.now(UTC)
    fixed = [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
        (x509.SubjectKeyIdentifier.from_public_key(public), False),  # type: ignore[arg-type]
        (
            x509.AuthorityKeyIdentifier.from_issuer_public_key(int_key.public_key()),  # type: ignore[arg-type]
            False,
        ),
        (
            x509.AuthorityInformationAccess(
                [
                    x509.AccessDescription(
                        AuthorityInformationAccessOID.CA_ISSUERS,
                        x509.UniformResourceIdentifier("http://r1.i.scale.example/"),
                    )
                ]
            ),
            False,
        ),
        (x509.CertificatePolicies([x509.PolicyInformation(DV_POLICY, None)]), False),
        # Stands in for the SCT list (~350 bytes in real certificates); an OID of our own.
        (x509.UnrecognizedExtension(FILLER_OID, os.urandom(350)), False),
    ]
    int_pem_text = int_pem.decode()
    out = []
    for index in range(start, stop):
        subject = name(index)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(intermediate.subject)
            .public_key(public)  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=89))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False)
        )
        for extension, critical in fixed:
            builder = builder.add_extension(extension, critical=critical)
        leaf = builder.sign(int_key, hashes.SHA384())  # type: ignore[arg-type]
        out.append(leaf.public_bytes(serialization.Encoding.PEM).decode() + int_pem_text)
    return out


def make_leaves(count: int) -> tuple[list[str], str]:
    """``count`` PEM chains and the one key PEM they share, signed by worker processes."""
    int_key, intermediate, _ = _issuer()
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    pem = serialization.Encoding.PEM
    pkcs8, none = serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    args_common = (
        int_key.private_bytes(pem, pkcs8, none),
        intermediate.public_bytes(pem),
        leaf_key.private_bytes(pem, pkcs8, none),
    )
    workers = max(1, len(os.sched_getaffinity(0)))
    step = max(1, -(-count // (workers * 8)))
    chunks = [(s, min(count, s + step), *args_common) for s in range(0, count, step)]
    with ProcessPoolExecutor(workers) as pool:
        chains = [chain for part in pool.map(_sign_range, chunks) for chain in part]
    return chains, args_common[2].decode()


# -- set-up: the broker's store ----------------------------------------------------


async def seed_store(workdir: Path, chains: list[str], key_pem: str) -> None:
    """Every name as the upload use case leaves it (custom certificate serving), in batches."""
    from certbroker import lifecycle
    from certbroker.model import Domain, LetsEncryptState, Source
    from certbroker.server import run
    from certbroker.store.base import NewCertificate
    from certbroker.x509.info import certificate_info
    from tests.broker import broker_settings

    settings = broker_settings(
        workdir, db=str(workdir / "db.sqlite3"), kek_file=str(workdir / "kek")
    )
    running = await run(settings)
    sealer = running.broker._sealer  # the broker's own sealer: keys sealed exactly as at upload
    store = running.store
    now = datetime.now(UTC)
    try:
        batch = 1000
        for start in range(0, len(chains), batch):
            async with store.transaction() as tx:
                for index in range(start, min(len(chains), start + batch)):
                    domain_name = name(index)
                    fresh = Domain(
                        name=domain_name,
                        app="scale",
                        letsencrypt_enabled=False,
                        le_state=LetsEncryptState.DISABLED,
                        serving=Source.NONE,
                        created_at=now,
                        updated_at=now,
                    )
                    info = await tx.add_certificate(
                        NewCertificate(
                            domain=domain_name,
                            source=Source.CUSTOM,
                            info=certificate_info(chains[index]),
                            key_sealed=sealer.seal(key_pem.encode(), domain_name),
                        )
                    )
                    await tx.put_domain(lifecycle.custom_installed(fresh, info, now))
    finally:
        await running.stop(0)


# -- the router process ------------------------------------------------------------


def _self_rss() -> float:
    return rss_mb(os.getpid())


async def _router_process(args: argparse.Namespace) -> None:
    from certbroker_client.client import TlsFiles
    from certbroker_client.reference_router import ReferenceRouter, RouterConfig
    from certbroker_client.router import CertificateMap, MapChange, RouterWatcher

    rss_start = _self_rss()
    marks: dict[str, float] = {}

    class TimedMap(CertificateMap):
        def build(self, *a: Any, **kw: Any) -> Any:
            marks.setdefault("first_event", time.perf_counter())
            return super().build(*a, **kw)

    def on_change(change: MapChange) -> None:
        if change.resync:
            marks.setdefault("complete", time.perf_counter())

    certificates = TimedMap(max_contexts=args.max_contexts)
    tls = TlsFiles(ca=Path(args.ca), cert=Path(args.cert), key=Path(args.key))
    marks["start"] = time.perf_counter()
    watcher = RouterWatcher.connect(
        args.addr, tls, certificates=certificates, on_change=on_change, router_id=ROUTER_ID
    )
    task = asyncio.create_task(watcher.run())
    async with asyncio.timeout(1800):
        await watcher.ready.wait()
    router = ReferenceRouter(
        certificates, RouterConfig(https_listen=("127.0.0.1", 0), http_listen=None)
    )
    await router.start()
    marks["serving"] = time.perf_counter()
    gc.collect()
    print(
        json.dumps(
            {
                "port": router.https_port,
                "names": len(certificates),
                "builds": certificates.builds,
                "start_to_first_event": marks["first_event"] - marks["start"],
                "transfer": marks["complete"] - marks["first_event"],
                "complete_to_serving": marks["serving"] - marks["complete"],
                "start_to_serving": marks["serving"] - marks["start"],
                "rss_start_mb": rss_start,
                "rss_serving_mb": _self_rss(),
            }
        ),
        flush=True,
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    print(
        json.dumps(
            {
                "builds": certificates.builds,
                "evictions": certificates.evictions,
                "cached": certificates.cached_contexts,
                "reports": watcher.reports,
            }
        ),
        flush=True,
    )
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await router.stop()
    await watcher.close()


def _held_bytes(certificates: Any) -> int:
    """Python objects the map holds for its entries (shared intermediates counted once)."""
    entries = certificates.entries()
    total = sys.getsizeof(entries)
    shared: set[int] = set()
    for key, entry in entries.items():
        material = entry.material
        total += sum(
            sys.getsizeof(part)
            for part in (key, entry, entry.not_after, entry.material_digest, material)
        )
        total += sys.getsizeof(material.leaf) + sys.getsizeof(material.key)
        if id(material.intermediates) not in shared:
            shared.add(id(material.intermediates))
            total += sys.getsizeof(material.intermediates)
            total += sum(sys.getsizeof(der) for der in material.intermediates)
    return total


def _direct_process(args: argparse.Namespace) -> None:
    """The map alone: build every entry from in-memory material, swap, measure."""
    from certbroker_client.router import CertificateMap

    chains = Path(args.material).read_text().split("\0")
    key_pem, chains = chains[0], chains[1:]
    materials = [
        broker_pb2.ServingMaterial(
            source=domain_pb2.CERTIFICATE_SOURCE_CUSTOM, chain_pem=chain, private_key_pem=key_pem
        )
        for chain in chains
    ]
    del chains
    gc.collect()
    rss_before = _self_rss()
    certificates = CertificateMap()
    t0 = time.perf_counter()
    pending = {name(i): certificates.build(name(i), m, i + 1) for i, m in enumerate(materials)}
    t1 = time.perf_counter()
    certificates.replace_all(pending)
    t2 = time.perf_counter()
    del pending
    gc.collect()
    held = _held_bytes(certificates)
    print(
        json.dumps(
            {
                "names": len(certificates),
                "builds": certificates.builds,
                "build_s": t1 - t0,
                "swap_s": t2 - t1,
                "rss_growth_mb": _self_rss() - rss_before,
                "held_bytes": held,
            }
        ),
        flush=True,
    )


# -- handshake clients -------------------------------------------------------------


def _hps_process(args: argparse.Namespace) -> None:
    """Full handshakes back to back for ``--seconds``: names ``start, start+1, ...``
    (``--rotate N``: the first N of them over and over). Prints the count."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    end = time.monotonic() + args.seconds
    count = 0
    while time.monotonic() < end:
        index = args.start + (count % args.rotate if args.rotate else count)
        with socket.create_connection(("127.0.0.1", args.port), timeout=10) as raw:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with context.wrap_socket(raw, server_hostname=name(index)):
                count += 1
    print(count, flush=True)


async def _handshakes(
    port: int, clients: int, seconds: float, *, starts: list[int], rotate: int
) -> float:
    procs = [
        await asyncio.create_subprocess_exec(
            PYTHON, __file__, "hps", "--port", str(port), "--start", str(starts[i]),
            "--rotate", str(rotate), "--seconds", str(seconds),
            stdout=subprocess.PIPE, cwd=ROOT,
        )
        for i in range(clients)
    ]  # fmt: skip
    total = 0
    for proc in procs:
        out, _ = await asyncio.wait_for(proc.communicate(), seconds + 60)
        total += int(out.strip() or 0)
    return total / seconds


# -- the driver ------------------------------------------------------------------


async def _tcp_open(port: int) -> bool:
    with contextlib.suppress(OSError):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()
        return True
    return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _drive(args: argparse.Namespace) -> int:
    from certbroker_client.client import BrokerClient, TlsFiles
    from tests.tls import MtlsFiles

    print(machine_info())
    print(
        f"settings: {args.names} names, --max-contexts {args.max_contexts}, "
        f"{args.hps_clients} handshake client process(es) x {args.hps_seconds:g} s; "
        f"load average before: {os.getloadavg()[0]:.2f}"
    )
    with tempfile.TemporaryDirectory(prefix="certbroker-router-scale-") as tmp:
        work = Path(tmp)
        with section(f"set-up: sign {args.names} leaves (one shared key, LE-sized)"):
            t0 = time.perf_counter()
            chains, key_pem = make_leaves(args.names)
            print(f"   {len(chains)} chains, leaf+intermediate {len(chains[0])} bytes of PEM, "
                  f"{(time.perf_counter() - t0) / len(chains) * 1e6:.0f} µs a leaf")  # fmt: skip
        with section("set-up: seed the broker's store (store API, keys sealed)"):
            await seed_store(work, chains, key_pem)
        material = work / "material"
        material.write_text("\0".join([key_pem, *chains]))
        del chains

        if not args.skip_direct:
            with section("library alone: the material fed to CertificateMap (no gRPC)"):
                out = subprocess.run(
                    [PYTHON, __file__, "direct", "--material", str(material)],
                    capture_output=True, text=True, cwd=ROOT, check=True, timeout=1800,
                )  # fmt: skip
                direct = json.loads(out.stdout.strip().splitlines()[-1])
                print(
                    f"   {direct['names']} names: build {direct['build_s']:.2f} s "
                    f"({direct['build_s'] / direct['names'] * 1e6:.1f} µs a name), swap "
                    f"{direct['swap_s'] * 1000:.0f} ms, contexts built {direct['builds']}; "
                    f"held by the map {direct['held_bytes'] / 2**20:.0f} MiB "
                    f"({direct['held_bytes'] / direct['names']:.0f} bytes a name; RSS grew "
                    f"{direct['rss_growth_mb']:.0f} MB, freed input memory reused)"
                )

        mtls = MtlsFiles(work / "mtls")
        server_id, router_id, api_id = (
            mtls.issue("broker", server=True),
            mtls.issue("router-1"),
            mtls.issue("api-1"),
        )
        port = _free_port()
        addr = f"127.0.0.1:{port}"
        env = broker_env(
            port,
            work,
            {
                "CERTBROKER_TLS_CERT": str(server_id.cert),
                "CERTBROKER_TLS_KEY": str(server_id.key),
                "CERTBROKER_TLS_CLIENT_CA": str(mtls.ca),
                "CERTBROKER_ROLES": "router-1=router,api-1=api",
            },
        )
        broker = _start("broker", [PYTHON, "-m", "certbroker.server"], env, work / "broker.log")
        router: subprocess.Popen[bytes] | None = None
        try:
            await _wait_ready(broker, lambda: _tcp_open(port), 60)
            with section("the router library through the real broker (WatchStatus, mTLS)"):
                broker_cpu = cpu_seconds(broker.pid)
                router = subprocess.Popen(
                    [PYTHON, __file__, "router", "--addr", addr, "--ca", str(mtls.ca),
                     "--cert", str(router_id.cert), "--key", str(router_id.key),
                     "--max-contexts", str(args.max_contexts)],
                    stdout=subprocess.PIPE, cwd=ROOT,
                )  # fmt: skip
                assert router.stdout is not None
                line = await asyncio.wait_for(asyncio.to_thread(router.stdout.readline), 1800)
                up = json.loads(line)
                broker_cpu = cpu_seconds(broker.pid) - broker_cpu
                router_cpu = cpu_seconds(router.pid)
                rate = up["names"] / max(up["transfer"], 1e-9)
                for line in (
                    f"serving {up['names']} names; contexts built while applying: {up['builds']}",
                    f"watcher start -> first snapshot event: {up['start_to_first_event']:.2f} s",
                    "snapshot transfer (first event -> SNAPSHOT_COMPLETE, applied as received): "
                    f"{up['transfer']:.2f} s ({rate:.0f} names/s)",
                    f"SNAPSHOT_COMPLETE -> serving: {up['complete_to_serving'] * 1000:.1f} ms",
                    f"time to serving (watcher start -> serving): {up['start_to_serving']:.2f} s",
                    f"RSS: {up['rss_start_mb']:.0f} MB at start, "
                    f"{up['rss_serving_mb']:.0f} MB serving {up['names']} names",
                    f"CPU until serving: broker {broker_cpu:.1f} s "
                    f"({broker_cpu / up['names'] * 1e6:.0f} µs a name), router {router_cpu:.1f} s "
                    f"({router_cpu / up['names'] * 1e6:.0f} µs a name, imports included)",
                ):
                    print(f"   {line}")

            https = up["port"]
            middle = name(args.names // 2)
            cold_ms = await asyncio.to_thread(_one_handshake, https, middle) * 1000
            warm_ms = await asyncio.to_thread(_one_handshake, https, middle) * 1000
            print(f"-- one handshake, cold name (builds its context): {cold_ms:.1f} ms; "
                  f"the same name again, warm: {warm_ms:.1f} ms")  # fmt: skip
            with section("handshakes per second"):
                warm = await _handshakes(
                    https, args.hps_clients, args.hps_seconds, starts=[0] * args.hps_clients,
                    rotate=100,
                )  # fmt: skip
                stride = args.names // max(1, args.hps_clients)
                cold = await _handshakes(
                    https, args.hps_clients, args.hps_seconds,
                    starts=[i * stride for i in range(args.hps_clients)], rotate=0,
                )  # fmt: skip
                print(f"   warm names (100 in rotation, contexts built): {warm:.0f} handshakes/s")
                print(f"   cold names (each one new: a context built per handshake): "
                      f"{cold:.0f} handshakes/s")  # fmt: skip
            rss_after = rss_mb(router.pid)
            print(f"-- router RSS after the cold handshakes (LRU full): {rss_after:.0f} MB")

            api = BrokerClient.connect(
                addr, tls=TlsFiles(ca=mtls.ca, cert=api_id.cert, key=api_id.key), timeout=30
            )
            async with api:
                deadline = time.monotonic() + 30
                reported = None
                while time.monotonic() < deadline:
                    reported = {r.router_id: r for r in await api.list_routers()}.get(ROUTER_ID)
                    if reported is not None and reported.domain_count == up["names"]:
                        break
                    await asyncio.sleep(0.5)
            if reported is not None:
                print(
                    f"-- the broker's ListRouters: {reported.router_id} applied revision "
                    f"{reported.applied_revision}, lag {reported.lag}, "
                    f"{reported.domain_count} domains, live={reported.live}"
                )
            router.send_signal(signal.SIGTERM)
            tail = await asyncio.to_thread(router.stdout.readline)
            stats = json.loads(tail) if tail.strip() else {}
            print(f"-- router counters: {stats}")
            peak = max(up["rss_serving_mb"], rss_after)
            verdict = "met" if peak < RSS_TARGET_MB else "NOT met"
            print(f"target RSS < {RSS_TARGET_MB:.0f} MB for {up['names']} names: {verdict} "
                  f"(peak {peak:.0f} MB)")  # fmt: skip
            print(f"load average after: {os.getloadavg()[0]:.2f}")
            return 0 if peak < RSS_TARGET_MB else 1
        finally:
            if router is not None and router.poll() is None:
                router.send_signal(signal.SIGTERM)
                try:
                    router.wait(15)
                except subprocess.TimeoutExpired:
                    router.kill()
                    router.wait(5)
            broker.stop()


def _one_handshake(port: int, server_name: str) -> float:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with context.wrap_socket(raw, server_hostname=server_name):
            pass
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode")
    router = sub.add_parser("router")
    for flag in ("--addr", "--ca", "--cert", "--key"):
        router.add_argument(flag, required=True)
    router.add_argument("--max-contexts", type=int, default=1000)
    direct = sub.add_parser("direct")
    direct.add_argument("--material", required=True)
    hps = sub.add_parser("hps")
    hps.add_argument("--port", type=int, required=True)
    hps.add_argument("--start", type=int, default=0)
    hps.add_argument("--rotate", type=int, default=0)
    hps.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--names", type=int, default=100_000)
    parser.add_argument("--max-contexts", type=int, default=1000)
    parser.add_argument("--hps-seconds", type=float, default=5.0)
    parser.add_argument("--hps-clients", type=int, default=1)
    parser.add_argument("--skip-direct", action="store_true", help="skip the library-alone run")
    args = parser.parse_args()
    if args.mode == "router":
        asyncio.run(_router_process(args))
        return 0
    if args.mode == "direct":
        _direct_process(args)
        return 0
    if args.mode == "hps":
        _hps_process(args)
        return 0
    return asyncio.run(_drive(args))


if __name__ == "__main__":
    sys.exit(main())
