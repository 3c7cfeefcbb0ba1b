"""How fast a certificate change reaches the routers' TLS handshakes, and handshakes per second.

Run from the repository root: ``.venv/bin/python bench/propagation.py``
(``--changes 200 --routers 10 --hps-seconds 5`` are the defaults).

Topology, three kinds of processes so no figure measures GIL contention
between the parts:

- the broker (``python -m certbroker.server``) with mTLS, roles and a trust
  bundle for the private test PKI;
- ``--routers`` reference routers, each in its own process (as deployed;
  ``--one-process`` puts them all in one), each with its own
  ``RouterWatcher`` and gRPC connection (``include_keys`` as ``router-1``);
- this process: uploads custom certificates as ``api-1`` and probes the
  routers with real TLS handshakes.

Propagation: for each of ``--changes`` changes (one at a time, names in
rotation, probed router in rotation) the time from ``UploadCustom``'s reply
to the first handshake at the probed router that returns the new leaf. The
probe handshakes back to back (~1 ms each), so that is the resolution. A
renewal reaches routers through the same event (DOMAIN_UPDATED with new
serving material) and the same router code, so it is not timed separately
here; ``tests/router/test_renewal.py`` proves a real renewal end to end.

Handshakes per second: ``--hps-clients`` client processes doing full
handshakes (no session reuse) for a warm name on one router for
``--hps-seconds``.

``--target haproxy|nginx`` measures real proxies instead of the reference
router: each "router" is then one HAProxy (runtime API) or nginx (files loaded
per handshake) with a ``certbroker sync`` agent process beside it
(bench/_proxies.py); ``--routers`` defaults to 1 for them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import PYTHON, ROOT, _start, _wait_ready, broker_env, machine_info, percentile
from _proxies import TARGETS, proxy_routers
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from certbroker_client.client import BrokerClient, TlsFiles
from certbroker_client.reference_router import ReferenceRouter, RouterConfig
from certbroker_client.router import RouterWatcher
from tests.pki import TestPKI
from tests.tls import MtlsFiles

PKI = TestPKI("Bench")
TARGET_P99_MS = 100.0


def _client_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


_PROBE = _client_context()


def _fingerprint_at(port: int, name: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with _PROBE.wrap_socket(raw, server_hostname=name) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).fingerprint(hashes.SHA256()).hex()


def _probe_until(port: int, name: str, wanted: str, deadline_s: float) -> float:
    """Handshake until ``wanted`` is served; the monotonic time it was first seen."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):  # ssl.SSLError too: a proxy may refuse a moment
            if _fingerprint_at(port, name) == wanted:
                return time.monotonic()
    raise TimeoutError(f"{name} not served with the new certificate after {deadline_s}s")


# -- the router host (a child process) ---------------------------------------------


