"""The platform's own domains as pure rules: what apps may claim and change (no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from certbroker import tenancy
from certbroker.errors import FailedPrecondition
from certbroker.model import Domain, LetsEncryptState, Source
from certbroker.platform import (
    PLATFORM_DOMAIN,
    UNDER_PLATFORM_DOMAIN,
    Platform,
    PlatformDomain,
)
from certbroker.tenancy import Claim

NOW = datetime(2026, 1, 1, tzinfo=UTC)
PLATFORM = Platform.from_names(["*.osc-fr1.example.io", "*.eu.platform.sh"])


def row(name: str, app: str) -> Domain:
    return Domain(
        name=name,
        app=app,
        letsencrypt_enabled=True,
        le_state=LetsEncryptState.CREATING,
        serving=Source.NONE,
        created_at=NOW,
        updated_at=NOW,
    )


def test_zones_default_to_each_base_or_the_configured_one() -> None:
    assert list(PLATFORM) == [
        PlatformDomain("*.osc-fr1.example.io", "osc-fr1.example.io"),
        PlatformDomain("*.eu.platform.sh", "eu.platform.sh"),
    ]
    shared = Platform.from_names(["*.osc-fr1.example.io"], "example.io")
    only = shared.get("*.osc-fr1.example.io")
    assert only is not None
    assert only.zone == "example.io"
    assert only.challenge_name == "_acme-challenge.osc-fr1.example.io"


def test_the_app_name_pattern_refuses_the_platform_owner() -> None:
    with pytest.raises(Exception, match="lowercase letters"):
        tenancy.check_app(tenancy.PLATFORM_APP)


@pytest.mark.parametrize("name", ["*.osc-fr1.example.io", "*.eu.platform.sh"])
def test_a_platform_domain_cannot_be_claimed(name: str) -> None:
    with pytest.raises(FailedPrecondition) as caught:
        PLATFORM.check_claim(Claim(name))
    assert caught.value.reason == PLATFORM_DOMAIN
    assert "CERTBROKER_PLATFORM_DOMAINS" in caught.value.message


@pytest.mark.parametrize(
    "claim",
    [
        Claim("my-app.osc-fr1.example.io"),  # what the wildcard serves: another app's name
        Claim("osc-fr1.example.io"),  # the base: one _acme-challenge with the wildcard
        Claim("a.b.osc-fr1.example.io"),  # deeper: the region's DNS wildcard answers it too
        Claim("*.x.osc-fr1.example.io"),
        Claim("*.osc-fr1.example.io", include_apex=True),
        Claim("x.eu.platform.sh"),
    ],
)
def test_names_under_a_platform_domain_are_refused(claim: Claim) -> None:
    with pytest.raises(FailedPrecondition) as caught:
        PLATFORM.check_claim(claim)
    assert caught.value.reason in (UNDER_PLATFORM_DOMAIN, PLATFORM_DOMAIN)
    if claim.name != "*.osc-fr1.example.io":
        assert caught.value.reason == UNDER_PLATFORM_DOMAIN
        assert "under the platform's own domain" in caught.value.message


@pytest.mark.parametrize(
    "claim",
    [
        Claim("example.io"),
        Claim("www.example.io"),
        Claim("osc-fr1x.example.io"),  # a suffix of characters, not of labels
        Claim("x.osc-fr2.example.io"),
        Claim("*.example.io"),  # covers osc-fr1.example.io, not the apps below it
        Claim("platform.sh"),
    ],
)
def test_names_beside_or_above_are_free(claim: Claim) -> None:
    PLATFORM.check_claim(claim)


def test_an_apex_that_lands_under_a_platform_domain_is_refused() -> None:
    """``*.x.osc-fr1.example.io`` with its apex claims ``x.osc-fr1.example.io`` too."""
    with pytest.raises(FailedPrecondition) as caught:
        Platform.from_names(["*.osc-fr1.example.io"]).check_claim(
            Claim("*.x.osc-fr1.example.io", include_apex=True)
        )
    assert caught.value.reason == UNDER_PLATFORM_DOMAIN


@pytest.mark.parametrize("app", ["shop", None])  # None: the admin role, acting for every app
@pytest.mark.parametrize("removing", [False, True])
def test_no_role_changes_a_configured_platform_domain(app: str | None, removing: bool) -> None:
    with pytest.raises(FailedPrecondition) as caught:
        PLATFORM.check_mutation(
            row("*.osc-fr1.example.io", tenancy.PLATFORM_APP), app, removing=removing
        )
    assert caught.value.reason == PLATFORM_DOMAIN


def test_a_retired_platform_domain_is_removed_by_the_admin_role_only() -> None:
    retired = row("*.old-region.example.io", tenancy.PLATFORM_APP)
    PLATFORM.check_mutation(retired, None, removing=True)
    for app, removing in (("shop", True), (None, False), ("shop", False)):
        with pytest.raises(FailedPrecondition) as caught:
            PLATFORM.check_mutation(retired, app, removing=removing)
        assert caught.value.reason == PLATFORM_DOMAIN
        assert "retired" in caught.value.message


def test_app_rows_are_not_the_platform_rules_business() -> None:
    """An app's row (even one under a platform domain, from before it) is tenancy's matter."""
    PLATFORM.check_mutation(row("legacy.osc-fr1.example.io", "shop"), "shop")
    PLATFORM.check_mutation(row("www.example.io", "shop"), None, removing=True)
