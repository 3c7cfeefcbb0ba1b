"""PlatformTargets parsing and the pure helpers (no DNS)."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime

import pytest

from certbroker.dns import (
    DnsChecker,
    DnsReason,
    DnsResult,
    PlatformTargets,
    normalise_host,
    to_observation,
)


def test_parse_mixes_addresses_and_normalised_hosts() -> None:
    t = PlatformTargets.parse([" 10.0.0.1 ", "2001:db8::1", "Apps.Platform.TEST.", "bücher.test"])
    assert t.addresses == {ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("2001:db8::1")}
    assert t.hosts == {"apps.platform.test", "xn--bcher-kva.test"}
    assert t.expected() == (
        "A 10.0.0.1",
        "AAAA 2001:db8::1",
        "CNAME apps.platform.test.",
        "CNAME xn--bcher-kva.test.",
    )


def test_describe_reads_as_a_sentence() -> None:
    t = PlatformTargets.parse(["127.0.0.1", "apps.platform.test"])
    assert t.describe() == "127.0.0.1 or a CNAME to apps.platform.test"
    t2 = PlatformTargets.parse(["10.0.0.2", "10.0.0.1"])
    assert t2.describe() == "one of 10.0.0.1, 10.0.0.2"


@pytest.mark.parametrize("items", [[], ["", " "], ["bad..name"]])
def test_parse_refuses_nothing_or_garbage(items: list[str]) -> None:
    with pytest.raises(ValueError):
        PlatformTargets.parse(items)


def test_normalise_host() -> None:
    assert normalise_host("WWW.Example.COM.") == "www.example.com"


def test_constructor_does_no_io_and_checks_arguments() -> None:
    DnsChecker(None)  # system resolver is read lazily, on first query
    DnsChecker([("127.0.0.1", 1)], timeout=0.1)
    with pytest.raises(ValueError):
        DnsChecker([])
    with pytest.raises(ValueError):
        DnsChecker(None, timeout=0)


def test_wildcard_probe_name() -> None:
    checker = DnsChecker([("127.0.0.1", 53)])
    assert checker.probe_name("*.example.com").to_text() == "certbroker-wildcard-check.example.com."
    assert checker.probe_name("www.example.com").to_text() == "www.example.com."
    custom = DnsChecker([("127.0.0.1", 53)], wildcard_probe_label="probe")
    assert custom.probe_name("*.example.com").to_text() == "probe.example.com."


def test_to_observation() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    result = DnsResult(
        name="www.example.com",
        checked="www.example.com",
        points=False,
        answered=("A 192.0.2.1",),
        expected=("A 127.0.0.1",),
        reason=DnsReason.NOT_POINTING,
        message="...",
    )
    obs = to_observation(result, now)
    assert obs.answered == ("A 192.0.2.1",)
    assert obs.expected == ("A 127.0.0.1",)
    assert obs.points_to_platform is False
    assert obs.checked_at == now
