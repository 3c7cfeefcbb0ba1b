"""What the sync agent tests share: Pebble + the broker (mTLS), the agent as a process, probes.

The proxies (tests/infra/haproxy.py, tests/infra/nginx.py) forward HTTP-01 to
the broker's responder, and Pebble validates through the proxy's HTTP port
(``SyncLab.http_port``), as in production. The agent runs as a real process
(``python -m certbroker_client.sync.cli``) with the router identity, so tests
can kill it with SIGKILL and start it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from certbroker.v1 import domain_pb2
from certbroker_client.client import BrokerClient, TlsFiles
from tests.infra.challtestsrv import ChallTestSrv
from tests.infra.pebble import Pebble
from tests.infra.ports import free_port
from tests.infra.process import ServerProcess
from tests.integration.lab import BrokerProcess
from tests.pki import Issued, TestPKI
from tests.router.support import fingerprint, served
from tests.routing_lab import mtls_lab

ROOT = Path(__file__).resolve().parents[2]
CUSTOM_PKI = TestPKI("Sync", key_slot=4)
DEFAULT_PKI = TestPKI("Sync Default", key_slot=5)
IN_USE = domain_pb2.LETS_ENCRYPT_STATE_IN_USE


def unique(label: str = "www") -> str:
    return f"{label}.s{uuid.uuid4().hex[:10]}.example.test"


def custom_leaf(*names: str) -> Issued:
    """A leaf of the broker-trusted private PKI, valid around the real clock."""
    now = datetime.now(UTC)
    return CUSTOM_PKI.leaf(
        *names, not_before=now - timedelta(days=1), not_after=now + timedelta(days=60)
    )


def default_pem() -> tuple[bytes, Issued]:
    """The proxies' default certificate (chain + key) for names they do not serve."""
    now = datetime.now(UTC)
    leaf = DEFAULT_PKI.leaf(
        "default.invalid", not_before=now - timedelta(days=1), not_after=now + timedelta(days=60)
    )
    return DEFAULT_PKI.bundle(leaf) + leaf.key_pem(), leaf


DEFAULT_PEM, DEFAULT_LEAF = default_pem()
PREFIX = "certbroker/"


@dataclass
class SyncLab:
    """Pebble and the broker for one test module, and the identities to reach it."""

    pebble: Pebble
    broker: BrokerProcess
    api: BrokerClient
    router_tls: TlsFiles
    http_port: int
    http01_port: int
    workdir: Path

    @property
    def broker_addr(self) -> str:
        return f"127.0.0.1:{self.broker.port}"

    def pebble_root_file(self) -> Path:
        path = self.workdir / "pebble-root.pem"
        path.write_bytes(self.pebble.root_pem())
        return path

    async def issue(self, name: str, timeout: float = 60.0) -> domain_pb2.Domain:
        """Register ``name`` and wait until its Let's Encrypt certificate is in use."""
        await self.api.issue_certificate(name, "shop")
        deadline = time.monotonic() + timeout
        status = await self.api.get_status(name)
        while status.lets_encrypt_state != IN_USE:
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} not issued in {timeout}s: {status}")
            await asyncio.sleep(0.05)
            status = await self.api.get_status(name)
        return status

    async def custom(self, name: str, *, register: bool = True) -> Issued:
        """Upload a fresh custom certificate for ``name`` (registered first, without LE)."""
        if register:
            await self.api.issue_certificate(name, "shop", disable_letsencrypt=True)
        leaf = custom_leaf(name)
        await self.api.upload_custom(name, CUSTOM_PKI.bundle(leaf), leaf.key_pem(), app="shop")
        return leaf


@contextlib.asynccontextmanager
async def sync_lab(workdir: Path, dns: ChallTestSrv) -> AsyncIterator[SyncLab]:
    """Start Pebble (validating through ``http_port``) and the broker; stop both by PID."""
    http_port = free_port()
    async with mtls_lab(
        workdir, dns, pebble_http_port=http_port, trust_root=CUSTOM_PKI.root.pem
    ) as base:
        yield SyncLab(
            pebble=base.pebble,
            broker=base.broker,
            api=base.api,
            router_tls=base.router_tls,
            http_port=http_port,
            http01_port=base.http01_port,
            workdir=workdir,
        )


class SyncAgent(ServerProcess):
    """``certbroker sync <target>`` as a process (through the main CLI), logging to a file."""

    def __init__(self, target: str, lab: SyncLab, args: Sequence[str], log_path: Path) -> None:
        self.target = target
        self.lab = lab
        self.args = list(args)
        self._log_path = log_path

    @property
    def log_path(self) -> Path:
        return self._log_path

    def command(self) -> list[str]:
        tls = self.lab.router_tls
        assert tls.ca and tls.cert and tls.key
        return [
            sys.executable, "-m", "certbroker_client.cli", "sync", self.target,
            "--addr", self.lab.broker_addr, "--tls-ca", str(tls.ca),
            "--tls-cert", str(tls.cert), "--tls-key", str(tls.key),
            "--router-id", f"test-{self.target}", "--idle-timeout", "5",
            "--check-interval", "0.2", *self.args,
        ]  # fmt: skip

    def start(self) -> SyncAgent:
        """Start and wait until the first snapshot is applied (the agent logs it)."""
        marker = "snapshot at revision"
        seen_before = self.log_text().count(marker)
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                env=dict(os.environ),
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"the agent exited:\n{self.log_text()}")
            if self.log_text().count(marker) > seen_before:
                return self
            time.sleep(0.05)
        raise RuntimeError(f"the agent applied no snapshot in 30 s:\n{self.log_text()}")

    def kill_hard(self) -> None:
        """SIGKILL: no clean-up at all, as a crash."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(5)

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None


async def leaf_fingerprint(port: int, name: str) -> str | None:
    """The SHA-256 of the leaf served for ``name``, None if the handshake fails."""
    try:
        return fingerprint(await served(port, name))
    except (OSError, ssl.SSLError):
        return None


async def wait_fingerprint(port: int, name: str, wanted: str | None, timeout: float = 15.0) -> None:
    """Poll handshakes until ``name`` is served with ``wanted`` (None: until handshakes fail)."""
    deadline = time.monotonic() + timeout
    last: str | None = ""
    while time.monotonic() < deadline:
        last = await leaf_fingerprint(port, name)
        if last == wanted:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{name} at port {port}: wanted {wanted}, still {last} after {timeout}s")


async def wait_verified(
    port: int, name: str, trust_pem: bytes, wanted: str, timeout: float = 15.0
) -> None:
    """Poll until a handshake that validates chain and name to ``trust_pem`` returns ``wanted``.

    For moments when some handshakes may still fail on purpose, e.g. while an
    nginx reload hands the listening socket from the old worker to the new one.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = fingerprint(await served(port, name, trust_pem=trust_pem))
        except (OSError, ssl.SSLError) as error:
            last = error
        if last == wanted:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{name} at port {port}: wanted {wanted} validated, got {last!r}")


async def openssl_verify(port: int, name: str, ca: Path) -> str:
    """``openssl s_client -servername`` with full verification; its output (asserts success)."""
    proc = await asyncio.create_subprocess_exec(
        "openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", name,
        "-CAfile", str(ca), "-verify_hostname", name, "-verify_return_error", "-brief",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(proc.communicate(), 20)
    text = output.decode(errors="replace")
    assert proc.returncode == 0, text
    assert "Verification: OK" in text, text
    return text
