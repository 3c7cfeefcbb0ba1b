"""The router registry: reports validated and bounded, counts per revision, aging on the clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from certbroker.clock import FakeClock
from certbroker.errors import InvalidArgument, ResourceExhausted
from certbroker.routers import RouterRegistry

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
INTERVAL = timedelta(seconds=10)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def registry(clock: FakeClock) -> RouterRegistry:
    return RouterRegistry(clock, INTERVAL, capacity=3)


def test_counts_routers_at_or_past_a_revision(registry: RouterRegistry) -> None:
    registry.report("edge-1", "router-1", 10, 5)
    registry.report("edge-2", "router-1", 7, 5)
    registry.report("edge-3", "router-2", 12, 6)
    counts = registry.counts()
    assert counts.known == 3
    assert [counts.serving(r) for r in (0, 7, 8, 10, 11, 12, 13)] == [3, 3, 2, 2, 1, 1, 0]


def test_a_new_report_replaces_the_last_and_keeps_first_seen(
    registry: RouterRegistry, clock: FakeClock
) -> None:
    registry.report("edge-1", "router-1", 3, 1)
    assert registry.counts().serving(5) == 0
    clock.advance(timedelta(seconds=4))
    registry.report("edge-1", "router-1", 5, 2)
    [state] = registry.routers()
    assert state.report.applied_revision == 5 and state.report.domain_count == 2
    assert state.report.first_seen == START
    assert state.report.last_seen == START + timedelta(seconds=4)
    assert registry.counts().serving(5) == 1  # the cached counts saw the new report


def test_silent_routers_stop_counting_then_are_forgotten(
    registry: RouterRegistry, clock: FakeClock
) -> None:
    registry.report("quiet", "router-1", 9, 1)
    registry.report("busy", "router-1", 9, 1)
    clock.advance(INTERVAL * 3)
    registry.report("busy", "router-1", 9, 1)
    assert registry.counts().known == 2  # exactly 3 intervals: still live
    clock.advance(timedelta(seconds=1))
    assert registry.counts().known == 1
    assert [(s.report.router_id, s.live) for s in registry.routers()] == [
        ("busy", True),
        ("quiet", False),
    ]
    clock.advance(INTERVAL * 7)
    registry.report("busy", "router-1", 9, 1)
    assert [s.report.router_id for s in registry.routers()] == ["busy"]


def test_full_registry_forgets_the_silent_before_refusing(
    registry: RouterRegistry, clock: FakeClock
) -> None:
    for name in ("a", "b", "c"):
        registry.report(name, "router-1", 1, 1)
    registry.report("a", "router-1", 2, 1)  # a known router may always report
    with pytest.raises(ResourceExhausted) as refused:
        registry.report("d", "router-1", 1, 1)
    assert refused.value.reason == "TOO_MANY_ROUTERS"
    assert refused.value.retry_after == INTERVAL
    clock.advance(INTERVAL * 10 + timedelta(seconds=1))
    registry.report("d", "router-1", 1, 1)
    assert [s.report.router_id for s in registry.routers()] == ["d"]


@pytest.mark.parametrize(
    ("router_id", "revision", "count", "fields"),
    [
        ("", 1, 1, ["router_id"]),
        ("x" * 129, 1, 1, ["router_id"]),
        ("-leading-dash", 1, 1, ["router_id"]),
        ("has space", 1, 1, ["router_id"]),
        ("edge\n1", 1, 1, ["router_id"]),
        ("ok", -1, -2, ["applied_revision", "domain_count"]),
    ],
)
def test_bad_reports_are_refused_field_by_field(
    registry: RouterRegistry, router_id: str, revision: int, count: int, fields: list[str]
) -> None:
    with pytest.raises(InvalidArgument) as refused:
        registry.report(router_id, "router-1", revision, count)
    assert [v.field for v in refused.value.violations] == fields
    assert len(registry) == 0


def test_ids_routers_use_are_accepted() -> None:
    for router_id in ("edge-1.eu-west.internal", "pod_7:8443", "r@host", "x" * 128):
        registry = RouterRegistry(FakeClock(START), INTERVAL)
        registry.report(router_id, "router-1", 0, 0)
        assert registry.routers()[0].report.router_id == router_id
