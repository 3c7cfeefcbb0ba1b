"""What the backup and KEK-rotation tests share: a broker with custom certificates, the CLI."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from certbroker.v1 import broker_pb2, broker_pb2_grpc
from tests.pki import TestPKI

ROOT = Path(__file__).resolve().parents[2]
PKI = TestPKI("Ops", key_slot=3)


def trust_file(directory: Path) -> Path:
    """The PEM file ``CERTBROKER_TRUST_BUNDLE`` points at: the private test root."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "trust.pem"
    path.write_bytes(PKI.root.pem)
    return path


async def add_custom(stub: broker_pb2_grpc.CertificateBrokerServiceStub, name: str) -> None:
    """A domain without Let's Encrypt, serving an uploaded certificate (a sealed key)."""
    await stub.IssueCertificate(
        broker_pb2.IssueCertificateRequest(domain=name, app="shop", disable_letsencrypt=True)
    )
    leaf = PKI.leaf(name)
    await stub.UploadCustom(
        broker_pb2.UploadCustomRequest(
            domain=name, certificate=PKI.bundle(leaf), private_key=leaf.key_pem()
        )
    )


@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str


async def certbroker(*args: str, env: dict[str, str] | None = None) -> CliResult:
    """Run ``certbroker ARGS`` as a subprocess without blocking the event loop."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("CERTBROKER_")}
    base.update(env or {})
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "certbroker_client.cli",
        *args,
        env=base,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode is not None
    return CliResult(proc.returncode, out.decode(), err.decode())
