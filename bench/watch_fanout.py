"""WatchStatus fan-out: publish-to-last-receipt latency to many subscribers, beside bare gRPC.

Three phases in one run, each with its own processes, all on loopback:

1. **broker, live**: the broker (a subprocess, fresh DB) holds a few real domains;
   ``--subscribers`` WatchStatus streams are opened from ``--procs`` client
   processes (``--channels`` HTTP/2 connections each). A stream counts as
   subscribed when it has received ``SNAPSHOT_COMPLETE`` (it opens with
   ``after_revision = 0``: a snapshot of the few domains, then live events; the
   snapshot proves the handler is past its set-up and following the hub, which
   a heartbeat would only prove after a whole interval). Then ``--changes``
   changes of real domains are published through the store at ``--rate`` per
   second: ``IssueCertificate`` on a ``disable_letsencrypt`` domain toggling its
   ``key_algorithm`` (``--change key``, the default: exactly one event per change),
   or toggling ``disable_letsencrypt`` itself (``--change letsencrypt``: each
   enable also makes the scheduler write two more events, so the broker then fans
   out about twice the bare server's messages; they are counted apart). The
   publish time is taken just before the RPC, the revision from the reply. Each
   client process records, per revision, the first and the latest receipt over
   its streams and how many streams got it; ``time.time()`` is comparable across
   processes here.
2. **broker, burst**: ``--burst`` streams open at once (``after_revision = 0``)
   from ``--burst-procs`` processes whose connections are up beforehand; counted:
   how many got ``SNAPSHOT_COMPLETE`` within ``--burst-deadline``, the failures
   by status code, the time until the last one was served, the broker's RSS.
3. **bare**: the same client code and process/connection layout against a bare
   ``grpc.aio`` broadcast server in its own process (generic handlers, identity
   serializers: unary ``Publish`` puts the bytes on every subscriber's queue,
   ``Subscribe`` streams its queue). Each message is a real WatchStatusResponse
   taken from the broker phase with its revision rewritten, so it has the same
   size and the clients parse it exactly as they parse the broker's. Then the
   same burst against it, for the cost of gRPC alone.

Publishing is open loop (a change every 1/rate s whether or not the previous
reply came back), so a server that cannot keep up shows a growing backlog; each
fan-out says whether events were fully delivered as fast as they were offered,
and flags SATURATED otherwise (then the latencies are queueing, and the
broker/bare ratio compares backlogs: rerun with a lower ``--rate``). On the
2-core machine, 1,000 subscribers at 10 changes/s saturate both servers (client
processes included, about 250 us of CPU per delivery in all); 2/s does not.
Broker CPU per delivery is printed beside the bare server's: it is the figure
that noise on a shared machine disturbs least.

Prints figures with the load average beside them; asserts nothing.

    .venv/bin/python bench/watch_fanout.py                       # full run, ~1.5 min
    .venv/bin/python bench/watch_fanout.py --subscribers 200 --burst 500 --changes 20

Internal modes (started by the bench itself): ``subscriber ...`` and ``bare-server PORT``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

# bench/ is on sys.path when this file runs as a script.
from _common import (
    PYTHON,
    Process,
    _start,
    _wait_ready,
    broker,
    cpu_seconds,
    free_port,
    machine_info,
    percentile,
    rss_mb,
    section,
)

from certbroker.v1 import broker_pb2, broker_pb2_grpc, domain_pb2

WATCH_PATH = "/certbroker.v1.CertificateBrokerService/WatchStatus"
PUBLISH_PATH = "/bench.Broadcast/Publish"
SUBSCRIBE_PATH = "/bench.Broadcast/Subscribe"
THIS = str(Path(__file__).resolve())
TARGET_P99_RATIO = 2.0
TARGET_RSS_MB = 300.0
KEYS = {False: domain_pb2.KEY_ALGORITHM_ECDSA_P256, True: domain_pb2.KEY_ALGORITHM_RSA_2048}


# --------------------------------------------------------------------------- helpers


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"[load {one:.2f} {five:.2f} {fifteen:.2f}]"


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory (VmHWM) of a process in MiB, from /proc (0 where unavailable)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def split(total: int, parts: int) -> list[int]:
    parts = max(1, min(parts, total)) if total else 1
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.1f} ms"


# --------------------------------------------------------------------------- subscriber mode


def subscriber_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="watch_fanout.py subscriber")
    p.add_argument("--addr", required=True)
    p.add_argument("--target", choices=("broker", "bare"), required=True)
    p.add_argument("--streams", type=int, required=True)
    p.add_argument("--channels", type=int, default=4)
    p.add_argument("--ready-deadline", type=float, default=60.0)
    p.add_argument("--lifetime", type=float, default=280.0, help="hard bound on this process")
    return p.parse_args(argv)


async def run_subscriber(args: argparse.Namespace) -> None:
    """Open ``--streams`` streams on ``--channels`` connections after "go"; answer on stdout.

    Protocol (JSON lines on stdout, commands on stdin): prints ``connected`` once
    the connections are up; on ``go`` opens every stream at once and prints
    ``ready`` when each stream is subscribed or failed (or the ready deadline
    passed); ``status R`` answers how many streams have reached revision R;
    ``stop`` (or EOF, or the lifetime) cancels everything and prints ``result``.
    """
    loop = asyncio.get_running_loop()
    end = time.monotonic() + args.lifetime
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)

    def emit(kind: str, **payload: Any) -> None:
        sys.stdout.write(json.dumps({"kind": kind, **payload}) + "\n")
        sys.stdout.flush()

    async def command() -> str:
        remaining = end - time.monotonic()
        if remaining <= 0:
            return "stop"
        try:
            line = await asyncio.wait_for(stdin.readline(), remaining)
        except TimeoutError:
            return "stop"
        return line.decode().strip() or "stop"  # EOF: the bench went away

    options = [
        ("grpc.use_local_subchannel_pool", 1),  # one TCP connection per channel object
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ]
    channels = [grpc.aio.insecure_channel(args.addr, options=options) for _ in range(args.channels)]
    try:
        await asyncio.wait_for(
            asyncio.gather(*(c.channel_ready() for c in channels)), args.ready_deadline
        )
        bare = args.target == "bare"
        path = SUBSCRIBE_PATH if bare else WATCH_PATH
        request = (
            b"" if bare else broker_pb2.WatchStatusRequest(after_revision=0).SerializeToString()
        )
        # Raw bytes both ways: each client parses WatchStatusResponse itself, identically.
        methods = [c.unary_stream(path) for c in channels]
        emit("connected", pid=os.getpid())
        if await command() != "go":
            return

        n = args.streams
        position = [0] * n
        ready_at: list[float] = []
        errors_before: Counter[str] = Counter()
        errors_after: Counter[str] = Counter()
        receipts: dict[int, list[float]] = {}  # revision -> [first, last, count]
        sample: list[bytes] = []
        settled = 0
        all_settled = asyncio.Event()
        calls: list[Any] = []
        parse = broker_pb2.WatchStatusResponse.FromString
        complete = broker_pb2.EVENT_TYPE_SNAPSHOT_COMPLETE
        updated = broker_pb2.EVENT_TYPE_DOMAIN_UPDATED

        def settle() -> None:
            nonlocal settled
            settled += 1
            if settled >= n:
                all_settled.set()

        async def stream(i: int) -> None:
            call = methods[i % len(methods)](request)
            calls.append(call)
            subscribed = False
            try:
                async for raw in call:
                    now = time.time()
                    if not subscribed:
                        if bare:
                            subscribed = raw == b""  # the server's hello after registering
                        else:
                            first = parse(raw)
                            subscribed = first.event.type == complete
                        if subscribed:
                            ready_at.append(now)
                            settle()
                        continue
                    message = parse(raw)
                    if message.WhichOneof("kind") != "event":
                        continue  # heartbeat
                    revision = message.event.revision
                    seen = receipts.get(revision)
                    if seen is None:
                        receipts[revision] = [now, now, 1]
                    else:
                        if now > seen[1]:
                            seen[1] = now
                        seen[2] += 1
                    position[i] = revision
                    if not sample and message.event.type == updated:
                        sample.append(raw)
                # The server ended the stream without a status error.
                (errors_after if subscribed else errors_before)["ENDED"] += 1
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.CANCELLED and stopping:
                    return
                (errors_after if subscribed else errors_before)[error.code().name] += 1
            finally:
                if not subscribed:
                    settle()

        stopping = False
        tasks = [asyncio.create_task(stream(i)) for i in range(n)]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_settled.wait(), args.ready_deadline)
        emit(
            "ready",
            ready=len(ready_at),
            failed=dict(errors_before),
            pending=n - settled,
            first=min(ready_at, default=0.0),
            last=max(ready_at, default=0.0),
        )
        while True:
            cmd = await command()
            if cmd.startswith("status"):
                revision = int(cmd.split()[1])
                emit(
                    "status",
                    reached=sum(1 for p in position if p >= revision),
                    deliveries=sum(int(r[2]) for r in receipts.values()),
                )
                continue
            break
        stopping = True
        for call in calls:
            call.cancel()
        await asyncio.wait(tasks, timeout=10)
        for task in tasks:
            task.cancel()
        emit(
            "result",
            receipts={str(k): v for k, v in receipts.items()},
            errors_after=dict(errors_after),
            sample=base64.b64encode(sample[0]).decode() if sample else "",
            cpu=time.process_time(),
        )
    finally:
        for c in channels:
            with contextlib.suppress(Exception):
                await c.close(grace=None)


# --------------------------------------------------------------------------- bare server mode


def serve_bare(port: int, max_pending: int) -> None:
    """The bare broadcast server: a queue per subscriber, Publish puts the bytes on each."""

    async def run() -> None:
        queues: set[asyncio.Queue[bytes]] = set()

        async def publish(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            for queue in queues:
                queue.put_nowait(request)
            return b""

        async def subscribe(
            request: bytes, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[bytes]:
            queue: asyncio.Queue[bytes] = asyncio.Queue()
            queues.add(queue)
            try:
                yield b""  # hello: registered
                while True:
                    yield await queue.get()
            finally:
                queues.discard(queue)

        server = grpc.aio.server(
            options=[
                # The real names (grpc core's GRPC_ARG_SERVER_MAX_PENDING_REQUESTS and
                # its hard limit); "grpc.max_pending_requests" is silently ignored.
                ("grpc.server.max_pending_requests", max_pending),
                ("grpc.server.max_pending_requests_hard_limit", max_pending),
                ("grpc.max_concurrent_streams", 100_000),
            ]
        )
        handler = grpc.method_handlers_generic_handler(
            "bench.Broadcast",
            {
                "Publish": grpc.unary_unary_rpc_method_handler(publish),
                "Subscribe": grpc.unary_stream_rpc_method_handler(subscribe),
            },
        )
        server.add_generic_rpc_handlers((handler,))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.stop(1)

    asyncio.run(run())


@contextlib.asynccontextmanager
async def bare_server(max_pending: int) -> AsyncIterator[tuple[str, Process]]:
    with tempfile.TemporaryDirectory(prefix="certbroker-bare-") as tmp:
        port = free_port()
        addr = f"127.0.0.1:{port}"
        proc = _start(
            "bare-broadcast",
            [PYTHON, THIS, "bare-server", str(port), str(max_pending)],
            dict(os.environ),
            Path(tmp) / "bare.log",
        )

        async def probe() -> bool:
            async with grpc.aio.insecure_channel(addr) as channel:
                try:
                    await channel.unary_unary(PUBLISH_PATH)(b"", timeout=1)
                except grpc.RpcError:
                    return False
                return True

        try:
            await _wait_ready(proc, probe, 15.0)
            yield addr, proc
        finally:
            proc.stop()


# --------------------------------------------------------------------------- the bench


@contextlib.contextmanager
def py_spy(out: str | None, pid: int, seconds: float) -> Iterator[None]:
    """``py-spy record`` of ``pid`` for at most ``seconds`` (nothing when ``out`` is None)."""
    if not out:
        yield
        return
    exe = os.environ.get("PY_SPY", "/tmp/spy/bin/py-spy")
    spy = subprocess.Popen(
        [
            exe,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, int(seconds))),
            "--rate",
            "200",
            "--nonblocking",
            "--gil",  # samples of Python code running, not of waiting
            "--format",
            "raw" if out.endswith((".txt", ".folded")) else "flamegraph",
            "--output",
            out,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        yield
    finally:
        try:
            _, err = spy.communicate(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            os.kill(spy.pid, signal.SIGKILL)
            _, err = spy.communicate(timeout=10)
        tail = err.decode(errors="replace").strip().splitlines()[-1:] if err else []
        print(f"   py-spy: {out} ({'; '.join(tail)})")


@dataclass
class Subscriber:
    proc: asyncio.subprocess.Process
    streams: int

    async def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()

    async def recv(self, kind: str, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"subscriber {self.proc.pid}: no {kind!r} in {timeout:g}s")
            line = await asyncio.wait_for(self.proc.stdout.readline(), remaining)
            if not line:
                raise RuntimeError(f"subscriber {self.proc.pid} exited before sending {kind!r}")
            with contextlib.suppress(ValueError):
                message = json.loads(line)
                if message.get("kind") == kind:
                    return dict(message)

    def stop(self) -> None:
        """End the process by its PID: TERM, then KILL (the caller awaits ``reap``)."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)

    async def reap(self) -> None:
        if self.proc.returncode is not None:
            return
        try:
            await asyncio.wait_for(self.proc.wait(), 5)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            await asyncio.wait_for(self.proc.wait(), 5)


