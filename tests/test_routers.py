"""The router registry: reports validated and bounded, counts per revision, aging on the clock,
ids held by the identity that reported them, and listing in pages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from certbroker.app import encode_page_token as domains_page_token
from certbroker.clock import FakeClock
from certbroker.errors import InvalidArgument, PermissionDenied, ResourceExhausted
from certbroker.routers import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    MAX_PAGE_TOKEN_LENGTH,
    MAX_ROUTER_ID,
    RouterRegistry,
    decode_page_token,
    encode_page_token,
)

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
INTERVAL = timedelta(seconds=10)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def registry(clock: FakeClock) -> RouterRegistry:
    return RouterRegistry(clock, INTERVAL, capacity=3, per_identity=3)


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


def test_an_id_belongs_to_its_first_identity_until_forgotten(
    registry: RouterRegistry, clock: FakeClock
) -> None:
    held = registry.report("edge-1", "router-1", 4, 2)
    clock.advance(INTERVAL * 3 + timedelta(seconds=1))  # stale: no longer counts, still held
    with pytest.raises(PermissionDenied) as refused:
        registry.report("edge-1", "router-2", 9, 9)
    assert refused.value.reason == "ROUTER_ID_TAKEN"
    assert "router-1" not in str(refused.value)  # the holder is not named
    assert [s.report for s in registry.routers()] == [held]  # unchanged
    clock.advance(INTERVAL * 7 - timedelta(seconds=1))  # exactly 10 intervals: still held
    with pytest.raises(PermissionDenied):
        registry.report("edge-1", "router-2", 9, 9)
    clock.advance(timedelta(seconds=1))
    taken = registry.report("edge-1", "router-2", 9, 9)  # forgotten: free again
    assert (taken.identity, taken.first_seen) == ("router-2", clock.now())
    with pytest.raises(PermissionDenied):
        registry.report("edge-1", "router-1", 5, 2)
    assert registry.report("edge-1", "router-2", 10, 9).first_seen == taken.first_seen


def test_pages_list_every_router_once_in_id_order(
    clock: FakeClock,
) -> None:
    registry = RouterRegistry(clock, INTERVAL, capacity=5000, per_identity=5000)
    ids = [f"edge-{n:04d}" for n in range(2500)]
    for router_id in reversed(ids):
        registry.report(router_id, "router-1", 1, 1)
    listed: list[str] = []
    sizes: list[int] = []
    token = ""
    while True:
        page = registry.page(1000, token)
        sizes.append(len(page.routers))
        listed.extend(s.report.router_id for s in page.routers)
        token = page.next_page_token
        if not token:
            break
    assert sizes == [1000, 1000, 500]
    assert listed == ids
    assert len(registry.page(0, "").routers) == DEFAULT_PAGE_SIZE == MAX_PAGE_SIZE
    assert len(registry.page(10**6, "").routers) == MAX_PAGE_SIZE  # clamped, as ListDomains
    second = registry.page(1000, registry.page(1000, "").next_page_token)
    exact = registry.page(500, second.next_page_token)  # the last page exactly full
    assert (len(exact.routers), exact.next_page_token) == (500, "")


def test_a_page_token_survives_its_router_being_forgotten(
    registry: RouterRegistry, clock: FakeClock
) -> None:
    for name in ("a", "b", "c"):
        registry.report(name, "router-1", 1, 1)
    first = registry.page(1, "")
    assert [s.report.router_id for s in first.routers] == ["a"]
    clock.advance(INTERVAL * 10 + timedelta(seconds=1))
    registry.report("c", "router-1", 1, 1)
    rest = registry.page(1, first.next_page_token)  # "a" and "b" forgotten meanwhile
    assert ([s.report.router_id for s in rest.routers], rest.next_page_token) == (["c"], "")


@pytest.mark.parametrize(
    ("page_size", "token", "fields", "reason"),
    [
        (-1, "", ["page_size"], "PAGE_SIZE_INVALID"),
        (0, "not a token", ["page_token"], "PAGE_TOKEN_INVALID"),
        (0, "A" * 100_000, ["page_token"], "PAGE_TOKEN_INVALID"),
        (0, encode_page_token("x" * 129), ["page_token"], "PAGE_TOKEN_INVALID"),
        (0, encode_page_token("bad id"), ["page_token"], "PAGE_TOKEN_INVALID"),
        (0, domains_page_token("edge-1"), ["page_token"], "PAGE_TOKEN_INVALID"),
        (-5, "%%%", ["page_size", "page_token"], "PAGE_SIZE_INVALID"),
    ],
)
def test_bad_page_arguments_are_refused_field_by_field(
    registry: RouterRegistry, page_size: int, token: str, fields: list[str], reason: str
) -> None:
    with pytest.raises(InvalidArgument) as refused:
        registry.page(page_size, token)
    assert [v.field for v in refused.value.violations] == fields
    assert refused.value.reason == reason
    assert "A" * 100 not in str(refused.value)  # the input is not echoed


def test_the_longest_id_makes_a_token_within_the_bound() -> None:
    token = encode_page_token("x" * MAX_ROUTER_ID)
    assert len(token) <= MAX_PAGE_TOKEN_LENGTH
    assert decode_page_token(token) == "x" * MAX_ROUTER_ID


def test_strict_mode_takes_only_the_callers_own_name(clock: FakeClock) -> None:
    registry = RouterRegistry(clock, INTERVAL, id_is_identity=True)
    registry.report("router-1", "router-1", 1, 1)
    with pytest.raises(PermissionDenied) as refused:
        registry.report("edge-9", "router-1", 1, 1)
    assert refused.value.reason == "ROUTER_ID_NOT_IDENTITY"
    with pytest.raises(InvalidArgument):  # a bad id is still a bad id first
        registry.report("bad id", "bad id", 1, 1)
    assert [s.report.router_id for s in registry.routers()] == ["router-1"]


def test_an_identitys_share_frees_as_its_routers_are_forgotten(clock: FakeClock) -> None:
    registry = RouterRegistry(clock, INTERVAL, capacity=10, per_identity=2)
    registry.report("a-1", "router-1", 0, 1)
    registry.report("a-2", "router-1", 0, 1)
    with pytest.raises(ResourceExhausted) as caught:
        registry.report("a-3", "router-1", 0, 1)
    assert caught.value.reason == "TOO_MANY_ROUTERS_FOR_IDENTITY"
    for n in range(5):  # others and the plaintext identity are not held to router-1's share
        registry.report(f"b-{n}", "router-2" if n < 2 else "local", 0, 1)
    clock.advance(INTERVAL * 10 + timedelta(seconds=1))  # all forgotten
    registry.report("a-3", "router-1", 0, 1)
    registry.report("a-4", "router-1", 0, 1)
    assert [state.report.router_id for state in registry.routers()] == ["a-3", "a-4"]
