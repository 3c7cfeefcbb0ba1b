"""HTTPS end to end: what a visitor's TLS client sees from the reference router, at each moment.

One topology per module (see conftest): Pebble validating HTTP-01 through the
router's HTTP port, the broker as a process with mTLS, the router following
it. Each test works on its own names. The broker-kill test runs last and
restarts the broker before it ends.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from certbroker.v1 import domain_pb2
from certbroker_client.reference_router import ReferenceRouter, RouterConfig
from tests.infra.challtestsrv import ChallTestSrv
from tests.infra.ports import free_port, wait_tcp
from tests.integration.lab import verify_chain
from tests.pki import Issued
from tests.router.conftest import CUSTOM_PKI, Topology, topology
from tests.router.support import fingerprint, refused, served, served_fingerprint, wait_until

pytestmark = pytest.mark.integration

IN_USE = domain_pb2.LETS_ENCRYPT_STATE_IN_USE
NOT_USED = domain_pb2.LETS_ENCRYPT_STATE_NOT_USED
CUSTOM = domain_pb2.CERTIFICATE_SOURCE_CUSTOM
LETS_ENCRYPT = domain_pb2.CERTIFICATE_SOURCE_LETS_ENCRYPT
ROOT = Path(__file__).resolve().parents[2]


def unique(label: str = "www") -> str:
    return f"{label}.r{uuid.uuid4().hex[:10]}.example.test"


def custom_leaf(*names: str) -> Issued:
    """A leaf of the broker-trusted private PKI, valid around the real clock."""
    now = datetime.now(UTC)
    return CUSTOM_PKI.leaf(
        *names, not_before=now - timedelta(days=1), not_after=now + timedelta(days=60)
    )


@pytest.fixture(scope="module")
async def topo(
    tmp_path_factory: pytest.TempPathFactory, dns: ChallTestSrv
) -> AsyncIterator[Topology]:
    async with topology(tmp_path_factory.mktemp("router-e2e"), dns) as running:
        yield running


async def issue(topo: Topology, name: str) -> domain_pb2.Domain:
    await topo.api.issue_certificate(name, "shop")
    return await topo.wait_domain(name, lambda d: d.lets_encrypt_state == IN_USE)


async def test_an_issued_domain_is_served_over_https_validating_to_pebble(topo: Topology) -> None:
    name = unique()
    status = await issue(topo, name)
    root = topo.pebble_root()
    cert = await served(topo.router.https_port, name, trust_pem=root)  # ssl verifies name + chain
    assert fingerprint(cert) == status.lets_encrypt_certificate.sha256_fingerprint
    verify_chain(status.lets_encrypt_certificate.chain_pem, root, name)
    assert topo.watcher.revision >= status.revision

    ca = topo.workdir / "pebble-root.pem"
    ca.write_bytes(root)
    proc = await asyncio.create_subprocess_exec(
        "openssl", "s_client", "-connect", f"127.0.0.1:{topo.router.https_port}",
        "-servername", name, "-CAfile", str(ca), "-verify_hostname", name,
        "-verify_return_error", "-brief",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(proc.communicate(), 20)
    text = output.decode(errors="replace")
    assert proc.returncode == 0, text
    assert "Verification: OK" in text, text


async def test_http_listener_redirects_and_forwards_challenges(topo: Topology) -> None:
    async def get(path: str, host: str) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", topo.router.http_port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(-1), 5)
        writer.close()
        return answer

    name = unique("redirect")  # redirects go only to names the router has a certificate for
    await topo.api.issue_certificate(name, "shop", disable_letsencrypt=True)
    leaf = custom_leaf(name)
    uploaded = await topo.api.upload_custom(
        name, CUSTOM_PKI.bundle(leaf), leaf.key_pem(), app="shop"
    )
    async with asyncio.timeout(10):
        await topo.watcher.wait_for_revision(uploaded.revision)
    redirect = await get("/shop?x=1", name)
    assert redirect.startswith(b"HTTP/1.1 308")
    assert f"Location: https://{name}:{topo.router.https_port}/shop?x=1".encode() in redirect
    unknown = await get("/shop?x=1", "www.example.test")
    assert unknown.startswith(b"HTTP/1.1 421")
    assert b"Location" not in unknown
    # An unknown token: the broker's responder answers (404), reached through the router.
    missing = await get("/.well-known/acme-challenge/nope", "www.example.test")
    assert missing.startswith(b"HTTP/1.1 404")


async def test_custom_upload_changes_the_handshake_and_delete_brings_lets_encrypt_back(
    topo: Topology,
) -> None:
    name = unique("shop")
    issued = await issue(topo, name)
    le = issued.lets_encrypt_certificate.sha256_fingerprint
    port = topo.router.https_port
    assert await served_fingerprint(port, name) == le

    leaf = custom_leaf(name)
    uploaded = await topo.api.upload_custom(
        name, CUSTOM_PKI.bundle(leaf), leaf.key_pem(), app="shop"
    )
    assert uploaded.serving_source == CUSTOM
    async with asyncio.timeout(10):
        await topo.watcher.wait_for_revision(uploaded.revision)
    cert = await served(port, name, trust_pem=CUSTOM_PKI.root.pem)
    assert fingerprint(cert) == fingerprint(leaf.cert)

    deleted = await topo.api.delete_custom(name, app="shop")
    assert deleted.serving_source == LETS_ENCRYPT
    async with asyncio.timeout(10):
        await topo.watcher.wait_for_revision(deleted.revision)
    cert = await served(port, name, trust_pem=topo.pebble_root())
    assert fingerprint(cert) == le


async def test_a_wildcard_serves_one_label_only(topo: Topology) -> None:
    base = unique("w").partition(".")[2]
    wildcard = f"*.{base}"
    await topo.api.issue_certificate(wildcard, "shop", disable_letsencrypt=True)
    leaf = custom_leaf(wildcard)
    uploaded = await topo.api.upload_custom(
        wildcard, CUSTOM_PKI.bundle(leaf), leaf.key_pem(), app="shop"
    )
    async with asyncio.timeout(10):
        await topo.watcher.wait_for_revision(uploaded.revision)
    port = topo.router.https_port
    cert = await served(port, f"a.{base}", trust_pem=CUSTOM_PKI.root.pem)
    assert fingerprint(cert) == fingerprint(leaf.cert)
    assert "UNRECOGNIZED_NAME" in await refused(port, f"a.b.{base}")
    assert "UNRECOGNIZED_NAME" in await refused(port, base)


async def test_unknown_names_get_an_alert_or_the_default_certificate(topo: Topology) -> None:
    port = topo.router.https_port
    assert "UNRECOGNIZED_NAME" in await refused(port, unique("nobody"))
    assert "UNRECOGNIZED_NAME" in await refused(port, None)

    default = custom_leaf("default.router.test")
    cert, key = topo.workdir / "default.pem", topo.workdir / "default.key"
    cert.write_bytes(CUSTOM_PKI.bundle(default))
    key.write_bytes(default.key_pem())
    second = ReferenceRouter(  # same map, another listener with a default certificate
        topo.watcher.certificates,
        RouterConfig(
            https_listen=("127.0.0.1", 0), http_listen=None, default_cert=cert, default_key=key
        ),
    )
    await second.start()
    try:
        assert await served_fingerprint(second.https_port, unique("nobody")) == fingerprint(
            default.cert
        )
        known = next(n for n in topo.watcher.certificates.names() if not n.startswith("*"))
        assert await served_fingerprint(second.https_port, known) != fingerprint(default.cert)
    finally:
        await second.stop()


async def test_the_cli_router_serves_what_the_broker_has(topo: Topology) -> None:
    """``certbroker router`` as a process: mTLS to the broker, HTTPS by SNI, reports, SIGTERM."""
    name = unique("cli")
    status = await issue(topo, name)
    https, http = free_port(), free_port()
    tls = topo.router_tls
    assert tls.ca and tls.cert and tls.key
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "certbroker_client.router_cli",
        "--addr", topo.broker_addr, "--tls-ca", str(tls.ca), "--tls-cert", str(tls.cert),
        "--tls-key", str(tls.key), "--https-listen", f"127.0.0.1:{https}",
        "--http-listen", f"127.0.0.1:{http}", "--http01-forward", f"127.0.0.1:{topo.http01_port}",
        "--router-id", "cli-router-1", "--max-contexts", "10",
        cwd=ROOT, env=dict(os.environ), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        await wait_until(lambda: wait_tcp("127.0.0.1", https), 15, "the CLI router to listen")

        async def serves() -> bool:
            try:
                cert = await served(https, name, trust_pem=topo.pebble_root())
            except OSError:
                return False
            return fingerprint(cert) == status.lets_encrypt_certificate.sha256_fingerprint

        await wait_until(serves, 15, "the CLI router to serve the name", interval=0.1)

        async def reported() -> bool:
            routers = {r.router_id: r for r in await topo.api.list_routers()}
            cli = routers.get("cli-router-1")
            return cli is not None and cli.applied_revision >= status.revision

        await wait_until(reported, 15, "the CLI router to report its revision", interval=0.1)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 0, output.decode(errors="replace")
    assert b"serving" in output


async def test_killing_the_broker_leaves_every_name_served(topo: Topology) -> None:
    """Runs last: kills the broker (SIGKILL), checks every name, restarts it, checks the resume."""
    name = unique("last")
    await issue(topo, name)
    port = topo.router.https_port
    probes = {
        key: (f"a.{key[2:]}" if key.startswith("*.") else key)
        for key in topo.watcher.certificates.names()
    }
    assert len(probes) >= 4
    before = {key: await served_fingerprint(port, probe) for key, probe in probes.items()}
    revision = topo.watcher.revision

    await asyncio.to_thread(topo.broker.kill)
    await wait_until(lambda: not topo.watcher.connected, 10, "the router to notice")
    await asyncio.sleep(1.0)  # several failed reconnects
    after = {key: await served_fingerprint(port, probe) for key, probe in probes.items()}
    assert after == before
    assert topo.watcher.revision == revision

    await asyncio.to_thread(topo.broker.start)
    await wait_until(lambda: topo.watcher.connected, 15, "the router to reconnect")
    leaf = custom_leaf(name)
    uploaded = await topo.api.upload_custom(
        name, CUSTOM_PKI.bundle(leaf), leaf.key_pem(), app="shop"
    )
    async with asyncio.timeout(10):
        await topo.watcher.wait_for_revision(uploaded.revision)
    assert await served_fingerprint(port, name) == fingerprint(leaf.cert)
    assert topo.watcher.resnapshots == 0  # resumed from its revision, no re-snapshot
