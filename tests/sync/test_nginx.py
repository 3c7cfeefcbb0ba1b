"""``certbroker sync nginx`` against a real nginx 1.22, Pebble and the broker.

One lab per module (Pebble validating HTTP-01 through nginx's HTTP server),
one nginx loading ``<dir>/$certbroker_name.pem`` per handshake and one agent
process writing that directory. The broker kill test comes last.
"""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import pytest

from tests.infra.nginx import Nginx
from tests.router.support import fingerprint, served
from tests.sync.support import (
    CUSTOM_PKI,
    SyncAgent,
    SyncLab,
    custom_leaf,
    leaf_fingerprint,
    openssl_verify,
    unique,
    wait_fingerprint,
    wait_verified,
)

pytestmark = pytest.mark.integration


def processes(nginx: Nginx) -> tuple[int | None, set[int]]:
    return nginx.pid, nginx.worker_pids()


async def test_an_issued_domain_is_served_with_a_chain_to_pebbles_root(
    lab: SyncLab, nginx: Nginx, nginx_agent: SyncAgent, certs: Path
) -> None:
    name = unique()
    status = await lab.issue(name)
    le = status.lets_encrypt_certificate.sha256_fingerprint
    await wait_fingerprint(nginx.https_port, name, le)
    cert = await served(nginx.https_port, name, trust_pem=lab.pebble.root_pem())
    assert fingerprint(cert) == le
    await openssl_verify(nginx.https_port, name, lab.pebble_root_file())

    path = certs / f"{name}.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert text.startswith("-----BEGIN CERTIFICATE-----") and "PRIVATE KEY-----" in text
    assert not [p for p in certs.iterdir() if p.name.startswith(".")]  # no temporary file left


async def test_a_custom_upload_is_served_without_a_reload_and_delete_brings_lets_encrypt_back(
    lab: SyncLab, nginx: Nginx, nginx_agent: SyncAgent
) -> None:
    name = unique("shop")
    status = await lab.issue(name)
    le = status.lets_encrypt_certificate.sha256_fingerprint
    port = nginx.https_port
    await wait_fingerprint(port, name, le)
    before = processes(nginx)
    assert before[1], "nginx has a worker"

    leaf = custom_leaf(name)
    await lab.api.upload_custom(name, CUSTOM_PKI.bundle(leaf), leaf.key_pem(), app="shop")
    await wait_fingerprint(port, name, fingerprint(leaf.cert), timeout=10)
    cert = await served(port, name, trust_pem=CUSTOM_PKI.root.pem)
    assert fingerprint(cert) == fingerprint(leaf.cert)
    assert processes(nginx) == before  # same master, same worker: no reload

    await lab.api.delete_custom(name, app="shop")
    await wait_fingerprint(port, name, le, timeout=10)
    await openssl_verify(port, name, lab.pebble_root_file())
    assert processes(nginx) == before


async def test_a_removed_domain_is_no_longer_served(
    lab: SyncLab, nginx: Nginx, nginx_agent: SyncAgent, certs: Path
) -> None:
    name = unique("gone")
    leaf = await lab.custom(name)
    await wait_fingerprint(nginx.https_port, name, fingerprint(leaf.cert))
    await lab.api.remove_domain(name, app="shop")
    await wait_fingerprint(nginx.https_port, name, None)  # no file: the handshake fails
    assert not (certs / f"{name}.pem").exists()


async def test_a_wildcard_is_served_through_the_map_and_an_exact_name_wins(
    lab: SyncLab, nginx: Nginx, nginx_agent: SyncAgent, certs: Path
) -> None:
    base = unique("w").partition(".")[2]
    wildcard = await lab.custom(f"*.{base}")
    exact = await lab.custom(f"shop.{base}")
    port = nginx.https_port
    # The map fragment changed twice (the wildcard, then an exact name under it): nginx
    # reloads, and until the old worker has stopped accepting, handshakes may still fail.
    await wait_fingerprint(port, f"shop.{base}", fingerprint(exact.cert))
    await wait_verified(port, f"a.{base}", CUSTOM_PKI.root.pem, fingerprint(wildcard.cert))
    assert (certs / f"_wildcard.{base}.pem").exists()
    assert await leaf_fingerprint(port, f"a.b.{base}") is None  # one label only
    fragment = nginx.map_file.read_text()
    assert f"_wildcard.{base};" in fragment and f"shop.{base} shop.{base};" in fragment


async def test_killing_and_restarting_the_agent_reconciles(
    lab: SyncLab, nginx: Nginx, nginx_agent: SyncAgent, certs: Path
) -> None:
    keep, gone, changed = unique("keep"), unique("gone"), unique("changed")
    kept, removed, old = await lab.custom(keep), await lab.custom(gone), await lab.custom(changed)
    port = nginx.https_port
    for name, leaf in ((keep, kept), (gone, removed), (changed, old)):
        await wait_fingerprint(port, name, fingerprint(leaf.cert))

    nginx_agent.kill_hard()
    await lab.api.remove_domain(gone, app="shop")
    new = await lab.custom(changed, register=False)
    fresh = unique("fresh")
    added = await lab.custom(fresh)
    stray = certs / f"{unique('stray')}.pem"  # a name the broker does not know
    stray.write_bytes((certs / f"{keep}.pem").read_bytes())
    temp = certs / f".certbroker-tmp-{keep}.pem.dead"  # a write cut by the crash
    temp.write_bytes(b"half")
    operator = certs / "README"
    operator.write_text("not a certificate: left alone\n")
    (certs / f"{keep}.pem").chmod(0o644)  # drifted permissions are repaired too

    await asyncio.to_thread(nginx_agent.start)
    await wait_fingerprint(port, gone, None)
    await wait_fingerprint(port, changed, fingerprint(new.cert))
    await wait_fingerprint(port, fresh, fingerprint(added.cert))
    assert await leaf_fingerprint(port, keep) == fingerprint(kept.cert)
    assert not stray.exists() and not temp.exists() and operator.exists()
    assert stat.S_IMODE((certs / f"{keep}.pem").stat().st_mode) == 0o600


async def test_killing_the_broker_leaves_nginx_serving(
    lab: SyncLab, nginx: Nginx, nginx_agent: SyncAgent
) -> None:
    name = unique("outage")
    leaf = await lab.custom(name)
    port = nginx.https_port
    await wait_fingerprint(port, name, fingerprint(leaf.cert))
    lab.broker.kill()
    try:
        for _ in range(10):
            assert await leaf_fingerprint(port, name) == fingerprint(leaf.cert)
            await asyncio.sleep(0.1)
        assert nginx_agent.alive()
    finally:
        await asyncio.to_thread(lab.broker.start)
    later = await lab.custom(name, register=False)
    await wait_fingerprint(port, name, fingerprint(later.cert), timeout=20)
