"""The broker's side of a router restart: WatchStatus snapshots of 100,000 names.

Run from the repository root: ``.venv/bin/python bench/snapshot_scale.py``
(``--names 100000`` is the default).

``bench/router_scale.py`` times a snapshot as the router library applies it, so
its transfer figure mixes the broker's cost with the router's. This bench
isolates the broker: a real broker process (mTLS, the same store seeding as
``router_scale.py``: every name serving a custom certificate, keys sealed as at
upload) and a bare consumer that only counts the responses. Per kind of stream:

- ``keys``: unfiltered, ``include_keys`` (a router: chain and key per name);
- ``nokeys``: unfiltered, no keys (the shared snapshot every keyless router
  reuses at one revision);
- ``filtered``: ``apps=[scale]`` (every seeded name), no keys: a stream of its own
  (no sharing), e.g. a router for some apps;
- ``one-app``: ``apps=[small]``, an app with 10 of the names, with keys (a router
  of a small app among many: what its snapshot costs beside the others' names);
- ``one-name``: ``domains=[one name]``, with keys;

it prints the time from the request to ``SNAPSHOT_COMPLETE``, names/s, the
bytes and messages received (``--batch``: the snapshot asked in batches), the
broker's CPU, and its RSS at the end with its peak (VmHWM) since start.

``--streams N`` opens N streams of each kind at once (routers reconnecting
together: unfiltered streams share pages), timed to the last one complete (the
consumer is one process: with many streams it is the bottleneck).

``--workdir DIR`` keeps the signed and seeded store there and reuses it on the
next run (seeding 100,000 names takes minutes); ``--profile keys`` runs py-spy
(if installed in the venv) on the broker during that stream and writes a
flame graph into the workdir.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc
from _common import (
    PYTHON,
    _start,
    _wait_ready,
    broker_env,
    cpu_seconds,
    free_port,
    machine_info,
    rss_mb,
)
from router_scale import make_leaves, name, seed_store

from certbroker.v1 import broker_pb2, broker_pb2_grpc

KINDS = ("keys", "nokeys", "filtered", "one-app", "one-name")


def _peak_mb(pid: int) -> float:
    """The process's peak resident memory (VmHWM) in MiB."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def _tcp_open(port: int) -> bool:
    with contextlib.suppress(OSError):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()
        return True
    return False


async def _seeded(work: Path, names: int) -> None:
    marker = work / "seeded"
    if marker.exists() and marker.read_text() == str(names):
        print(f"-- reusing the seeded store in {work} ({names} names)", flush=True)
        if not (work / "small").exists():
            await _small_app(work)
            (work / "small").write_text("")
        return
    for leftover in ("db.sqlite3", "db.sqlite3-wal", "db.sqlite3-shm", "kek"):
        (work / leftover).unlink(missing_ok=True)
    t0 = time.perf_counter()
    chains, key_pem = make_leaves(names)
    print(f"-- signed {names} leaves in {time.perf_counter() - t0:.1f} s", flush=True)
    t0 = time.perf_counter()
    await seed_store(work, chains, key_pem)
    print(f"-- seeded the store in {time.perf_counter() - t0:.1f} s", flush=True)
    await _small_app(work)
    (work / "small").write_text("")
    marker.write_text(str(names))


async def _small_app(work: Path) -> None:
    """Move 10 names, spread over the name range, to the app ``small``."""
    from dataclasses import replace

    from certbroker.store.sqlite import SqliteStore

    store = await SqliteStore.open(str(work / "db.sqlite3"))
    try:
        async with store.transaction() as tx:
            for index in range(0, 100_000, 10_000):
                found = await tx.get_domain(name(index))
                if found is not None:
                    await tx.put_domain(replace(found, app="small"))
    finally:
        await store.close()


async def _consume(
    stub: broker_pb2_grpc.CertificateBrokerServiceStub, request: broker_pb2.WatchStatusRequest
) -> tuple[float, int, int, int, int]:
    """Read until SNAPSHOT_COMPLETE: (seconds, snapshot events, keyed events, bytes, messages)."""
    t0 = time.perf_counter()
    call = stub.WatchStatus(request)
    events = keyed = size = messages = 0
    try:
        async for response in call:
            size += response.ByteSize()
            messages += 1
            kind = response.WhichOneof("kind")
            if kind == "snapshot_batch":
                batch = response.snapshot_batch.events
                events += len(batch)
                keyed += sum(bool(event.serving.private_key_pem) for event in batch)
                continue
            if kind != "event":
                continue
            event = response.event
            if event.type == broker_pb2.EVENT_TYPE_SNAPSHOT_COMPLETE:
                return time.perf_counter() - t0, events, keyed, size, messages
            events += 1
            keyed += bool(event.serving.private_key_pem)
    finally:
        call.cancel()
    raise RuntimeError("the stream ended before SNAPSHOT_COMPLETE")


