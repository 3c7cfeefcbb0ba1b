"""The switch for the platform's own domains (``lifecycle.is_platform``), with plain values."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from certbroker import lifecycle as lc
from certbroker import tenancy
from certbroker.model import CertificateInfo, ChallengeType, Domain, LetsEncryptState, Source

NOW = datetime(2026, 4, 1, 12, 0, tzinfo=UTC)
S = LetsEncryptState
BOTH = lc.Setup(acme=True, http01=True, dns01=True, platform_dns01=True)


def platform_domain(**changes: object) -> Domain:
    base = Domain(
        name="*.osc-fr1.example.test",
        app=tenancy.PLATFORM_APP,
        letsencrypt_enabled=True,
        le_state=S.CREATING,
        serving=Source.NONE,
        created_at=NOW,
        updated_at=NOW,
        challenge=ChallengeType.DNS_01,
    )
    return lc.settle(replace(base, **changes), NOW)  # type: ignore[arg-type]


def cert() -> CertificateInfo:
    return CertificateInfo(
        id=1,
        sans=("*.osc-fr1.example.test",),
        subject="CN=x",
        issuer="CN=Test",
        serial="1",
        not_before=NOW - timedelta(days=1),
        not_after=NOW + timedelta(days=89),
        sha256_fingerprint="00" * 32,
        chain_pem="",
        key_algorithm="ECDSA_P256",
        received_at=NOW - timedelta(days=1),
    )


def test_due_for_an_order_it_checks_its_zone_not_a_delegation() -> None:
    d = platform_domain()
    assert lc.is_platform(d)
    assert lc.next_action(d, NOW, BOTH, order_pending=False) == lc.CheckPlatformZone()
    assert lc.next_action(d, NOW, BOTH, order_pending=True) == lc.PlaceOrder()
    # the platform's zone is enough: no delegation zone needed
    only = lc.Setup(acme=True, http01=False, dns01=False, platform_dns01=True)
    assert lc.next_action(d, NOW, only, order_pending=False) == lc.CheckPlatformZone()


def test_without_the_dns01_server_and_key_it_is_held_for_them() -> None:
    d = platform_domain()
    action = lc.next_action(d, NOW, lc.Setup(dns01=True), order_pending=False)
    assert isinstance(action, lc.HoldNotConfigured)
    assert "CERTBROKER_DNS01_SERVER" in action.missing and "platform" in action.missing


def test_at_rest_its_update_rights_are_rechecked_daily() -> None:
    resting = lc.apply(platform_domain(), lc.CertificateIssued(cert()), NOW)
    assert resting.le_state is S.IN_USE
    later = NOW + lc.DELEGATION_RECHECK
    assert resting.retry.next_attempt_at == later
    assert lc.next_action(resting, later, BOTH, order_pending=False) == lc.RecheckPlatformZone()
    failed = lc.apply(resting, lc.PlatformZoneChecked(False, "DNS01_UPDATE_REFUSED", "no"), later)
    assert failed.le_state is S.IN_USE and failed.action_required == ""
    assert failed.retry.last_error_reason == "DNS01_UPDATE_REFUSED"
    assert failed.retry.attempt == 0  # a check, not a failed order
    assert failed.retry.next_attempt_at == later + timedelta(seconds=60)
    ok = lc.apply(failed, lc.PlatformZoneChecked(True), later)
    assert ok.retry.next_attempt_at == later + lc.DELEGATION_RECHECK


def test_a_terminal_ca_refusal_is_not_an_action_required() -> None:
    failure = lc.OrderFailed("ACME_REJECTED_IDENTIFIER", "no", retryable=False)
    d = platform_domain()
    assert not lc.refused_for_good(d, failure)
    after = lc.apply(d, failure, NOW)
    assert after.le_state is S.CREATING and after.action_required == ""
    assert after.retry.attempt == 1
    app_wildcard = replace(d, app="shop")
    assert lc.refused_for_good(app_wildcard, failure)  # an app's domain: the customer's fix
