"""A real broker subprocess for the CLI tests.

Started once per session on a free loopback port with a fresh database, and
stopped by its PID. It trusts a private test root for custom certificates,
and its ACME directory and DNS servers point at a closed loopback port: the
tests use ``--no-letsencrypt`` domains, so nothing may reach the Internet.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.infra.ports import free_port
from tests.pki import TestPKI
from tests.tls import Identity, MtlsFiles

ROOT = Path(__file__).resolve().parents[2]
START_DEADLINE_S = 30.0


@dataclass(frozen=True)
class RunningBroker:
    addr: str
    pid: int
    workdir: Path
    pki: TestPKI
    log: Path


def _serving(addr: str, credentials: grpc.ChannelCredentials | None = None) -> bool:
    """The broker at ``addr`` answers SERVING (over TLS with ``credentials`` if given)."""
    channel = (
        grpc.secure_channel(addr, credentials)
        if credentials is not None
        else grpc.insecure_channel(addr)
    )
    with channel:
        try:
            resp = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1
            )
        except grpc.RpcError:
            return False
    return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)


def start_broker(
    workdir: Path,
    trust: Path,
    port: int | None = None,
    extra_env: dict[str, str] | None = None,
    serving: Callable[[str], bool] | None = None,
) -> tuple[subprocess.Popen[bytes], str]:
    """Start a broker on ``port`` (a free one when None), wait for SERVING.

    Returns the process and its address. With no port given it retries with a
    fresh one when the chosen port was taken between probe and bind.
    ``serving`` replaces the plaintext health probe (for a TLS broker).
    """
    probe = serving or _serving
    log = workdir / "broker.log"
    for _attempt in range(3 if port is None else 1):
        chosen = port or free_port()
        addr = f"127.0.0.1:{chosen}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CERTBROKER_")}
        env.update(
            {
                "CERTBROKER_LISTEN": addr,
                "CERTBROKER_DB": str(workdir / "db.sqlite3"),
                "CERTBROKER_KEK_FILE": str(workdir / "kek"),
                "CERTBROKER_TRUST_BUNDLE": str(trust),
                "CERTBROKER_ACME_DIRECTORY": "https://127.0.0.1:9/directory",
                "CERTBROKER_DNS_SERVERS": "127.0.0.1:9",
                "CERTBROKER_HTTP01_LISTEN": "off",
                "CERTBROKER_HEALTH_LISTEN": "off",
                "CERTBROKER_HEARTBEAT_INTERVAL": "1s",
            }
        )
        env.update(extra_env or {})
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "certbroker.server"],
                env=env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_DEADLINE_S
        while time.monotonic() < deadline and proc.poll() is None:
            if probe(addr):
                return proc, addr
            time.sleep(0.05)
        stop_broker(proc)
    pytest.fail(f"broker did not start:\n{log.read_text(errors='replace')[-3000:]}")


def start_mtls_broker(
    workdir: Path, trust: Path, files: MtlsFiles
) -> tuple[subprocess.Popen[bytes], str, Identity]:
    """``start_broker`` requiring client certificates of ``files``' CA.

    Returns the process, its address and the ``cli-api`` identity (role ``api``),
    through which the broker is probed for SERVING.
    """
    server = files.issue("broker", server=True)
    client = files.issue("cli-api")
    credentials = grpc.ssl_channel_credentials(
        files.ca.read_bytes(), client.key.read_bytes(), client.cert.read_bytes()
    )
    env = {
        "CERTBROKER_TLS_CERT": str(server.cert),
        "CERTBROKER_TLS_KEY": str(server.key),
        "CERTBROKER_TLS_CLIENT_CA": str(files.ca),
        "CERTBROKER_ROLES": "cli-api=api",
    }
    proc, addr = start_broker(
        workdir, trust, extra_env=env, serving=lambda addr: _serving(addr, credentials)
    )
    return proc, addr, client


def stop_broker(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM by PID (graceful stop), SIGKILL if it does not end within 10 s."""
    if proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)


def _require_server() -> None:
    if not (ROOT / "service" / "certbroker" / "server.py").exists():
        pytest.skip("service/certbroker/server.py is not there yet")


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningBroker]:
    _require_server()
    workdir = tmp_path_factory.mktemp("broker")
    pki = TestPKI(prefix="CLI")
    trust = workdir / "trust.pem"
    trust.write_bytes(pki.root.pem)
    proc, addr = start_broker(workdir, trust)
    try:
        yield RunningBroker(
            addr=addr,
            pid=proc.pid,
            workdir=workdir,
            pki=pki,
            log=workdir / "broker.log",
        )
    finally:
        stop_broker(proc)


@pytest.fixture
def broker_dir(tmp_path: Path) -> tuple[Path, Path]:
    """A private workdir and trust file, for tests that stop and restart their broker."""
    _require_server()
    trust = tmp_path / "trust.pem"
    trust.write_bytes(TestPKI(prefix="Restart").root.pem)
    return tmp_path, trust
