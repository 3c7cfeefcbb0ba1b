"""A router serves every app of a region from the platform's ``*.region`` wildcard.

No per-app entry: ``my-app.osc-fr1.example.test`` finds ``*.osc-fr1.example.test``
(one label deep, RFC 6125), an exact name the broker streams still wins over
it, and a ``--default-cert`` is what names no certificate covers get, and only
they. The real broker, BIND and Pebble are in
tests/integration/test_platform_domains.py; this is the reference router alone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from certbroker.v1 import broker_pb2
from certbroker_client.reference_router import ReferenceRouter, RouterConfig
from certbroker_client.router import CertificateMap
from tests.pki import Issued, TestPKI
from tests.router.support import fingerprint, served, serving_event

PKI = TestPKI("Platform router")
REGION = "*.osc-fr1.example.test"


def leaf(*names: str) -> Issued:
    now = datetime.now(UTC)
    return PKI.leaf(*names, not_before=now - timedelta(days=1), not_after=now + timedelta(days=30))


def put(certificates: CertificateMap, name: str, cert: Issued) -> None:
    event = serving_event(1, broker_pb2.EVENT_TYPE_DOMAIN_UPDATED, name, cert, PKI).event
    certificates.put(certificates.build(name, event.serving, 1))


@pytest.fixture
async def router(tmp_path: Path) -> AsyncIterator[tuple[ReferenceRouter, dict[str, Issued]]]:
    certs = {
        REGION: leaf(REGION),
        "legacy.osc-fr1.example.test": leaf("legacy.osc-fr1.example.test"),
        "www.shop.test": leaf("www.shop.test"),
        "default": leaf("default.router.test"),
    }
    default_cert, default_key = tmp_path / "default.pem", tmp_path / "default.key"
    default_cert.write_bytes(PKI.bundle(certs["default"]))
    default_key.write_bytes(certs["default"].key_pem())
    certificates = CertificateMap()
    for name in (REGION, "legacy.osc-fr1.example.test", "www.shop.test"):
        put(certificates, name, certs[name])
    instance = ReferenceRouter(
        certificates,
        RouterConfig(
            https_listen=("127.0.0.1", 0),
            http_listen=None,
            default_cert=default_cert,
            default_key=default_key,
        ),
    )
    await instance.start()
    try:
        yield instance, certs
    finally:
        await instance.stop()


async def test_every_app_of_the_region_is_served_by_the_wildcard(
    router: tuple[ReferenceRouter, dict[str, Issued]],
) -> None:
    instance, certs = router
    port, trust = instance.https_port, PKI.root.pem
    wildcard = fingerprint(certs[REGION].cert)
    for app in ("app1", "app2", "my-app", "APP3"):
        # validated as a browser does: the chain to the root, the name against the wildcard
        got = await served(port, f"{app}.osc-fr1.example.test", trust_pem=trust)
        assert fingerprint(got) == wildcard
    assert len(instance.certificates) == 3  # no entry was added per app


async def test_exact_names_win_and_the_default_is_only_for_uncovered_names(
    router: tuple[ReferenceRouter, dict[str, Issued]],
) -> None:
    instance, certs = router
    port, trust = instance.https_port, PKI.root.pem
    for name in ("legacy.osc-fr1.example.test", "www.shop.test"):
        assert fingerprint(await served(port, name, trust_pem=trust)) == fingerprint(
            certs[name].cert
        )
    default = fingerprint(certs["default"].cert)
    # two labels deep, the region's own name, another name, no SNI: no certificate covers them
    for name in ("a.b.osc-fr1.example.test", "osc-fr1.example.test", "unknown.test", None):
        assert fingerprint(await served(port, name)) == default