@dataclass
class Group:
    """Client processes holding streams to one server."""

    members: list[Subscriber] = field(default_factory=list)
    go_at: float = 0.0
    ready: list[dict[str, Any]] = field(default_factory=list)

    @property
    def streams(self) -> int:
        return sum(m.streams for m in self.members)

    async def broadcast(self, line: str) -> None:
        await asyncio.gather(*(m.send(line) for m in self.members))

    async def status(self, revision: int) -> tuple[int, int]:
        await self.broadcast(f"status {revision}")
        answers = await asyncio.gather(*(m.recv("status", 30) for m in self.members))
        return sum(a["reached"] for a in answers), sum(a["deliveries"] for a in answers)

    async def finish(self) -> list[dict[str, Any]]:
        await self.broadcast("stop")
        return list(await asyncio.gather(*(m.recv("result", 30) for m in self.members)))

    def cpu(self) -> float:
        return sum(cpu_seconds(m.proc.pid) for m in self.members)


@contextlib.asynccontextmanager
async def subscribers(
    addr: str, target: str, total: int, procs: int, channels: int, ready_deadline: float
) -> AsyncIterator[Group]:
    """Client processes, connected, then told to open every stream at once."""
    group = Group()
    try:
        for count in split(total, procs):
            proc = await asyncio.create_subprocess_exec(
                PYTHON,
                THIS,
                "subscriber",
                "--addr",
                addr,
                "--target",
                target,
                "--streams",
                str(count),
                "--channels",
                str(channels),
                "--ready-deadline",
                str(ready_deadline),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=64 * 1024 * 1024,
            )
            group.members.append(Subscriber(proc, count))
        await asyncio.gather(*(m.recv("connected", 60) for m in group.members))
        group.go_at = time.time()
        await group.broadcast("go")
        group.ready = list(
            await asyncio.gather(*(m.recv("ready", ready_deadline + 30) for m in group.members))
        )
        yield group
    finally:
        for m in group.members:
            m.stop()
        for m in group.members:
            await m.reap()


