"""caa_allows against a real pebble-challtestsrv (flags via the scripted server)."""

from __future__ import annotations

import pytest

from certbroker.dns import CaaReason, DnsChecker
from tests.dns.conftest import ScriptedDns
from tests.infra.challtestsrv import ChallTestSrv

pytestmark = pytest.mark.integration

LE = "letsencrypt.org"


@pytest.fixture
def checker(challtestsrv: ChallTestSrv) -> DnsChecker:
    return DnsChecker([(challtestsrv.host, challtestsrv.dns_port)], timeout=2.0)


async def test_no_caa_allows(checker: DnsChecker, zone: str) -> None:
    r = await checker.caa_allows(f"www.{zone}", LE, wildcard=False)
    assert (r.allowed, r.reason, r.record, r.at) == (True, CaaReason.OK, "", "")


async def test_parent_issue_letsencrypt_allows(
    checker: DnsChecker, challtestsrv: ChallTestSrv, zone: str
) -> None:
    challtestsrv.add_caa(zone, [("issue", LE)])
    r = await checker.caa_allows(f"www.{zone}", LE, wildcard=False)
    assert (r.allowed, r.reason, r.at) == (True, CaaReason.OK, zone)
    assert r.record == f'{zone}. CAA 0 issue "{LE}"'


async def test_parent_issue_other_ca_forbids(
    checker: DnsChecker, challtestsrv: ChallTestSrv, zone: str
) -> None:
    challtestsrv.add_caa(zone, [("issue", "other.ca")])
    r = await checker.caa_allows(f"a.b.{zone}", LE, wildcard=False)
    assert (r.allowed, r.reason, r.at) == (False, CaaReason.FORBIDS, zone)
    assert r.record == f'{zone}. CAA 0 issue "other.ca"'
    assert r.record in r.message


async def test_issue_semicolon_forbids(
    checker: DnsChecker, challtestsrv: ChallTestSrv, zone: str
) -> None:
    challtestsrv.add_caa(zone, [("issue", ";")])
    r = await checker.caa_allows(f"www.{zone}", LE, wildcard=False)
    assert (r.allowed, r.reason) == (False, CaaReason.FORBIDS)


async def test_issuewild_only_for_wildcards(
    checker: DnsChecker, challtestsrv: ChallTestSrv, zone: str
) -> None:
    challtestsrv.add_caa(zone, [("issue", LE), ("issuewild", "other.ca")])
    plain = await checker.caa_allows(f"www.{zone}", LE, wildcard=False)
    wild = await checker.caa_allows(f"www.{zone}", LE, wildcard=True)
    star = await checker.caa_allows(f"*.{zone}", LE, wildcard=False)  # "*." implies wildcard
    assert plain.allowed
    assert (wild.allowed, wild.reason) == (False, CaaReason.FORBIDS)
    assert wild.record == f'{zone}. CAA 0 issuewild "other.ca"'
    assert (star.allowed, star.at) == (False, zone)


async def test_record_on_the_name_overrides_parent(
    checker: DnsChecker, challtestsrv: ChallTestSrv, zone: str
) -> None:
    challtestsrv.add_caa(zone, [("issue", "other.ca")])
    challtestsrv.add_caa(f"www.{zone}", [("issue", LE)])
    r = await checker.caa_allows(f"www.{zone}", LE, wildcard=False)
    assert (r.allowed, r.at) == (True, f"www.{zone}")
    sibling = await checker.caa_allows(f"api.{zone}", LE, wildcard=False)
    assert (sibling.allowed, sibling.at) == (False, zone)


async def test_name_forbids_even_if_parent_allows(
    checker: DnsChecker, challtestsrv: ChallTestSrv, zone: str
) -> None:
    challtestsrv.add_caa(zone, [("issue", LE)])
    challtestsrv.add_caa(f"www.{zone}", [("issue", "other.ca")])
    r = await checker.caa_allows(f"www.{zone}", LE, wildcard=False)
    assert (r.allowed, r.at) == (False, f"www.{zone}")


async def test_cname_at_a_level_is_followed(
    checker: DnsChecker, challtestsrv: ChallTestSrv, zone: str
) -> None:
    challtestsrv.set_cname(f"www.{zone}", f"target.{zone}")
    challtestsrv.add_caa(f"target.{zone}", [("issue", "other.ca")])
    r = await checker.caa_allows(f"www.{zone}", LE, wildcard=False)
    assert (r.allowed, r.at) == (False, f"www.{zone}")
    assert r.record == f'target.{zone}. CAA 0 issue "other.ca"'


async def test_servfail_is_an_error(
    checker: DnsChecker, challtestsrv: ChallTestSrv, zone: str
) -> None:
    challtestsrv.set_servfail(zone)
    r = await checker.caa_allows(f"www.{zone}", LE, wildcard=False)
    assert (r.allowed, r.reason, r.at) == (False, CaaReason.ERROR, zone)


async def test_servfail_above_the_deciding_set_does_not_matter(
    checker: DnsChecker, challtestsrv: ChallTestSrv, zone: str
) -> None:
    challtestsrv.set_servfail(zone)
    challtestsrv.add_caa(f"www.{zone}", [("issue", LE)])
    r = await checker.caa_allows(f"www.{zone}", LE, wildcard=False)
    assert (r.allowed, r.reason) == (True, CaaReason.OK)


async def test_dead_server_is_an_error(closed_port: int) -> None:
    checker = DnsChecker([("127.0.0.1", closed_port)], timeout=0.5)
    r = await checker.caa_allows("www.example.test", LE, wildcard=False)
    assert (r.allowed, r.reason) == (False, CaaReason.ERROR)


async def test_nxdomain_climbs_and_critical_flag_forbids(scripted: type[ScriptedDns]) -> None:
    srv = scripted(
        [
            'example.test. CAA 0 issue "letsencrypt.org"',
            'example.test. CAA 128 futuretag "x"',
            'ok.test. CAA 0 issue "letsencrypt.org"',
        ]
    ).start()
    checker = DnsChecker([(srv.host, srv.port)], timeout=2.0)
    r = await checker.caa_allows("www.example.test", LE, wildcard=False)  # www: NXDOMAIN
    assert (r.allowed, r.reason, r.at) == (False, CaaReason.FORBIDS, "example.test")
    assert 'CAA 128 futuretag "x"' in r.record
    ok = await checker.caa_allows("deep.www.ok.test", LE, wildcard=False)
    assert (ok.allowed, ok.at) == (True, "ok.test")
