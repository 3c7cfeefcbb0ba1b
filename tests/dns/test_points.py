"""points_to_platform against a real pebble-challtestsrv (and a scripted server for NXDOMAIN)."""

from __future__ import annotations

import time

import pytest

from certbroker.dns import DnsChecker, DnsReason, PlatformTargets
from tests.dns.conftest import ScriptedDns
from tests.infra.challtestsrv import ChallTestSrv

pytestmark = pytest.mark.integration

TARGETS = PlatformTargets.parse(["10.0.0.1", "2001:db8::1", "apps.platform.test"])


@pytest.fixture
def checker(challtestsrv: ChallTestSrv) -> DnsChecker:
    return DnsChecker([(challtestsrv.host, challtestsrv.dns_port)], timeout=2.0)


async def test_platform_a_points(
    checker: DnsChecker, challtestsrv: ChallTestSrv, zone: str
) -> None:
    challtestsrv.add_a(f"www.{zone}", ["10.0.0.1"])
    r = await checker.points_to_platform(f"www.{zone}", TARGETS)
    assert (r.points, r.reason) == (True, DnsReason.OK)
    assert r.answered == ("A 10.0.0.1",)


async def test_platform_a_and_aaaa_point(
    checker: DnsChecker, challtestsrv: ChallTestSrv, zone: str
) -> None:
    challtestsrv.add_a(f"www.{zone}", ["10.0.0.1"])
    challtestsrv.add_aaaa(f"www.{zone}", ["2001:db8::1"])
    r = await checker.points_to_platform(f"www.{zone}", TARGETS)
    assert (r.points, r.reason) == (True, DnsReason.OK)
    assert set(r.answered) == {"A 10.0.0.1", "AAAA 2001:db8::1"}


async def test_a_elsewhere_is_not_pointing(
    checker: DnsChecker, challtestsrv: ChallTestSrv, zone: str
) -> None:
    challtestsrv.add_a(f"www.{zone}", ["192.0.2.1"])
    r = await checker.points_to_platform(f"www.{zone}", TARGETS)
    assert (r.points, r.reason) == (False, DnsReason.NOT_POINTING)
    assert r.answered == ("A 192.0.2.1",)
    assert r.expected == ("A 10.0.0.1", "AAAA 2001:db8::1", "CNAME apps.platform.test.")
    assert r.message == (
        f"www.{zone} has A 192.0.2.1, expected one of 10.0.0.1, 2001:db8::1 "
        "or a CNAME to apps.platform.test"
    )


async def test_answers_read_the_same_in_whatever_order_the_server_sends_them(
    checker: DnsChecker, challtestsrv: ChallTestSrv, zone: str
) -> None:
    """A re-check finding the same records must read the same: no event is written then."""
    challtestsrv.add_a(f"rr.{zone}", ["192.0.2.9", "192.0.2.1", "192.0.2.5"])
    first = await checker.points_to_platform(f"rr.{zone}", TARGETS)
    challtestsrv.clear_a(f"rr.{zone}")
    challtestsrv.add_a(f"rr.{zone}", ["192.0.2.5", "192.0.2.9", "192.0.2.1"])
    again = await checker.points_to_platform(f"rr.{zone}", TARGETS)
    assert first.answered == again.answered == ("A 192.0.2.1", "A 192.0.2.5", "A 192.0.2.9")
    assert first.message == again.message


async def test_one_stray_a_among_platform_ones_is_not_pointing(
    checker: DnsChecker, challtestsrv: ChallTestSrv, zone: str
) -> None:
    challtestsrv.add_a(f"www.{zone}", ["10.0.0.1", "192.0.2.1"])
    r = await checker.points_to_platform(f"www.{zone}", TARGETS)
    assert (r.points, r.reason) == (False, DnsReason.NOT_POINTING)


async def test_platform_a_with_stray_aaaa_is_pending(
    checker: DnsChecker, challtestsrv: ChallTestSrv, zone: str
) -> None:
    challtestsrv.add_a(f"www.{zone}", ["10.0.0.1"])
    challtestsrv.add_aaaa(f"www.{zone}", ["2001:db8::99"])
    r = await checker.points_to_platform(f"www.{zone}", TARGETS)
    assert (r.points, r.reason) == (False, DnsReason.STRAY_AAAA)
    assert "AAAA 2001:db8::99" in r.answered
    assert "AAAA 2001:db8::99" in r.message
    assert "2001:db8::1" in r.message  # tells which IPv6 address would do


async def test_cname_to_platform_points(
    checker: DnsChecker, challtestsrv: ChallTestSrv, zone: str
) -> None:
    challtestsrv.set_cname(f"www.{zone}", "apps.platform.test")
    r = await checker.points_to_platform(f"www.{zone}", TARGETS)
    assert (r.points, r.reason) == (True, DnsReason.OK)
    assert r.answered == ("CNAME apps.platform.test.",)


async def test_two_hop_cname_chain_is_followed(
    checker: DnsChecker, challtestsrv: ChallTestSrv, zone: str
) -> None:
    # challtestsrv answers one CNAME per reply, so the second hop is our own query.
    challtestsrv.set_cname(f"www.{zone}", f"edge.{zone}")
    challtestsrv.set_cname(f"edge.{zone}", "apps.platform.test")
    r = await checker.points_to_platform(f"www.{zone}", TARGETS)
    assert (r.points, r.reason) == (True, DnsReason.OK)
    assert r.answered == (f"CNAME edge.{zone}.", "CNAME apps.platform.test.")