def describe_ready(group: Group) -> str:
    ready = sum(r["ready"] for r in group.ready)
    pending = sum(r["pending"] for r in group.ready)
    failed: Counter[str] = Counter()
    for r in group.ready:
        failed.update(r["failed"])
    last = max((r["last"] for r in group.ready if r["ready"]), default=group.go_at)
    codes = ", ".join(f"{k} {v}" for k, v in sorted(failed.items())) or "none"
    return (
        f"{ready}/{group.streams} subscribed in {last - group.go_at:.2f} s; "
        f"failed: {codes}; not served by the deadline: {pending}"
    )


@dataclass
class Fanout:
    """One server's figures for the same publishing schedule."""

    name: str
    subscribers: int
    published: list[tuple[int, float]]  # (revision, publish time)
    receipts: dict[int, list[float]]  # revision -> [first, last, count] over all processes
    errors_after: Counter[str]
    publish_rpc: list[float]
    client_cpu: float
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    first_latencies: list[float] = field(default_factory=list)
    deliveries: int = 0
    missing: int = 0
    other_revisions: int = 0
    other_deliveries: int = 0
    duplicates: int = 0

    def compute(self) -> None:
        # Open loop: replies come back in any order; a change that found the domain
        # already in the requested state returns an old revision (no new event).
        first_seen: dict[int, float] = {}
        for rev, t_pub in self.published:
            first_seen[rev] = min(t_pub, first_seen.get(rev, t_pub))
        self.duplicates = len(self.published) - len(first_seen)
        self.published = sorted(first_seen.items())
        published = set(first_seen)
        for rev, t_pub in self.published:
            seen = self.receipts.get(rev)
            if seen is None:
                continue
            self.latencies.append(seen[1] - t_pub)
            self.first_latencies.append(seen[0] - t_pub)
            self.deliveries += int(seen[2])
        self.latencies.sort()
        self.first_latencies.sort()
        self.missing = self.subscribers * len(self.published) - self.deliveries
        for rev, seen in self.receipts.items():
            if rev not in published and rev > min(published, default=0):
                self.other_revisions += 1
                self.other_deliveries += int(seen[2])
        if self.published:
            t0 = self.published[0][1]
            last = max((self.receipts[r][1] for r in published if r in self.receipts), default=t0)
            self.seconds = last - t0

    def kept_up(self) -> tuple[float, float]:
        """Events/s completed (last receipt to last receipt) against events/s published."""
        done = [(t, self.receipts[r][1]) for r, t in self.published if r in self.receipts]
        if len(done) < 2:
            return 0.0, 0.0
        done.sort()
        published = done[-1][0] - done[0][0]
        completed = max(last for _, last in done) - done[0][1]
        if published <= 0 or completed <= 0:
            return 0.0, 0.0
        return (len(done) - 1) / completed, (len(done) - 1) / published

    @property
    def p50(self) -> float:
        return percentile(self.latencies, 50)

    @property
    def p99(self) -> float:
        return percentile(self.latencies, 99)

    def lines(self) -> list[str]:
        rate = self.deliveries / self.seconds if self.seconds else 0.0
        rpc = sorted(self.publish_rpc)
        errors = ", ".join(f"{k} {v}" for k, v in sorted(self.errors_after.items())) or "none"
        worst = self.latencies[-1] if self.latencies else 0.0
        out = [
            f"{self.name}: publish -> last of {self.subscribers} receipts "
            f"p50 {ms(self.p50)}  p99 {ms(self.p99)}  max {ms(worst)}"
            f"  (first receipt p50 {ms(percentile(self.first_latencies, 50))}) {load()}",
            f"{self.name}: {self.deliveries} deliveries of {len(self.published)} events in "
            f"{self.seconds:.2f} s = {rate:.0f} deliveries/s; missing {self.missing}; "
            f"streams ended after subscribing: {errors}",
            f"{self.name}: publish RPC p50 {ms(percentile(rpc, 50))} "
            f"p99 {ms(percentile(rpc, 99))}; "
            f"client processes {self.client_cpu:.1f} CPU s",
        ]
        kept, offered = self.kept_up()
        if offered:
            verdict = (
                "kept up"
                if kept >= 0.9 * offered
                else "SATURATED: latencies are queueing behind a backlog, not fan-out time"
            )
            out.append(
                f"{self.name}: events fully delivered at {kept:.1f}/s while offered at "
                f"{offered:.1f}/s ({kept * self.subscribers:.0f} vs "
                f"{offered * self.subscribers:.0f} deliveries/s): {verdict}"
            )
        if self.duplicates:
            out.append(
                f"{self.name}: {self.duplicates} changes found the domain already changed "
                "(replies out of order) and wrote no event"
            )
        if self.other_revisions:
            out.append(
                f"{self.name}: also {self.other_revisions} events the bench did not publish "
                f"(the scheduler's), {self.other_deliveries} deliveries"
            )
        return out


