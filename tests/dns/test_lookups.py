"""txt_values and cname_target (for DNS-01 delegation) against pebble-challtestsrv."""

from __future__ import annotations

import pytest

from certbroker.dns import DnsChecker, DnsLookupError, DnsReason
from tests.infra.challtestsrv import ChallTestSrv

pytestmark = pytest.mark.integration


@pytest.fixture
def checker(challtestsrv: ChallTestSrv) -> DnsChecker:
    return DnsChecker([(challtestsrv.host, challtestsrv.dns_port)], timeout=2.0)


async def test_txt_values(checker: DnsChecker, challtestsrv: ChallTestSrv, zone: str) -> None:
    challtestsrv.set_txt(f"_acme-challenge.{zone}", "token-1")
    challtestsrv.set_txt(f"_acme-challenge.{zone}", "token-2")
    assert set(await checker.txt_values(f"_acme-challenge.{zone}")) == {"token-1", "token-2"}


async def test_txt_missing_is_empty(checker: DnsChecker, zone: str) -> None:
    assert await checker.txt_values(f"_acme-challenge.{zone}") == ()


async def test_txt_through_a_delegation_cname(
    checker: DnsChecker, challtestsrv: ChallTestSrv, zone: str
) -> None:
    challtestsrv.set_cname(f"_acme-challenge.{zone}", f"{zone}.acme.platform.test")
    challtestsrv.set_txt(f"{zone}.acme.platform.test", "delegated")
    assert await checker.txt_values(f"_acme-challenge.{zone}") == ("delegated",)


async def test_cname_target(checker: DnsChecker, challtestsrv: ChallTestSrv, zone: str) -> None:
    challtestsrv.set_cname(f"_acme-challenge.{zone}", f"{zone}.ACME.platform.test.")
    assert await checker.cname_target(f"_acme-challenge.{zone}") == f"{zone}.acme.platform.test"
    assert await checker.cname_target(f"other.{zone}") is None


async def test_servfail_raises(checker: DnsChecker, challtestsrv: ChallTestSrv, zone: str) -> None:
    challtestsrv.set_servfail(f"_acme-challenge.{zone}")
    with pytest.raises(DnsLookupError) as err:
        await checker.txt_values(f"_acme-challenge.{zone}")
    assert err.value.reason == DnsReason.SERVFAIL
    with pytest.raises(DnsLookupError):
        await checker.cname_target(f"_acme-challenge.{zone}")


async def test_dead_server_raises_timeout(closed_port: int) -> None:
    checker = DnsChecker([("127.0.0.1", closed_port)], timeout=0.3)
    with pytest.raises(DnsLookupError) as err:
        await checker.txt_values("_acme-challenge.example.test")
    assert err.value.reason == DnsReason.TIMEOUT
