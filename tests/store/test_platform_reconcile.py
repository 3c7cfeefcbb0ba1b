"""``certbroker.platform.reconcile`` on both store backends: add, keep, retire, resume, refuse."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from certbroker import lifecycle, tenancy
from certbroker.clock import FakeClock
from certbroker.model import ChallengeType, Domain, LetsEncryptState, Source
from certbroker.platform import RETIRED, Platform, PlatformConflict, reconcile
from tests.store.backends import AnyStore

NOW = datetime(2026, 1, 1, tzinfo=UTC)
REGIONS = ("*.osc-fr1.example.test", "*.osc-fr2.example.test")


async def test_reconcile_keeps_the_store_in_step_with_the_configuration(store: AnyStore) -> None:
    clock = FakeClock(NOW)
    first = await reconcile(store, clock, Platform.from_names(REGIONS))
    assert sorted(first.added) == sorted(REGIONS)
    for name in REGIONS:
        row = await store.get_domain(name)
        assert row is not None
        assert row.app == tenancy.PLATFORM_APP
        assert row.challenge is ChallengeType.DNS_01
        assert row.le_state is LetsEncryptState.CREATING
        assert row.next_run_at == NOW  # the scheduler takes it at once
    revision = await store.current_revision()
    # the same configuration again writes nothing
    again = await reconcile(store, clock, Platform.from_names(REGIONS))
    assert (again.added, again.resumed, again.retired) == ((), (), ())
    assert await store.current_revision() == revision
    # one dropped: retired, not removed
    dropped = await reconcile(store, clock, Platform.from_names(REGIONS[:1]))
    assert dropped.retired == (REGIONS[1],)
    retired = await store.get_domain(REGIONS[1])
    assert retired is not None and not retired.letsencrypt_enabled
    assert retired.retry.last_error_reason == RETIRED
    revision = await store.current_revision()
    assert (await reconcile(store, clock, Platform.from_names(REGIONS[:1]))).retired == ()
    assert await store.current_revision() == revision  # retired once, not at every start
    # listed again: renewed again
    back = await reconcile(store, clock, Platform.from_names(REGIONS))
    assert back.resumed == (REGIONS[1],)
    resumed = await store.get_domain(REGIONS[1])
    assert resumed is not None and resumed.letsencrypt_enabled
    assert resumed.retry.last_error_reason == ""


async def test_a_name_an_app_owns_stops_the_start_and_changes_nothing(store: AnyStore) -> None:
    clock = FakeClock(NOW)
    owned = Domain(
        name=REGIONS[0],
        app="shop",
        letsencrypt_enabled=False,
        le_state=LetsEncryptState.DISABLED,
        serving=Source.NONE,
        created_at=NOW,
        updated_at=NOW,
    )
    async with store.transaction() as tx:
        await tx.put_domain(lifecycle.settle(owned, NOW))
    revision = await store.current_revision()
    with pytest.raises(PlatformConflict, match="already a domain of app 'shop'"):
        await reconcile(store, clock, Platform.from_names(REGIONS))
    assert await store.current_revision() == revision  # one transaction: nothing was added
    assert await store.get_domain(REGIONS[1]) is None