def merge(results: list[dict[str, Any]]) -> tuple[dict[int, list[float]], Counter[str], bytes]:
    receipts: dict[int, list[float]] = {}
    errors: Counter[str] = Counter()
    sample = b""
    for result in results:
        errors.update(result["errors_after"])
        if not sample and result["sample"]:
            sample = base64.b64decode(result["sample"])
        for key, (first, last, count) in result["receipts"].items():
            rev = int(key)
            seen = receipts.get(rev)
            if seen is None:
                receipts[rev] = [first, last, count]
            else:
                seen[0] = min(seen[0], first)
                seen[1] = max(seen[1], last)
                seen[2] += count
    return receipts, errors, sample


async def wait_delivered(group: Group, revision: int, timeout: float) -> str:
    """Poll until every stream reached ``revision``, progress stops for 5 s, or timeout."""
    deadline = time.monotonic() + timeout
    last_progress = time.monotonic()
    last = (-1, -1)
    while time.monotonic() < deadline:
        reached, deliveries = await group.status(revision)
        if reached >= group.streams:
            return "all streams reached the last event"
        if (reached, deliveries) != last:
            last, last_progress = (reached, deliveries), time.monotonic()
        elif time.monotonic() - last_progress > 5:
            return f"stalled: {reached}/{group.streams} streams reached the last event"
        await asyncio.sleep(0.25)
    return f"timeout after {timeout:g} s"


