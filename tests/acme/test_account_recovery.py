"""Recovering the account at a real CA (Pebble): a deactivated account gets a new key, and
only a look at the account tells a deactivated one from an ``unauthorized`` that is not
the account's (here: an order of another account)."""

from __future__ import annotations

import pytest
from acme import client

from certbroker.acme import AcmeProblem, Http01Responder, MemoryAccountStore, generate_private_key
from tests.acme.chains import verify_chain
from tests.acme.conftest import make_issuer
from tests.infra.pebble import Pebble

pytestmark = pytest.mark.integration


def _deactivate(acme: client.ClientV2) -> None:
    acme.deactivate_registration(acme.net.account)


async def test_a_deactivated_account_is_refused_then_replaced_by_a_new_key(
    pebble: Pebble, acme_responder: Http01Responder, unique_name: str
) -> None:
    store = MemoryAccountStore()
    iss = make_issuer(pebble, store, acme_responder)
    try:
        await iss.start()
        old_url = iss.account_url
        assert store.value is not None
        old_key = store.value[0]
        await iss._transport.with_client(_deactivate)

        with pytest.raises(AcmeProblem) as refused:
            await iss.issue([unique_name], generate_private_key())
        assert refused.value.unauthorized and not refused.value.account_gone
        assert await iss.account_status() == "deactivated"  # the CA refuses the look-up too
        assert not refused.value.ca_unavailable

        await iss.recover_account(new_key=True)
        assert iss.account_url != old_url
        assert store.value is not None and store.value[0] != old_key
        assert store.value[1] == iss.account_url
        cert = await iss.issue([unique_name], generate_private_key())
        verify_chain(cert.chain_pem, pebble.root_pem(), unique_name)
    finally:
        await iss.close()


async def test_probe_answers_while_the_ca_is_up(
    pebble: Pebble, acme_responder: Http01Responder
) -> None:
    iss = make_issuer(pebble, MemoryAccountStore(), acme_responder)
    try:
        await iss.probe()  # no account needed: an unsigned GET of the directory
    finally:
        await iss.close()


async def test_an_order_of_another_account_is_unauthorized_while_the_account_is_valid(
    pebble: Pebble, acme_responder: Http01Responder, unique_name: str
) -> None:
    mine = make_issuer(pebble, MemoryAccountStore(), acme_responder)
    theirs = make_issuer(pebble, MemoryAccountStore(), acme_responder)
    try:
        await mine.start()
        await theirs.start()
        urls: list[str] = []

        async def created(url: str) -> None:
            urls.append(url)

        await theirs.issue([unique_name], generate_private_key(), on_order_created=created)
        with pytest.raises(AcmeProblem) as refused:  # resuming an order that is not ours
            await mine.issue([unique_name], generate_private_key(), resume_url=urls[0])
        assert refused.value.unauthorized and not refused.value.account_gone
        assert not refused.value.ca_unavailable and not refused.value.not_found
        assert await mine.account_status() == "valid"  # so the account is kept
    finally:
        await mine.close()
        await theirs.close()
