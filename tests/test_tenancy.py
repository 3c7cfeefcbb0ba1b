"""App names and the family rule (pure): which names must share one owner."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from certbroker import tenancy
from certbroker.errors import FailedPrecondition, InvalidArgument
from certbroker.model import Domain, LetsEncryptState, Source
from certbroker.tenancy import Claim, overlap

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def row(name: str, app: str = "alice", include_apex: bool = False) -> Domain:
    return Domain(
        name=name,
        app=app,
        letsencrypt_enabled=True,
        le_state=LetsEncryptState.PENDING_DNS,
        serving=Source.NONE,
        created_at=T0,
        updated_at=T0,
        include_apex=include_apex,
    )


@pytest.mark.parametrize("app", ["shop", "a", "0", "my-app-2", "x" * 63, "9lives"])
def test_good_app_names(app: str) -> None:
    assert tenancy.check_app(app) == app


@pytest.mark.parametrize(
    "app", ["", "-shop", "Shop", "my_app", "shop ", " shop", "x" * 64, "a.b", "ünï", "a\x00b"]
)
def test_bad_app_names_are_a_field_violation(app: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        tenancy.check_app(app)
    assert [v.field for v in caught.value.violations] == ["app"]
    assert caught.value.reason == "APP_INVALID"


def test_a_huge_app_name_is_not_echoed() -> None:
    with pytest.raises(InvalidArgument) as caught:
        tenancy.check_app("A" * 2_000_000)
    assert len(caught.value.message) < 200


def test_empty_app_means_any_app_only_across_tenants() -> None:
    assert tenancy.acting_app("", across_tenants=True) is None
    assert tenancy.acting_app("shop", across_tenants=True) == "shop"
    with pytest.raises(InvalidArgument) as caught:
        tenancy.acting_app("", across_tenants=False)
    assert caught.value.violations[0].field == "app"
    with pytest.raises(InvalidArgument):
        tenancy.acting_app("Bad", across_tenants=True)  # given, it is validated even for admins


@pytest.mark.parametrize(
    ("a", "b"),
    [
        # rule 1: one _acme-challenge.w name
        (Claim("*.w.example"), Claim("w.example")),
        (Claim("*.w.example", True), Claim("w.example")),
        (Claim("*.w.example"), Claim("*.w.example")),
        # rule 2: the wildcard's certificate is valid for the other's name
        (Claim("*.w.example"), Claim("x.w.example")),
        (Claim("*.w.example"), Claim("*.x.w.example", True)),  # the apex x.w.example
        (Claim("*.w.example", True), Claim("*.example", False)),  # *.example covers w.example
    ],
)
def test_one_family(a: Claim, b: Claim) -> None:
    assert overlap(a, b) and overlap(b, a)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (Claim("*.w.example"), Claim("a.x.w.example")),  # two labels below
        (Claim("*.w.example"), Claim("*.x.w.example")),  # no apex: other names, other challenge
        (Claim("*.w.example"), Claim("*.example")),  # no apex in either
        (Claim("w.example"), Claim("x.w.example")),  # exact names cover only themselves
        (Claim("w.example"), Claim("*.v.example")),
        (Claim("*.w.example", True), Claim("*.v.example", True)),
    ],
)
def test_not_one_family(a: Claim, b: Claim) -> None:
    assert not overlap(a, b) and not overlap(b, a)


@pytest.mark.parametrize(
    ("claim", "existing"),
    [
        (Claim("*.w.example"), "w.example"),
        (Claim("*.w.example", True), "w.example"),
        (Claim("w.example"), "*.w.example"),
        (Claim("x.w.example"), "*.w.example"),
        (Claim("*.w.example"), "x.w.example"),
        (Claim("w.example"), "w.example"),
    ],
)
def test_the_rows_to_look_at_include_every_overlapping_one(claim: Claim, existing: str) -> None:
    names, below = tenancy.neighbours(claim)
    found = existing in names or (below is not None and existing.endswith(f".{below}"))
    assert found


def test_another_apps_row_in_the_family_is_refused_without_naming_the_app() -> None:
    with pytest.raises(FailedPrecondition) as caught:
        tenancy.check_family(Claim("*.w.example", True), "mallory", [row("w.example")])
    assert caught.value.reason == "DOMAIN_OWNED_BY_OTHER_APP"
    assert "alice" not in caught.value.message
    assert "w.example" in caught.value.message
    # the same app's rows, and rows outside the family, are fine
    tenancy.check_family(Claim("*.w.example", True), "alice", [row("w.example")])
    tenancy.check_family(Claim("*.w.example"), "mallory", [row("a.x.w.example")])


def test_owner_check() -> None:
    domain = row("w.example")
    tenancy.check_owner(domain, "alice")
    tenancy.check_owner(domain, None)  # an operator
    with pytest.raises(FailedPrecondition) as caught:
        tenancy.check_owner(domain, "mallory")
    assert "alice" not in caught.value.message