async def steady(count: int, rate: float, one: Any) -> float:
    """Start ``one(i)`` ``count`` times on a fixed schedule, open loop; return the send time.

    Open loop: a slow reply does not delay the next publish (a server that
    cannot keep up shows it as growing latency, not as a lower rate). Each call
    carries its own RPC deadline, so waiting for them all is bounded.
    """
    start = time.monotonic()
    tasks = []
    for i in range(count):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    sent = time.monotonic() - start
    await asyncio.gather(*tasks)
    return sent


def domain_name(i: int) -> str:
    return f"shop{i:02d}.tenant{i % 7}.example.com"


async def run_broker_phases(
    args: argparse.Namespace,
) -> tuple[Fanout, bytes, dict[str, Any]]:
    env = {
        "CERTBROKER_MAX_PENDING_REQUESTS": str(args.max_pending),
        "CERTBROKER_HEARTBEAT_INTERVAL": "5s",
    }
    for item in args.broker_env:
        key, _, value = item.partition("=")
        env[key] = value
    info: dict[str, Any] = {}
    async with broker(env) as (addr, proc):
        info["broker_pid"] = proc.pid
        names = [domain_name(i) for i in range(args.domains)]
        disabled = {name: True for name in names}
        rsa = {name: False for name in names}
        async with grpc.aio.insecure_channel(addr) as channel:
            stub = broker_pb2_grpc.CertificateBrokerServiceStub(channel)
            for name in names:
                await stub.IssueCertificate(
                    broker_pb2.IssueCertificateRequest(
                        domain=name, app="bench", disable_letsencrypt=True
                    ),
                    timeout=30,
                )
            print(
                f"   broker pid {proc.pid}: {len(names)} domains registered; RSS "
                f"{rss_mb(proc.pid):.0f} MiB {load()}"
            )

            with section(
                f"broker: {args.subscribers} WatchStatus subscribers "
                f"({args.procs} processes x {args.channels} connections), then "
                f"{args.changes} changes at {args.rate:g}/s"
            ):
                async with subscribers(
                    addr, "broker", args.subscribers, args.procs, args.channels, 60
                ) as group:
                    print(f"   {describe_ready(group)} {load()}")
                    published: list[tuple[int, float]] = []
                    rpc: list[float] = []

                    async def change(i: int) -> None:
                        name = names[i % len(names)]
                        if args.change == "key":
                            rsa[name] = not rsa[name]
                            request = broker_pb2.IssueCertificateRequest(
                                domain=name,
                                app="bench",
                                disable_letsencrypt=True,
                                key_algorithm=KEYS[rsa[name]],
                            )
                        else:
                            disabled[name] = not disabled[name]
                            request = broker_pb2.IssueCertificateRequest(
                                domain=name, app="bench", disable_letsencrypt=disabled[name]
                            )
                        t_pub = time.time()
                        reply = await stub.IssueCertificate(request, timeout=30)
                        rpc.append(time.time() - t_pub)
                        published.append((reply.domain.revision, t_pub))

                    await asyncio.sleep(0.5)
                    cpu0, hwm0 = cpu_seconds(proc.pid), peak_rss_mb(proc.pid)
                    client_cpu0 = group.cpu()
                    t0 = time.monotonic()
                    with py_spy(args.py_spy, proc.pid, args.changes / args.rate + 3):
                        publish_s = await steady(args.changes, args.rate, change)
                        how = await wait_delivered(group, max(r for r, _ in published), 60)
                    wall = time.monotonic() - t0
                    cpu = cpu_seconds(proc.pid) - cpu0
                    client_cpu = group.cpu() - client_cpu0
                    results = await group.finish()
                receipts, errors, sample = merge(results)
                result = Fanout(
                    "broker", group.streams, published, receipts, errors, rpc, client_cpu
                )
                result.compute()
                print(
                    f"   sent {args.changes} changes in {publish_s:.2f} s "
                    f"({args.changes / publish_s:.1f}/s), {len(result.published)} distinct "
                    f"revisions; delivery: {how}"
                )
                for line in result.lines():
                    print("   " + line)
                print(
                    f"   broker process: {cpu:.2f} CPU s over {wall:.1f} s "
                    f"({cpu / wall * 100:.0f} % of one core, "
                    f"{cpu / max(1, result.deliveries + result.other_deliveries) * 1e6:.0f} us "
                    f"per delivery); RSS {rss_mb(proc.pid):.0f} MiB, "
                    f"peak (VmHWM) {peak_rss_mb(proc.pid):.0f} MiB (was {hwm0:.0f} before "
                    f"publishing) {load()}"
                )
                info["live_cpu"] = cpu
                info["live_hwm"] = peak_rss_mb(proc.pid)

        if args.burst:
            await asyncio.sleep(1.0)
            before = rss_mb(proc.pid)
            with section(
                f"broker: burst of {args.burst} WatchStatus opens at once "
                f"({args.burst_procs} processes x {args.burst_channels} connections, "
                f"after_revision=0, deadline {args.burst_deadline:g} s)"
            ):
                cpu0 = cpu_seconds(proc.pid)
                async with subscribers(
                    addr,
                    "broker",
                    args.burst,
                    args.burst_procs,
                    args.burst_channels,
                    args.burst_deadline,
                ) as group:
                    print(f"   {describe_ready(group)} {load()}")
                    served = sum(r["ready"] for r in group.ready)
                    info["burst_served"] = served
                    info["burst_rss"] = rss_mb(proc.pid)
                    print(
                        f"   broker RSS {before:.0f} MiB before, {info['burst_rss']:.0f} MiB with "
                        f"all streams open; peak (VmHWM) {peak_rss_mb(proc.pid):.0f} MiB; "
                        f"{cpu_seconds(proc.pid) - cpu0:.2f} CPU s {load()}"
                    )
                    await group.finish()
                await asyncio.sleep(1.0)
                info["burst_hwm"] = peak_rss_mb(proc.pid)
                print(f"   after the burst streams closed: RSS {rss_mb(proc.pid):.0f} MiB {load()}")
    return result, sample, info