async def _router_host(args: argparse.Namespace) -> None:
    tls = TlsFiles(ca=Path(args.ca), cert=Path(args.cert), key=Path(args.key))
    watchers: list[RouterWatcher] = []
    routers: list[ReferenceRouter] = []
    tasks: list[asyncio.Task[None]] = []
    for index in range(args.routers):
        # Each reports what it serves, as deployed routers do (ListRouters shows them).
        watcher = RouterWatcher.connect(args.addr, tls, router_id=f"{args.router_id_prefix}{index}")
        router = ReferenceRouter(
            watcher.certificates, RouterConfig(https_listen=("127.0.0.1", 0), http_listen=None)
        )
        await router.start()
        watchers.append(watcher)
        routers.append(router)
        tasks.append(asyncio.create_task(watcher.run()))
    async with asyncio.timeout(30):
        await asyncio.gather(*(w.ready.wait() for w in watchers))
    print(json.dumps({"ports": [r.https_port for r in routers]}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for router in routers:
        await router.stop()
    for watcher in watchers:
        await watcher.close()


def _hps_client(args: argparse.Namespace) -> None:
    """Full handshakes back to back for ``--seconds``; prints the count."""
    context = _client_context()
    end = time.monotonic() + args.seconds
    count = 0
    while time.monotonic() < end:
        with socket.create_connection(("127.0.0.1", args.port), timeout=5) as raw:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with context.wrap_socket(raw, server_hostname=args.name):
                count += 1
    print(count, flush=True)


# -- the driver ------------------------------------------------------------------


def _leaf_files(name: str) -> tuple[bytes, bytes]:
    now = datetime.now(UTC)
    leaf = PKI.leaf(name, not_before=now - timedelta(days=1), not_after=now + timedelta(days=30))
    return PKI.bundle(leaf), leaf.key_pem()


def _fp_of(bundle: bytes) -> str:
    return x509.load_pem_x509_certificate(bundle).fingerprint(hashes.SHA256()).hex()


async def _drive(args: argparse.Namespace) -> int:
    print(f"machine: {machine_info()}")
    print(
        f"settings: target {args.target}, "
        f"{args.changes} changes over {args.names} names, {args.routers} routers "
        f"subscribed ({'one process' if args.one_process else 'one process each'}), "
        f"probe = back-to-back TLS handshakes at one router "
        f"(rotating); handshakes/s: {args.hps_clients} client process(es) x {args.hps_seconds}s"
    )
    with tempfile.TemporaryDirectory(prefix="certbroker-propagation-") as tmp:
        work = Path(tmp)
        mtls = MtlsFiles(work / "mtls")
        server_id, router_id, api_id = (
            mtls.issue("broker", server=True),
            mtls.issue("router-1"),
            mtls.issue("api-1"),
        )
        trust = work / "trust.pem"
        trust.write_bytes(PKI.root.pem)
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
                "CERTBROKER_TRUST_BUNDLE": str(trust),
            },
        )
        broker = _start("broker", [PYTHON, "-m", "certbroker.server"], env, work / "broker.log")
        hosts: list[subprocess.Popen[bytes]] = []
        proxies = contextlib.ExitStack()  # --target haproxy|nginx: proxies and agents
        try:
            await _wait_ready(broker, lambda: _tcp_open(port), 30)
            api = BrokerClient.connect(
                addr, tls=TlsFiles(ca=mtls.ca, cert=api_id.cert, key=api_id.key), timeout=10
            )
            names = [f"n{i}.bench.example.test" for i in range(args.names)]
            for name in names:  # a certificate each before the routers start: a warm snapshot
                await api.issue_certificate(name, "bench", disable_letsencrypt=True)
                await api.upload_custom(name, *_leaf_files(name), app="bench")
            per_host = args.routers if args.one_process else 1
            for host_index in range(args.routers // per_host if args.target == "library" else 0):
                hosts.append(
                    subprocess.Popen(
                        [
                            PYTHON,
                            __file__,
                            "router-host",
                            "--addr",
                            addr,
                            "--ca",
                            str(mtls.ca),
                            "--cert",
                            str(router_id.cert),
                            "--key",
                            str(router_id.key),
                            "--routers",
                            str(per_host),
                            "--router-id-prefix",
                            f"bench-{host_index}-",
                        ],
                        stdout=subprocess.PIPE,
                        cwd=ROOT,
                    )
                )
            ports: list[int] = []
            for host in hosts:
                assert host.stdout is not None
                line = await asyncio.wait_for(asyncio.to_thread(host.stdout.readline), 60)
                ports.extend(json.loads(line)["ports"])
            if args.target != "library":
                router_tls = (mtls.ca, router_id.cert, router_id.key)
                ports = await asyncio.to_thread(
                    proxies.enter_context,
                    proxy_routers(args.target, args.routers, addr, router_tls),
                )

            from_reply: list[float] = []
            from_call: list[float] = []
            started = time.monotonic()
            for index in range(args.changes):
                if time.monotonic() - started > args.max_seconds:
                    print(f"stopped after {index} changes: --max-seconds reached")
                    break
                name = names[index % len(names)]
                bundle, key = _leaf_files(name)
                wanted = _fp_of(bundle)
                router_port = ports[index % len(ports)]
                t_call = time.monotonic()
                await api.upload_custom(name, bundle, key, app="bench")
                t_reply = time.monotonic()
                seen = await asyncio.to_thread(_probe_until, router_port, name, wanted, 10.0)
                from_reply.append((seen - t_reply) * 1000)
                from_call.append((seen - t_call) * 1000)
            # Every router ends with the last certificate of every name.
            for name in names:
                wanted = (await api.get_status(name)).custom_certificate.sha256_fingerprint
                for router_port in ports:
                    await asyncio.to_thread(_probe_until, router_port, name, wanted, 10.0)
            await api.close()

            reply_sorted, call_sorted = sorted(from_reply), sorted(from_call)
            p50, p99 = percentile(reply_sorted, 50), percentile(reply_sorted, 99)
            print(
                f"propagation UploadCustom reply -> first handshake with the new leaf "
                f"({len(reply_sorted)} changes): p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
                f"max {reply_sorted[-1]:.1f} ms"
            )
            print(
                f"propagation UploadCustom call  -> first handshake with the new leaf: "
                f"p50 {percentile(call_sorted, 50):.1f} ms, "
                f"p99 {percentile(call_sorted, 99):.1f} ms"
            )
            print("all routers serve the last certificate of every name: yes")

            clients = [
                subprocess.Popen(
                    [
                        PYTHON,
                        __file__,
                        "hps-client",
                        "--port",
                        str(ports[0]),
                        "--name",
                        names[0],
                        "--seconds",
                        str(args.hps_seconds),
                    ],
                    stdout=subprocess.PIPE,
                    cwd=ROOT,
                )
                for _ in range(args.hps_clients)
            ]
            total = 0
            for client in clients:
                out, _ = await asyncio.to_thread(client.communicate, None, args.hps_seconds + 30)
                total += int(out.strip() or 0)
            print(
                f"handshakes per second at one {_LABELS[args.target]}, warm name, full handshakes "
                f"(TLS 1.3, ECDSA P-256): {total / args.hps_seconds:.0f}"
            )
            if args.target == "nginx":
                print(f"target: none for nginx (reported); p99 < {TARGET_P99_MS:.0f} ms: "
                      f"{'yes' if p99 < TARGET_P99_MS else 'no'}")  # fmt: skip
                return 0
            verdict = "met" if p99 < TARGET_P99_MS else "NOT met"
            print(f"target p99 < {TARGET_P99_MS:.0f} ms: {verdict}")
            return 0 if p99 < TARGET_P99_MS else 1
        finally:
            proxies.close()
            for host in hosts:
                if host.poll() is None:
                    host.send_signal(signal.SIGTERM)
                    try:
                        host.wait(10)
                    except subprocess.TimeoutExpired:
                        host.kill()
                        host.wait(5)
            broker.stop()


_LABELS = {"library": "reference router", "haproxy": "HAProxy", "nginx": "nginx"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _tcp_open(port: int) -> bool:
    with contextlib.suppress(OSError):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()
        return True
    return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode")
    host = sub.add_parser("router-host")
    for flag in ("--addr", "--ca", "--cert", "--key"):
        host.add_argument(flag, required=True)
    host.add_argument("--routers", type=int, default=10)
    host.add_argument("--router-id-prefix", default="bench-")
    client = sub.add_parser("hps-client")
    client.add_argument("--port", type=int, required=True)
    client.add_argument("--name", required=True)
    client.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--names", type=int, default=20)
    parser.add_argument(
        "--routers", type=int, default=None, help="routers (10), or proxy + agent pairs (1)"
    )
    parser.add_argument(
        "--target",
        choices=("library", *TARGETS),
        default="library",
        help="reference routers (library) or real proxies fed by certbroker sync",
    )
    parser.add_argument("--hps-seconds", type=float, default=5.0)
    parser.add_argument("--hps-clients", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    parser.add_argument(
        "--one-process", action="store_true", help="all routers in one process (default: one each)"
    )
    parser.add_argument("--max-seconds", type=float, default=120.0, help="bound the change loop")
    args = parser.parse_args()
    if args.routers is None:
        args.routers = 10 if args.target == "library" else 1
    if args.mode == "router-host":
        asyncio.run(_router_host(args))
        return 0
    if args.mode == "hps-client":
        _hps_client(args)
        return 0
    return asyncio.run(_drive(args))


if __name__ == "__main__":
    sys.exit(main())
