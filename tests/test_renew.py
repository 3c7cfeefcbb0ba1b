"""IssueCertificate ``renew``: a forced renewal, rationed like a forced retry (fake CA and clock).

The scheduler runs for real over SQLite (``tests.fakes.world``); the Pebble
end-to-end run (CLI, serving until the new certificate) is
tests/integration/test_cli_letsencrypt.py.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from certbroker import lifecycle
from certbroker.acme.keys import generate_private_key
from certbroker.errors import InvalidArgument, ResourceExhausted
from certbroker.model import LetsEncryptState, Source
from tests.fakes.world import world

NAME = "www.renew.test"
INTERVAL = lifecycle.FORCED_RETRY_INTERVAL


async def test_a_forced_renewal_is_kept_over_a_restart_then_rationed(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        await w.add(NAME)
        await w.settled()
        first = await w.domain(NAME)
        assert first.le_state is LetsEncryptState.IN_USE and first.le_cert is not None

        await w.scheduler.stop()  # the broker goes down right after the call
        asked = await w.broker.issue_certificate(NAME, "shop", renew=True)
        assert asked.le_cert == first.le_cert and asked.serving is Source.LETS_ENCRYPT
        assert lifecycle.renewal_due(asked) == w.clock.now()
        assert await w.domain(NAME) == asked

        await w.restart()
        renewed = await w.domain(NAME)
        assert renewed.le_cert is not None and renewed.le_cert.serial != first.le_cert.serial
        assert renewed.le_state is LetsEncryptState.IN_USE
        assert [c.names for c in w.issuer.orders_for(NAME)] == [(NAME,), (NAME,)]  # type: ignore[union-attr]
        due = lifecycle.renewal_due(renewed)
        assert due is not None and due > w.clock.now() + timedelta(days=50)

        # A second forced renewal within the interval: refused, nothing written.
        revision = await w.store.current_revision()
        await w.advance(INTERVAL - timedelta(minutes=1))
        with pytest.raises(ResourceExhausted) as refused:
            await w.broker.issue_certificate(NAME, "shop", renew=True)
        assert refused.value.reason == "RETRY_TOO_SOON"
        assert refused.value.retry_after == timedelta(minutes=1)
        assert await w.domain(NAME) == renewed
        assert await w.store.current_revision() == revision

        await w.advance(timedelta(minutes=1))  # the interval is over: one more goes
        await w.broker.issue_certificate(NAME, "shop", renew=True)
        await w.settled()
        assert len(w.issuer.orders_for(NAME)) == 3  # type: ignore[union-attr]


async def test_renew_with_a_custom_certificate_serving_renews_the_standby(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        await w.add(NAME)
        await w.settled()
        standby = (await w.domain(NAME)).le_cert
        assert standby is not None and w.issuer is not None
        key = generate_private_key()
        chain = w.issuer.chain([NAME], key)
        await w.broker.upload_custom(NAME, "shop", chain.encode(), key)

        await w.broker.issue_certificate(NAME, "shop", renew=True)
        await w.settled()
        after = await w.domain(NAME)
        assert after.serving is Source.CUSTOM and after.le_state is LetsEncryptState.NOT_USED
        assert after.le_cert is not None and after.le_cert.serial != standby.serial


async def test_renew_without_a_certificate_is_retry_now_and_never_with_disable(
    tmp_path: Path,
) -> None:
    async with world(tmp_path, issuer=False) as w:  # no CA: parked, no certificate
        await w.add(NAME)
        await w.settled()
        for _ in range(3):  # nothing has failed at the CA: free, as retry-now is
            d = await w.broker.issue_certificate(NAME, "shop", renew=True)
            assert d.retry.forced_at is None and d.le_cert is None

        with pytest.raises(InvalidArgument) as bad:
            await w.broker.issue_certificate(NAME, "shop", renew=True, disable_letsencrypt=True)
        assert bad.value.reason == "RENEW_INVALID"
        assert [v.field for v in bad.value.violations] == ["renew"]