async def run_bare_phase(args: argparse.Namespace, revisions: list[int], sample: bytes) -> Fanout:
    template = broker_pb2.WatchStatusResponse.FromString(sample)
    payloads = []
    for rev in revisions:
        template.event.revision = rev
        payloads.append(template.SerializeToString())
    with section(
        f"bare grpc.aio broadcast: {args.subscribers} subscribers (same layout), "
        f"{len(payloads)} messages of {len(sample)} bytes at {args.rate:g}/s"
    ):
        async with bare_server(args.max_pending) as (addr, proc):
            async with grpc.aio.insecure_channel(addr) as channel:
                publish = channel.unary_unary(PUBLISH_PATH)
                async with subscribers(
                    addr, "bare", args.subscribers, args.procs, args.channels, 60
                ) as group:
                    print(f"   {describe_ready(group)} {load()}")
                    published: list[tuple[int, float]] = []
                    rpc: list[float] = []

                    async def one(i: int) -> None:
                        t_pub = time.time()
                        await publish(payloads[i], timeout=30)
                        rpc.append(time.time() - t_pub)
                        published.append((revisions[i], t_pub))

                    await asyncio.sleep(0.5)
                    cpu0 = cpu_seconds(proc.pid)
                    client_cpu0 = group.cpu()
                    t0 = time.monotonic()
                    publish_s = await steady(len(payloads), args.rate, one)
                    how = await wait_delivered(group, max(revisions), 60)
                    wall = time.monotonic() - t0
                    cpu = cpu_seconds(proc.pid) - cpu0
                    client_cpu = group.cpu() - client_cpu0
                    results = await group.finish()
            receipts, errors, _ = merge(results)
            result = Fanout("bare  ", group.streams, published, receipts, errors, rpc, client_cpu)
            result.compute()
            print(
                f"   sent {len(published)} messages in {publish_s:.2f} s "
                f"({len(published) / publish_s:.1f}/s); delivery: {how}"
            )
            for line in result.lines():
                print("   " + line)
            print(
                f"   bare process: {cpu:.2f} CPU s over {wall:.1f} s "
                f"({cpu / wall * 100:.0f} % of one core, "
                f"{cpu / max(1, result.deliveries) * 1e6:.0f} us per delivery); "
                f"RSS {rss_mb(proc.pid):.0f} MiB {load()}"
            )
            if args.burst:
                await asyncio.sleep(1.0)
                before, cpu0 = rss_mb(proc.pid), cpu_seconds(proc.pid)
                print(f"   bare: burst of {args.burst} Subscribe opens at once (same layout)")
                async with subscribers(
                    addr,
                    "bare",
                    args.burst,
                    args.burst_procs,
                    args.burst_channels,
                    args.burst_deadline,
                ) as group:
                    print(f"   {describe_ready(group)} {load()}")
                    print(
                        f"   bare RSS {before:.0f} MiB before, {rss_mb(proc.pid):.0f} MiB with "
                        f"all streams open; peak (VmHWM) {peak_rss_mb(proc.pid):.0f} MiB; "
                        f"{cpu_seconds(proc.pid) - cpu0:.2f} CPU s {load()}"
                    )
                    await group.finish()
    return result


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--subscribers", type=int, default=1000, help="live WatchStatus streams")
    p.add_argument("--procs", type=int, default=4, help="client processes for them")
    p.add_argument("--channels", type=int, default=4, help="connections per client process")
    p.add_argument("--changes", type=int, default=100, help="changes published")
    p.add_argument("--rate", type=float, default=10.0, help="changes per second")
    p.add_argument("--domains", type=int, default=10, help="domains in the broker")
    p.add_argument(
        "--change",
        choices=("key", "letsencrypt"),
        default="key",
        help="key: IssueCertificate toggling key_algorithm on a disabled domain (one event "
        "per change); letsencrypt: toggling disable_letsencrypt (each enable also makes "
        "the scheduler write two events, so the broker fans out twice the bare's messages)",
    )
    p.add_argument("--burst", type=int, default=5000, help="streams opened at once (0: skip)")
    p.add_argument("--burst-procs", type=int, default=4, help="client processes for the burst")
    p.add_argument("--burst-channels", type=int, default=8, help="connections per burst process")
    p.add_argument("--burst-deadline", type=float, default=60.0, help="seconds to be served")
    p.add_argument(
        "--max-pending",
        type=int,
        default=20000,
        help="grpc.max_pending_requests of both servers (CERTBROKER_MAX_PENDING_REQUESTS)",
    )
    p.add_argument("--no-bare", action="store_true", help="skip the bare broadcast phase")
    p.add_argument(
        "--broker-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the broker process (repeatable)",
    )
    p.add_argument(
        "--py-spy",
        metavar="OUT.svg",
        help="record the broker with py-spy (PY_SPY or /tmp/spy/bin/py-spy) while publishing "
        "(.txt: collapsed stacks, else a flame graph)",
    )
    return p.parse_args(argv)


