"""DnsChecker.addresses (the doctor's probe connects there) and the CAA fix record."""

from __future__ import annotations

import ipaddress

import pytest

from certbroker.dns import DnsChecker, DnsLookupError, DnsReason
from tests.infra.challtestsrv import ChallTestSrv

pytestmark = pytest.mark.integration

LE = "letsencrypt.org"


@pytest.fixture
def checker(challtestsrv: ChallTestSrv) -> DnsChecker:
    return DnsChecker([(challtestsrv.host, challtestsrv.dns_port)], timeout=2.0)


async def test_addresses_ipv6_first_through_cnames(
    checker: DnsChecker, challtestsrv: ChallTestSrv, zone: str
) -> None:
    challtestsrv.set_cname(f"www.{zone}", f"edge.{zone}")
    challtestsrv.add_a(f"edge.{zone}", ["192.0.2.7"])
    challtestsrv.add_aaaa(f"edge.{zone}", ["2001:db8::7"])
    assert await checker.addresses(f"www.{zone}") == (
        ipaddress.ip_address("2001:db8::7"),
        ipaddress.ip_address("192.0.2.7"),
    )
    assert await checker.addresses(f"none.{zone}") == ()


async def test_addresses_raise_when_the_dns_fails(
    checker: DnsChecker, challtestsrv: ChallTestSrv, zone: str
) -> None:
    challtestsrv.set_servfail(f"www.{zone}")
    with pytest.raises(DnsLookupError) as failed:
        await checker.addresses(f"www.{zone}")
    assert failed.value.reason == DnsReason.SERVFAIL


async def test_a_forbidding_caa_carries_the_record_that_would_allow_us(
    checker: DnsChecker, challtestsrv: ChallTestSrv, zone: str
) -> None:
    challtestsrv.add_caa(zone, [("issue", "other.ca"), ("issuewild", "other.ca")])
    plain = await checker.caa_allows(f"www.{zone}", LE, wildcard=False)
    wild = await checker.caa_allows(f"*.{zone}", LE, wildcard=False)
    assert plain.fix == f'{zone}. CAA 0 issue "{LE}"'
    assert wild.fix == f'{zone}. CAA 0 issuewild "{LE}"'
    assert plain.fix in plain.message
    allowed = await checker.caa_allows(f"www.other-{zone}", LE, wildcard=False)
    assert allowed.fix == ""
