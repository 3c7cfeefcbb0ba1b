"""The CLI shows the platform's own domains as the platform's, not as an app's."""

from __future__ import annotations

from datetime import UTC, datetime

from certbroker.v1 import domain_pb2
from certbroker_client import render

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def platform_domain() -> domain_pb2.Domain:
    return domain_pb2.Domain(
        domain="*.osc-fr1.example.io",
        app="_platform",
        platform=True,
        lets_encrypt_state=domain_pb2.LETS_ENCRYPT_STATE_IN_USE,
        serving_source=domain_pb2.CERTIFICATE_SOURCE_LETS_ENCRYPT,
        challenge_type=domain_pb2.CHALLENGE_TYPE_DNS_01,
    )


def test_tables_and_status_name_the_platform_as_owner() -> None:
    app = domain_pb2.Domain(domain="www.example.com", app="shop")
    table = render.domains_table([platform_domain(), app], now=T0)
    rows = table.splitlines()
    assert rows[1].split()[:2] == ["*.osc-fr1.example.io", "(platform)"]
    assert rows[2].split()[:2] == ["www.example.com", "shop"]
    block = render.status_block(platform_domain(), now=T0)
    app_line = next(line for line in block.splitlines() if line.startswith("App:"))
    assert "(platform)" in app_line
    assert "CERTBROKER_PLATFORM_DOMAINS" in app_line
    assert "_platform" not in app_line
    assert render.app_label(app) == "shop"
