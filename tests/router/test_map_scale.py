"""The certificate map at platform scale: material held, contexts built on first handshake.

A router restarted with 100,000 names must serve within seconds and in a few
hundred MB, so applying a snapshot may build no ``ssl.SSLContext`` (~1.2 ms and
~30 KiB each); a handshake builds its name's context once, and a bounded LRU
keeps the busy ones. Every handshake here is real (``tests.router.support``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from certbroker.v1 import broker_pb2, domain_pb2
from certbroker_client.reference_router import ReferenceRouter, RouterConfig
from certbroker_client.router import CertificateMap, Served
from tests.pki import Issued, TestPKI
from tests.router.support import fingerprint, refused, served

PKI = TestPKI("Scale")
NAMES = 100_000
DISTINCT_LEAVES = 64  # names share leaves: the map does not care, and it keeps set-up quick


def leaf(*names: str) -> Issued:
    now = datetime.now(UTC)
    return PKI.leaf(*names, not_before=now - timedelta(days=1), not_after=now + timedelta(days=30))


def material(cert: Issued) -> broker_pb2.ServingMaterial:
    return broker_pb2.ServingMaterial(
        source=domain_pb2.CERTIFICATE_SOURCE_LETS_ENCRYPT,
        chain_pem=PKI.bundle(cert).decode(),
        private_key_pem=cert.key_pem().decode(),
    )


def name(index: int) -> str:
    return f"n{index}.scale.example.test"


@dataclasses.dataclass
class Scaled:
    certificates: CertificateMap
    router: ReferenceRouter
    leaves: list[Issued]

    def leaf_of(self, index: int) -> Issued:
        return self.leaves[index % len(self.leaves)]


async def start(certificates: CertificateMap) -> ReferenceRouter:
    router = ReferenceRouter(
        certificates, RouterConfig(https_listen=("127.0.0.1", 0), http_listen=None)
    )
    await router.start()
    return router


@dataclasses.dataclass(frozen=True)
class Snapshot:
    leaves: list[Issued]
    entries: dict[str, Served]  # immutable: each test's map starts from them
    builds: int
    cached: int


@pytest.fixture(scope="module")
def snapshot() -> Snapshot:
    """100,000 names applied the way the watcher applies a snapshot: ``build`` each, swap."""
    leaves = [leaf(name(i)) for i in range(DISTINCT_LEAVES)]
    served_material = [material(cert) for cert in leaves]
    certificates = CertificateMap()
    pending = {name(i): certificates.build(name(i), served_material[i % DISTINCT_LEAVES], 7)
               for i in range(NAMES)}  # fmt: skip
    wildcard = leaf("*.wild.example.test")
    pending["*.wild.example.test"] = certificates.build(
        "*.wild.example.test", material(wildcard), 7
    )
    certificates.replace_all(pending)
    return Snapshot(leaves, pending, certificates.builds, certificates.cached_contexts)


@pytest.fixture
async def scaled(snapshot: Snapshot) -> AsyncIterator[Scaled]:
    certificates = CertificateMap()
    certificates.replace_all(snapshot.entries)
    router = await start(certificates)
    try:
        yield Scaled(certificates, router, snapshot.leaves)
    finally:
        await router.stop()


async def test_a_snapshot_of_100000_names_builds_no_context(
    snapshot: Snapshot, scaled: Scaled
) -> None:
    assert (snapshot.builds, snapshot.cached) == (0, 0)
    certificates = scaled.certificates
    assert len(certificates) == NAMES + 1
    entry = certificates.get(name(12345))
    assert entry is not None
    assert entry.sha256_fingerprint == fingerprint(scaled.leaf_of(12345).cert)
    # The intermediates are held once for all names, not once per name.
    other = certificates.get(name(54321))
    assert other is not None and other.material.intermediates is entry.material.intermediates


async def test_the_first_handshake_builds_the_context_once(scaled: Scaled) -> None:
    port, certificates = scaled.router.https_port, scaled.certificates
    for _ in range(3):
        cert = await served(port, name(99_999))
        assert fingerprint(cert) == fingerprint(scaled.leaf_of(99_999).cert)
    assert certificates.builds == 1
    assert certificates.is_warm(name(99_999))
    # A chain a browser accepts (the leaf of n63 is issued for n63).
    await served(port, name(DISTINCT_LEAVES - 1), trust_pem=PKI.root.pem)
    # Wildcard matching is unchanged: one label, never the apex, never two labels.
    wild = await served(port, "shop.wild.example.test", trust_pem=PKI.root.pem)
    assert wild.subject.rfc4514_string().startswith("CN=*.wild.example.test,")
    assert certificates.builds == 3
    for unknown in ("a.b.wild.example.test", "wild.example.test", "n100000.scale.example.test"):
        assert "UNRECOGNIZED_NAME" in await refused(port, unknown)
    assert certificates.builds == 3


async def test_a_resync_with_the_same_material_keeps_the_built_contexts(scaled: Scaled) -> None:
    certificates = scaled.certificates
    await served(scaled.router.https_port, name(3))
    assert certificates.builds == 1
    again = {
        n: certificates.build(n, broker_pb2.ServingMaterial(
            source=e.source, chain_pem=e.chain_pem, private_key_pem=e.key_pem), 9)
        for n, e in list(certificates.entries().items())[:1000]
    }  # fmt: skip
    assert name(3) in again
    gone = certificates.replace_all(again)
    assert len(gone) == NAMES + 1 - 1000
    assert certificates.is_warm(name(3))
    await served(scaled.router.https_port, name(3))
    assert certificates.builds == 1


async def test_contexts_beyond_the_bound_are_evicted_and_rebuilt() -> None:
    certificates = CertificateMap(max_contexts=2)
    leaves = {n: leaf(n) for n in ("a.example.test", "b.example.test", "c.example.test")}
    for n, cert in leaves.items():
        certificates.put(certificates.build(n, material(cert), 1))
    router = await start(certificates)
    try:
        port = router.https_port
        for n in ("a.example.test", "b.example.test", "c.example.test"):
            assert fingerprint(await served(port, n)) == fingerprint(leaves[n].cert)
        assert (certificates.builds, certificates.evictions) == (3, 1)
        assert certificates.cached_contexts == 2
        assert not certificates.is_warm("a.example.test")
        await served(port, "c.example.test")  # recently used: no build, c stays newest
        assert certificates.builds == 3
        assert fingerprint(await served(port, "a.example.test")) == fingerprint(
            leaves["a.example.test"].cert
        )
        assert (certificates.builds, certificates.evictions) == (4, 2)
        assert certificates.is_warm("c.example.test") and not certificates.is_warm("b.example.test")
    finally:
        await router.stop()


async def test_a_new_name_with_a_foreign_key_fails_once_not_per_handshake() -> None:
    """For a new name the pair is checked when its context is built: one build, then refusals."""
    certificates = CertificateMap()
    good, other = leaf("broken.example.test"), PKI.leaf("broken.example.test", key="p384")
    bad = material(good)
    bad.private_key_pem = other.key_pem().decode()
    certificates.put(certificates.build("broken.example.test", bad, 1))
    router = await start(certificates)
    try:
        for _ in range(3):
            assert "INTERNAL_ERROR" in await refused(router.https_port, "broken.example.test")
        assert (certificates.builds, certificates.build_failures) == (1, 1)
        certificates.put(certificates.build("broken.example.test", material(good), 2))
        assert fingerprint(await served(router.https_port, "broken.example.test")) == fingerprint(
            good.cert
        )
    finally:
        await router.stop()