async def test_cname_elsewhere_is_not_pointing(
    checker: DnsChecker, challtestsrv: ChallTestSrv, zone: str
) -> None:
    challtestsrv.set_cname(f"www.{zone}", "other.host.test")
    challtestsrv.add_a("other.host.test", ["192.0.2.7"])
    r = await checker.points_to_platform(f"www.{zone}", TARGETS)
    assert (r.points, r.reason) == (False, DnsReason.NOT_POINTING)
    assert r.answered == ("CNAME other.host.test.", "A 192.0.2.7")
    assert "has CNAME other.host.test., A 192.0.2.7, expected" in r.message


async def test_cname_to_a_host_with_platform_addresses_points(
    checker: DnsChecker, challtestsrv: ChallTestSrv, zone: str
) -> None:
    challtestsrv.set_cname(f"www.{zone}", f"lb.{zone}")
    challtestsrv.add_a(f"lb.{zone}", ["10.0.0.1"])
    r = await checker.points_to_platform(f"www.{zone}", TARGETS)
    assert (r.points, r.reason) == (True, DnsReason.OK)


async def test_cname_loop_ends(checker: DnsChecker, challtestsrv: ChallTestSrv, zone: str) -> None:
    challtestsrv.set_cname(f"a.{zone}", f"b.{zone}")
    challtestsrv.set_cname(f"b.{zone}", f"a.{zone}")
    r = await checker.points_to_platform(f"a.{zone}", TARGETS)
    assert (r.points, r.reason) == (False, DnsReason.NO_RECORDS)


async def test_no_records(checker: DnsChecker, zone: str) -> None:
    r = await checker.points_to_platform(f"www.{zone}", TARGETS)
    assert (r.points, r.reason) == (False, DnsReason.NO_RECORDS)
    assert r.answered == ()
    assert "has no A, AAAA or CNAME record" in r.message


async def test_servfail(checker: DnsChecker, challtestsrv: ChallTestSrv, zone: str) -> None:
    challtestsrv.set_servfail(f"www.{zone}")
    r = await checker.points_to_platform(f"www.{zone}", TARGETS)
    assert (r.points, r.reason) == (False, DnsReason.SERVFAIL)
    assert "SERVFAIL" in r.message


async def test_wildcard_checks_the_probe_label(
    checker: DnsChecker, challtestsrv: ChallTestSrv, zone: str
) -> None:
    challtestsrv.add_a(f"certbroker-wildcard-check.{zone}", ["10.0.0.1"])
    r = await checker.points_to_platform(f"*.{zone}", TARGETS)
    assert (r.points, r.reason) == (True, DnsReason.OK)
    assert r.checked == f"certbroker-wildcard-check.{zone}"
    challtestsrv.add_a(f"certbroker-wildcard-check.{zone}", ["192.0.2.1"])
    r = await checker.points_to_platform(f"*.{zone}", TARGETS)
    assert r.reason == DnsReason.NOT_POINTING
    assert r.message.startswith(f"*.{zone} (checked as certbroker-wildcard-check.{zone}) has")


async def test_nxdomain(scripted: type[ScriptedDns]) -> None:
    srv = scripted(["other.test. A 10.0.0.1"]).start()
    checker = DnsChecker([(srv.host, srv.port)], timeout=2.0)
    r = await checker.points_to_platform("www.example.test", TARGETS)
    assert (r.points, r.reason) == (False, DnsReason.NXDOMAIN)
    assert "does not exist" in r.message


async def test_cname_to_nxdomain_keeps_the_cname(scripted: type[ScriptedDns]) -> None:
    srv = scripted(["www.example.test. CNAME gone.example.test."]).start()
    checker = DnsChecker([(srv.host, srv.port)], timeout=2.0)
    r = await checker.points_to_platform("www.example.test", TARGETS)
    assert (r.points, r.reason) == (False, DnsReason.NXDOMAIN)
    assert r.answered == ("CNAME gone.example.test.",)


async def test_dead_server_times_out_within_the_timeout(closed_port: int) -> None:
    checker = DnsChecker([("127.0.0.1", closed_port)], timeout=0.5)
    started = time.monotonic()
    r = await checker.points_to_platform("www.example.test", TARGETS)
    elapsed = time.monotonic() - started
    assert (r.points, r.reason) == (False, DnsReason.TIMEOUT)
    assert elapsed < 0.5 + 0.4  # dnspython overshoots its lifetime by ~0.1 s
    assert "within 0.5 s" in r.message


async def test_silent_server_times_out(silent_port: int) -> None:
    checker = DnsChecker([("127.0.0.1", silent_port)], timeout=0.3)
    started = time.monotonic()
    r = await checker.points_to_platform("www.example.test", TARGETS)
    assert r.reason == DnsReason.TIMEOUT
    assert time.monotonic() - started < 0.3 + 0.4


async def test_dead_first_server_leaves_time_for_the_next(
    challtestsrv: ChallTestSrv, closed_port: int, zone: str
) -> None:
    challtestsrv.add_a(f"www.{zone}", ["10.0.0.1"])
    checker = DnsChecker(
        [("127.0.0.1", closed_port), (challtestsrv.host, challtestsrv.dns_port)], timeout=1.0
    )
    r = await checker.points_to_platform(f"www.{zone}", TARGETS)
    assert (r.points, r.reason) == (True, DnsReason.OK)
