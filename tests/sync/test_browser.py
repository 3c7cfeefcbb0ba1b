"""A real browser: headless Chromium loads https://shop.example.test through HAProxy and the agent.

The browser trusts exactly one root at a time (an NSS database in a temporary
HOME), so a page that loads proves which certificate it was given: Pebble's
chain while Let's Encrypt serves, the private PKI's chain after a custom
upload; and the profile trusting only Pebble's root is refused afterwards.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.infra.chromium import load, make_home
from tests.infra.haproxy import PAGE_MARKER, HAProxy
from tests.router.support import fingerprint
from tests.sync.support import CUSTOM_PKI, SyncAgent, SyncLab, custom_leaf, wait_fingerprint

pytestmark = pytest.mark.integration

SHOP = "shop.example.test"
URL = f"https://{SHOP}/"


async def test_chromium_loads_the_shop_with_a_valid_certificate_before_and_after_a_custom_upload(
    lab: SyncLab, haproxy: HAProxy, haproxy_agent: SyncAgent, tmp_path: Path
) -> None:
    port = haproxy.https_port
    status = await lab.issue(SHOP)
    await wait_fingerprint(port, SHOP, status.lets_encrypt_certificate.sha256_fingerprint)
    trusts_pebble = make_home(tmp_path / "pebble", {"pebble-root": lab.pebble.root_pem()})
    trusts_custom = make_home(tmp_path / "custom", {"custom-root": CUSTOM_PKI.root.pem})

    page = await load(URL, home=trusts_pebble, host=SHOP, port=port, profile=tmp_path / "p1")
    assert PAGE_MARKER in page.dom, page.log
    assert not page.net_errors(), page.log

    leaf = custom_leaf(SHOP)
    await lab.api.upload_custom(SHOP, CUSTOM_PKI.bundle(leaf), leaf.key_pem(), app="shop")
    await wait_fingerprint(port, SHOP, fingerprint(leaf.cert), timeout=10)

    page = await load(URL, home=trusts_custom, host=SHOP, port=port, profile=tmp_path / "p2")
    assert PAGE_MARKER in page.dom, page.log
    assert not page.net_errors(), page.log

    refused = await load(URL, home=trusts_pebble, host=SHOP, port=port, profile=tmp_path / "p3")
    assert PAGE_MARKER not in refused.dom
    assert "ERR_CERT_AUTHORITY_INVALID" in refused.net_errors() or "-202" in refused.net_errors(), (
        refused.log
    )