@contextlib.contextmanager
def _profiled(pid: int, out: Path | None) -> Iterator[None]:
    spy = shutil.which("py-spy", path=str(Path(PYTHON).parent))
    if out is None or spy is None:
        if out is not None:
            print("   (py-spy is not installed in this venv: no profile)")
        yield
        return
    proc = subprocess.Popen(
        [spy, "record", "--pid", str(pid), "--rate", "200", "--format", "raw", "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # py-spy attaches
    try:
        yield
    finally:
        proc.send_signal(2)  # SIGINT: py-spy writes its output and exits
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        print(f"   profile: {out}")


async def _drive(args: argparse.Namespace) -> int:
    from tests.tls import MtlsFiles

    print(machine_info())
    print(f"settings: {args.names} names; load average before: {os.getloadavg()[0]:.2f}")
    with contextlib.ExitStack() as stack:
        if args.workdir:
            work = Path(args.workdir)
            work.mkdir(parents=True, exist_ok=True)
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cb-snapshot-")))
        await _seeded(work, args.names)
        mtls = MtlsFiles(work / "mtls")
        server_id, router_id = mtls.issue("broker", server=True), mtls.issue("router-1")
        port = free_port()
        env = broker_env(
            port,
            work,
            {
                "CERTBROKER_TLS_CERT": str(server_id.cert),
                "CERTBROKER_TLS_KEY": str(server_id.key),
                "CERTBROKER_TLS_CLIENT_CA": str(mtls.ca),
                "CERTBROKER_ROLES": "router-1=router",
            },
        )
        broker = _start("broker", [PYTHON, "-m", "certbroker.server"], env, work / "broker.log")
        try:
            await _wait_ready(broker, lambda: _tcp_open(port), 120)
            credentials = grpc.ssl_channel_credentials(
                mtls.ca.read_bytes(), router_id.key.read_bytes(), router_id.cert.read_bytes()
            )
            options = [("grpc.max_receive_message_length", 64 * 2**20)]
            async with grpc.aio.secure_channel(
                f"127.0.0.1:{port}", credentials, options=options
            ) as channel:
                stub = broker_pb2_grpc.CertificateBrokerServiceStub(channel)
                await channel.channel_ready()
                print(f"-- broker ready: RSS {rss_mb(broker.pid):.0f} MB", flush=True)
                for kind in args.kinds:
                    request = broker_pb2.WatchStatusRequest(
                        include_keys=kind in ("keys", "one-app", "one-name"),
                        apps={"filtered": ["scale"], "one-app": ["small"]}.get(kind, []),
                        domains=[name(args.names // 2)] if kind == "one-name" else [],
                    )
                    if args.batch:  # only when asked: the bench also runs against older stubs
                        request.batch_snapshot = True
                    for attempt in range(args.repeat):
                        cpu = cpu_seconds(broker.pid)
                        profile = (
                            work / f"profile-{kind}.txt"
                            if kind in args.profile and attempt == 0
                            else None
                        )
                        with _profiled(broker.pid, profile):
                            results = await asyncio.gather(
                                *(_consume(stub, request) for _ in range(args.streams))
                            )
                        cpu = cpu_seconds(broker.pid) - cpu
                        seconds = max(r[0] for r in results)
                        _, events, keyed, size, messages = results[0]
                        streams = f" x{args.streams} streams" if args.streams > 1 else ""
                        print(
                            f"-- {kind:8s} #{attempt + 1}{streams}: {events} names ({keyed} "
                            f"with keys) in {seconds:.2f} s = {events / seconds:.0f} names/s; "
                            f"{size / 2**20:.0f} MiB in {messages} messages; "
                            f"broker CPU {cpu:.1f} s "
                            f"({cpu / max(events * args.streams, 1) * 1e6:.0f} µs a name sent); "
                            f"broker RSS "
                            f"{rss_mb(broker.pid):.0f} MB (peak {_peak_mb(broker.pid):.0f} MB); "
                            f"load {os.getloadavg()[0]:.2f}",
                            flush=True,
                        )
        finally:
            broker.stop()
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", type=int, default=100_000)
    parser.add_argument("--workdir", help="keep (and reuse) the seeded store here")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--repeat", type=int, default=1, help="streams of each kind, one by one")
    parser.add_argument(
        "--streams", type=int, default=1, help="streams opened at once (a reconnect storm)"
    )
    parser.add_argument("--profile", nargs="*", choices=KINDS, default=[])
    parser.add_argument(
        "--batch", action="store_true", help="ask for batches (WatchStatusRequest.batch_snapshot)"
    )
    return asyncio.run(_drive(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