async def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    print(machine_info())
    print(
        f"settings: {args.subscribers} subscribers over {args.procs} processes x "
        f"{args.channels} connections; {args.changes} changes at {args.rate:g}/s over "
        f"{args.domains} domains; burst {args.burst} over {args.burst_procs} x "
        f"{args.burst_channels} (deadline {args.burst_deadline:g} s); max_pending_requests "
        f"{args.max_pending}; heartbeat 5s; loopback, plaintext {load()}"
    )
    started = time.monotonic()
    broker_result, sample, info = await run_broker_phases(args)
    bare_result = None
    if not args.no_bare and sample and broker_result.published:
        revisions = [rev for rev, _ in broker_result.published]
        bare_result = await run_bare_phase(args, revisions, sample)
    print(f"-- summary ({time.monotonic() - started:.0f} s) {load()}")
    if bare_result is not None and bare_result.p50 and bare_result.p99:
        r50 = broker_result.p50 / bare_result.p50
        r99 = broker_result.p99 / bare_result.p99
        verdict = "meets" if r99 <= TARGET_P99_RATIO else "MISSES"
        saturated = [
            f.name.strip()
            for f in (broker_result, bare_result)
            if f.kept_up()[0] < 0.9 * f.kept_up()[1]
        ]
        if saturated:
            verdict += (
                f"; but {' and '.join(saturated)} SATURATED at this rate: the ratio compares "
                "backlogs, rerun with a lower --rate for fan-out latency"
            )
        print(
            f"   latency to the last of {args.subscribers}: broker p50 {ms(broker_result.p50)} / "
            f"p99 {ms(broker_result.p99)}; bare p50 {ms(bare_result.p50)} / p99 "
            f"{ms(bare_result.p99)}; ratio p50 {r50:.2f}x, p99 {r99:.2f}x "
            f"({verdict} the p99 <= {TARGET_P99_RATIO:g}x target)"
        )
    hwm = max(info.get("live_hwm", 0.0), info.get("burst_hwm", 0.0))
    print(
        f"   broker peak RSS {hwm:.0f} MiB "
        f"({'meets' if hwm < TARGET_RSS_MB else 'MISSES'} the < {TARGET_RSS_MB:.0f} MB target)"
    )
    if args.burst:
        served = info.get("burst_served", 0)
        print(
            f"   burst: {served}/{args.burst} served "
            f"({'meets' if served == args.burst else 'MISSES'} the all-served target)"
        )
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "subscriber":
        asyncio.run(run_subscriber(subscriber_args(sys.argv[2:])))
    elif len(sys.argv) > 1 and sys.argv[1] == "bare-server":
        serve_bare(int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 20000)
    else:
        sys.exit(asyncio.run(main(sys.argv[1:])))
