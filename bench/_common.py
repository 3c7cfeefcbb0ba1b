"""Shared bench helpers: servers as subprocesses, a closed-loop load driver, figures.

Why subprocesses: the server under test and the load generator must not share
an interpreter (one GIL, one event loop) or the figures measure their
contention instead of the server. Every process started here is stopped by
its PID, with a deadline, even when the bench fails half-way.

Run as a script, this file is also the bare ``grpc.aio`` echo server the
benches compare the broker with: ``python bench/_common.py echo PORT``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import grpc.aio

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
ECHO_METHOD = "/bench.Echo/Echo"


def free_port() -> int:
    """A loopback TCP port the kernel says is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values (0 for none)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def run_processes(commands: Sequence[Sequence[str]], what: str) -> list[dict[str, float]]:
    """Start every command at once (processes that contend, like several brokers) and
    return what each printed as one JSON object; ``what`` names one in an error."""
    procs = [subprocess.Popen(list(c), stdout=subprocess.PIPE, text=True) for c in commands]
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"{what} {proc.pid} failed")
        results.append(json.loads(out))
    return results


def machine_info() -> str:
    """What the figures were measured on: cores matter most for gRPC in Python."""
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"machine: {os.cpu_count()} cores ({usable} usable), {model}; "
        f"Python {platform.python_version()}, grpcio {grpc.__version__}, {platform.system()}"
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, from /proc (0 where unavailable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MiB, from /proc (0 where unavailable)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Process:
    """A started server subprocess; ``stop()`` ends it by PID (TERM, then KILL)."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.poll() is not None:
            return
        os.kill(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout)

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


def _start(name: str, argv: Sequence[str], env: Mapping[str, str], log: Path) -> Process:
    with log.open("wb") as out:  # the child keeps its own descriptor
        popen = subprocess.Popen(
            list(argv), env=dict(env), stdout=out, stderr=subprocess.STDOUT, cwd=ROOT
        )
    return Process(name, popen, log)


async def _wait_ready(
    proc: Process, probe: Callable[[], Awaitable[bool]], deadline_s: float
) -> None:
    """Poll ``probe`` until it is true, the process dies, or the deadline passes."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(
                f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log_tail()}"
            )
        if await probe():
            return
        await asyncio.sleep(0.05)
    proc.stop()
    raise RuntimeError(f"{proc.name} not ready after {deadline_s}s:\n{proc.log_tail()}")


async def _health_serving(addr: str) -> bool:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.insecure_channel(addr) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            resp = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
        except grpc.RpcError:
            return False
        return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)


