"""A real ACME CA (Pebble) and DNS (challtestsrv) on loopback, and a broker wired to them."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store

from certbroker.config import Settings
from certbroker.v1 import broker_pb2, broker_pb2_grpc, domain_pb2
from tests.broker import broker_settings
from tests.infra.challtestsrv import ChallTestSrv
from tests.infra.pebble import Pebble
from tests.infra.ports import wait_tcp

NINETY_DAYS = 90 * 86400


@dataclass
class Lab:
    dns: ChallTestSrv
    pebble: Pebble
    http01_port: int

    def settings(self, tmp: Path, **overrides: Any) -> Settings:
        base = broker_settings(
            tmp,
            acme_directory=self.pebble.directory_url,
            acme_ca_bundle=self.pebble.ca_bundle_path,
            dns_servers=(("127.0.0.1", self.dns.dns_port),),
            platform_targets=("127.0.0.1",),
            http01_listen=("127.0.0.1", self.http01_port),
        )
        return replace(base, **overrides)


def unique_domain(label: str = "www") -> str:
    return f"{label}.{uuid.uuid4().hex[:10]}.example.test"


async def wait_status(
    stub: broker_pb2_grpc.CertificateBrokerServiceStub,
    domain: str,
    done: Callable[[domain_pb2.Domain], bool],
    timeout: float = 20.0,
    between: Callable[[], Awaitable[None]] | None = None,
) -> domain_pb2.Domain:
    """Poll GetStatus until ``done`` holds or the deadline passes (then fail, showing the last)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        reply = await stub.GetStatus(broker_pb2.GetStatusRequest(domain=domain))
        last = reply.domain
        if done(last):
            return last
        if between is not None:
            await between()
        await asyncio.sleep(0.02)
    raise AssertionError(f"{domain} did not reach the expected status in {timeout}s: {last}")


def in_use(d: domain_pb2.Domain) -> bool:
    return d.lets_encrypt_state == domain_pb2.LETS_ENCRYPT_STATE_IN_USE


def verify_chain(chain_pem: str, root_pem: bytes, name: str, when: datetime | None = None) -> None:
    """Path-validate the served chain to Pebble's root for ``name`` (raises if it does not)."""
    certs = x509.load_pem_x509_certificates(chain_pem.encode())
    roots = x509.load_pem_x509_certificates(root_pem)
    verifier = (
        PolicyBuilder()
        .store(Store(roots))
        .time(when or datetime.now(UTC))
        .build_server_verifier(x509.DNSName(name))
    )
    verifier.verify(certs[0], certs[1:])


class BrokerProcess:
    """The broker as a real process (``python -m certbroker.server``), for crash tests.

    ``extra_env`` is laid over the environment made from ``settings``, for what
    ``Settings`` does not carry here (TLS files, roles, a broker id...).
    """

    def __init__(
        self,
        settings: Settings,
        port: int,
        log_path: Path,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.port = port
        self.log_path = log_path
        self.extra_env = dict(extra_env or {})
        self.proc: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        s = self.settings
        env = dict(os.environ)
        env.update(
            {
                "CERTBROKER_LISTEN": f"127.0.0.1:{self.port}",
                "CERTBROKER_DB": s.db,
                "CERTBROKER_KEK_FILE": s.kek_file,
                "CERTBROKER_ACME_DIRECTORY": s.acme_directory,
                "CERTBROKER_ACME_CA_BUNDLE": s.acme_ca_bundle or "",
                "CERTBROKER_DNS_SERVERS": ",".join(f"{h}:{p}" for h, p in s.dns_servers or ()),
                "CERTBROKER_PLATFORM_TARGETS": ",".join(s.platform_targets),
                "CERTBROKER_HTTP01_LISTEN": (
                    f"{s.http01_listen[0]}:{s.http01_listen[1]}" if s.http01_listen else "off"
                ),
                "CERTBROKER_HEALTH_LISTEN": "off",  # parallel brokers never share 50052
            }
        )
        env.update(self.extra_env)
        return env

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "certbroker.server"],
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        # Generous: a start is ~1-3 s, but on 2 cores shared with other suites it took >15 s.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"broker exited: {self.log_path.read_text()}")
            if wait_tcp("127.0.0.1", self.port):
                return
            time.sleep(0.02)
        raise RuntimeError("broker did not listen in time")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)

    def terminate(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode
