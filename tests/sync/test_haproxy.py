"""``certbroker sync haproxy`` against a real HAProxy 2.6, Pebble and the broker.

One lab per module (Pebble validating HTTP-01 through HAProxy's HTTP frontend,
the broker with mTLS), one HAProxy and one agent process. Each test works on
its own names; the HAProxy restart and broker kill tests come last.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.infra.haproxy import HAProxy
from tests.router.support import fingerprint, served
from tests.sync.support import (
    CUSTOM_PKI,
    DEFAULT_LEAF,
    PREFIX,
    SyncAgent,
    SyncLab,
    custom_leaf,
    leaf_fingerprint,
    openssl_verify,
    unique,
    wait_fingerprint,
)

pytestmark = pytest.mark.integration

DEFAULT = fingerprint(DEFAULT_LEAF.cert)


def stores(haproxy: HAProxy) -> set[str]:
    return {
        line.strip()
        for line in haproxy.command("show ssl cert").splitlines()
        if line.strip() and not line.startswith("#")
    }


def worker_pid(haproxy: HAProxy) -> str:
    return next(
        line.split(":", 1)[1].strip()
        for line in haproxy.command("show info").splitlines()
        if line.startswith("Pid:")
    )


async def test_an_issued_domain_is_served_with_a_chain_to_pebbles_root(
    lab: SyncLab, haproxy: HAProxy, haproxy_agent: SyncAgent
) -> None:
    name = unique()
    status = await lab.issue(name)
    le = status.lets_encrypt_certificate.sha256_fingerprint
    await wait_fingerprint(haproxy.https_port, name, le)
    root = lab.pebble.root_pem()
    cert = await served(haproxy.https_port, name, trust_pem=root)  # ssl verifies chain + name
    assert fingerprint(cert) == le
    await openssl_verify(haproxy.https_port, name, lab.pebble_root_file())
    # In memory only: HAProxy's directory holds what the test wrote, no key of the agent's.
    assert sorted(p.name for p in haproxy.dir.iterdir() if p.suffix == ".pem") == ["default.pem"]
    assert f"{PREFIX}{name}.pem" in stores(haproxy)


async def test_a_custom_upload_is_served_without_a_reload_and_delete_brings_lets_encrypt_back(
    lab: SyncLab, haproxy: HAProxy, haproxy_agent: SyncAgent
) -> None:
    name = unique("shop")
    status = await lab.issue(name)
    le = status.lets_encrypt_certificate.sha256_fingerprint
    port = haproxy.https_port
    await wait_fingerprint(port, name, le)
    pid, worker = haproxy.pid, worker_pid(haproxy)

    leaf = custom_leaf(name)
    await lab.api.upload_custom(name, CUSTOM_PKI.bundle(leaf), leaf.key_pem(), app="shop")
    await wait_fingerprint(port, name, fingerprint(leaf.cert), timeout=10)
    cert = await served(port, name, trust_pem=CUSTOM_PKI.root.pem)
    assert fingerprint(cert) == fingerprint(leaf.cert)
    assert (haproxy.pid, worker_pid(haproxy)) == (pid, worker)  # no reload, no restart

    await lab.api.delete_custom(name, app="shop")
    await wait_fingerprint(port, name, le, timeout=10)
    await openssl_verify(port, name, lab.pebble_root_file())
    assert (haproxy.pid, worker_pid(haproxy)) == (pid, worker)


async def test_a_removed_domain_is_no_longer_served(
    lab: SyncLab, haproxy: HAProxy, haproxy_agent: SyncAgent
) -> None:
    name = unique("gone")
    leaf = await lab.custom(name)
    await wait_fingerprint(haproxy.https_port, name, fingerprint(leaf.cert))
    await lab.api.remove_domain(name, app="shop")
    await wait_fingerprint(haproxy.https_port, name, DEFAULT)  # the operator's default
    assert f"{PREFIX}{name}.pem" not in stores(haproxy)
    assert name not in haproxy.command(f"show ssl crt-list {haproxy.crt_list}")


async def test_a_wildcard_serves_one_label_and_an_exact_name_wins(
    lab: SyncLab, haproxy: HAProxy, haproxy_agent: SyncAgent
) -> None:
    base = unique("w").partition(".")[2]
    wildcard = await lab.custom(f"*.{base}")
    exact = await lab.custom(f"shop.{base}")
    port = haproxy.https_port
    await wait_fingerprint(port, f"a.{base}", fingerprint(wildcard.cert))
    cert = await served(port, f"a.{base}", trust_pem=CUSTOM_PKI.root.pem)
    assert fingerprint(cert) == fingerprint(wildcard.cert)
    await wait_fingerprint(port, f"shop.{base}", fingerprint(exact.cert))
    assert await leaf_fingerprint(port, f"a.b.{base}") == DEFAULT
    assert await leaf_fingerprint(port, base) == DEFAULT
    assert f"{PREFIX}_wildcard.{base}.pem" in stores(haproxy)


async def test_killing_and_restarting_the_agent_reconciles(
    lab: SyncLab, haproxy: HAProxy, haproxy_agent: SyncAgent
) -> None:
    keep, gone, changed = unique("keep"), unique("gone"), unique("changed")
    kept, removed, old = await lab.custom(keep), await lab.custom(gone), await lab.custom(changed)
    port = haproxy.https_port
    for name, leaf in ((keep, kept), (gone, removed), (changed, old)):
        await wait_fingerprint(port, name, fingerprint(leaf.cert))

    haproxy_agent.kill_hard()
    await lab.api.remove_domain(gone, app="shop")
    new = await lab.custom(changed, register=False)
    fresh = unique("fresh")
    added = await lab.custom(fresh)
    # A leftover of ours HAProxy still serves (an agent killed before removing it),
    # and a transaction left open on one of our stores.
    stray = unique("stray")
    stray_leaf = custom_leaf(stray)
    store = f"{PREFIX}{stray}.pem"
    pem = (CUSTOM_PKI.bundle(stray_leaf) + stray_leaf.key_pem()).decode()
    haproxy.command(f"new ssl cert {store}")
    haproxy.command(f"set ssl cert {store} <<\n{pem.strip()}\n")
    assert "Success" in haproxy.command(f"commit ssl cert {store}")
    assert "Success" in haproxy.command(f"add ssl crt-list {haproxy.crt_list} {store}")
    assert await leaf_fingerprint(port, stray) == fingerprint(stray_leaf.cert)
    haproxy.command(f"set ssl cert {PREFIX}{keep}.pem <<\n{pem.strip()}\n")  # never committed
    # A second line for one of our stores, serving it for a name it must not answer.
    extra = haproxy.command(f"add ssl crt-list {haproxy.crt_list} <<\n{PREFIX}{keep}.pem {stray}\n")
    assert "Success" in extra

    await asyncio.to_thread(haproxy_agent.start)
    await wait_fingerprint(port, gone, DEFAULT)
    await wait_fingerprint(port, changed, fingerprint(new.cert))
    await wait_fingerprint(port, fresh, fingerprint(added.cert))
    await wait_fingerprint(port, stray, DEFAULT)
    assert await leaf_fingerprint(port, keep) == fingerprint(kept.cert)
    assert store not in stores(haproxy)
    assert "# transaction" not in haproxy.command("show ssl cert")
    listing = haproxy.command(f"show ssl crt-list {haproxy.crt_list}").splitlines()
    assert listing[1] == str(haproxy.dir / "default.pem")  # the operator's line, untouched


async def test_a_restarted_haproxy_gets_every_certificate_back(
    lab: SyncLab, haproxy: HAProxy, haproxy_agent: SyncAgent
) -> None:
    name = unique("restart")
    leaf = await lab.custom(name)
    port = haproxy.https_port
    await wait_fingerprint(port, name, fingerprint(leaf.cert))
    await asyncio.to_thread(haproxy.restart)  # runtime changes are gone with the old process
    await wait_fingerprint(haproxy.https_port, name, fingerprint(leaf.cert), timeout=15)
    assert haproxy_agent.alive()


async def test_killing_the_broker_leaves_haproxy_serving(
    lab: SyncLab, haproxy: HAProxy, haproxy_agent: SyncAgent, tmp_path: Path
) -> None:
    name = unique("outage")
    leaf = await lab.custom(name)
    port = haproxy.https_port
    await wait_fingerprint(port, name, fingerprint(leaf.cert))
    lab.broker.kill()
    try:
        for _ in range(10):  # over a couple of the agent's check intervals
            assert await leaf_fingerprint(port, name) == fingerprint(leaf.cert)
            await asyncio.sleep(0.1)
        assert haproxy_agent.alive()
    finally:
        await asyncio.to_thread(lab.broker.start)
    # The agent resumes on its own once the broker is back.
    later = await lab.custom(name, register=False)
    await wait_fingerprint(port, name, fingerprint(later.cert), timeout=20)