def broker_env(port: int, workdir: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Settings of a broker that stays on loopback and never reaches a real CA or DNS.

    The ACME directory and DNS servers point at a closed loopback port: the
    benches and tests use ``disable_letsencrypt`` domains, and anything that
    tried the network anyway would fail fast instead of reaching the Internet.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTBROKER_")}
    env.update(
        {
            "CERTBROKER_LISTEN": f"127.0.0.1:{port}",
            "CERTBROKER_DB": str(workdir / "db.sqlite3"),
            "CERTBROKER_KEK_FILE": str(workdir / "kek"),
            "CERTBROKER_ACME_DIRECTORY": "https://127.0.0.1:9/directory",
            "CERTBROKER_DNS_SERVERS": "127.0.0.1:9",
            "CERTBROKER_HTTP01_LISTEN": "off",
            "CERTBROKER_HEALTH_LISTEN": "off",
            "CERTBROKER_LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra or {})
    return env


async def start_broker(
    env: Mapping[str, str], log: Path, *, name: str = "broker", ready_timeout: float = 60.0
) -> Process:
    """A broker subprocess with ``env`` (``broker_env`` and more), once its health is SERVING.

    The caller stops it (``Process.stop``), or kills it.
    """
    addr = env["CERTBROKER_LISTEN"]
    proc = _start(name, [PYTHON, "-m", "certbroker.server"], env, log)
    await _wait_ready(proc, lambda: _health_serving(addr), ready_timeout)
    return proc


@contextlib.asynccontextmanager
async def broker(
    extra_env: Mapping[str, str] | None = None, *, ready_timeout: float = 30.0
) -> AsyncIterator[tuple[str, Process]]:
    """A broker subprocess on a free port with a fresh temp DB; yields (addr, process)."""
    with tempfile.TemporaryDirectory(prefix="certbroker-bench-") as tmp:
        port = free_port()
        addr = f"127.0.0.1:{port}"
        env = broker_env(port, Path(tmp), extra_env)
        proc = _start("broker", [PYTHON, "-m", "certbroker.server"], env, Path(tmp) / "broker.log")
        try:
            await _wait_ready(proc, lambda: _health_serving(addr), ready_timeout)
            yield addr, proc
        finally:
            proc.stop()


@contextlib.asynccontextmanager
async def echo_server(*, ready_timeout: float = 15.0) -> AsyncIterator[tuple[str, Process]]:
    """The bare ``grpc.aio`` echo server in its own process; yields (addr, process)."""
    with tempfile.TemporaryDirectory(prefix="certbroker-echo-") as tmp:
        port = free_port()
        addr = f"127.0.0.1:{port}"
        proc = _start(
            "echo",
            [PYTHON, str(Path(__file__).resolve()), "echo", str(port)],
            dict(os.environ),
            Path(tmp) / "echo.log",
        )

        async def probe() -> bool:
            async with grpc.aio.insecure_channel(addr) as channel:
                call = channel.unary_unary(ECHO_METHOD)
                try:
                    await call(b"ping", timeout=1)
                except grpc.RpcError:
                    return False
                return True

        try:
            await _wait_ready(proc, probe, ready_timeout)
            yield addr, proc
        finally:
            proc.stop()


@dataclass
class LoadResult:
    """Outcome of a closed-loop run: completed calls, failures, latencies in seconds."""

    seconds: float
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        lat = sorted(self.latencies)
        errors = ", ".join(f"{k}={v}" for k, v in sorted(self.errors.items())) or "none"
        return (
            f"{self.rate:8.0f} req/s  p50 {percentile(lat, 50) * 1000:6.2f} ms  "
            f"p99 {percentile(lat, 99) * 1000:6.2f} ms  ({len(lat)} ok, errors: {errors})"
        )


async def closed_loop(
    call: Callable[[int], Awaitable[object]],
    *,
    duration: float,
    concurrency: int,
    warmup: float = 1.0,
) -> LoadResult:
    """``concurrency`` tasks each calling ``call(i)`` back to back for ``duration`` s.

    A warm-up period (not measured) lets connections, caches and the JIT-less
    interpreter's import-time work settle, so the first slow calls do not
    count against either server.
    """
    result = LoadResult(seconds=duration)
    measuring = False
    stop_at = time.monotonic() + warmup + duration

    async def worker(worker_id: int) -> None:
        i = worker_id
        while time.monotonic() < stop_at:
            t0 = time.perf_counter()
            try:
                await call(i)
            except grpc.RpcError as err:
                code = err.code().name if hasattr(err, "code") else type(err).__name__
                result.errors[code] = result.errors.get(code, 0) + 1
                continue
            finally:
                i += concurrency
            if measuring:
                result.latencies.append(time.perf_counter() - t0)

    tasks = [asyncio.create_task(worker(n)) for n in range(concurrency)]
    await asyncio.sleep(warmup)
    measuring = True
    started = time.monotonic()
    await asyncio.gather(*tasks)
    result.seconds = time.monotonic() - started
    return result


def _serve_echo(port: int) -> None:
    """The bare server: one generic handler that returns the request bytes."""

    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    async def run() -> None:
        server = grpc.aio.server()
        handler = grpc.method_handlers_generic_handler(
            "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
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


def _main(argv: Sequence[str]) -> int:
    if len(argv) == 2 and argv[0] == "echo":
        _serve_echo(int(argv[1]))
        return 0
    print("usage: python bench/_common.py echo PORT", file=sys.stderr)
    return 2


@contextlib.contextmanager
def section(title: str) -> Iterator[None]:
    """Print a titled block with its wall time, so long phases show progress."""
    print(f"-- {title}", flush=True)
    t0 = time.monotonic()
    yield
    print(f"   ({time.monotonic() - t0:.1f} s)", flush=True)


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
