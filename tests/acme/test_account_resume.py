"""Account persistence across restarts and resuming orders after a crash."""

from __future__ import annotations

import pytest

from certbroker.acme import (
    AcmeIssuer,
    AcmeProblem,
    Http01Responder,
    MemoryAccountStore,
    generate_private_key,
)
from tests.acme.chains import leaf_serial, verify_chain
from tests.acme.conftest import make_issuer
from tests.infra.challtestsrv import ChallTestSrv
from tests.infra.pebble import Pebble

pytestmark = pytest.mark.integration


class _Crash(Exception):
    """Stands in for the process dying right after the order URL was persisted."""


async def test_account_found_again_after_restart(
    pebble: Pebble, acme_responder: Http01Responder, unique_name: str
) -> None:
    store = MemoryAccountStore()
    first = make_issuer(pebble, store, acme_responder)
    try:
        await first.start()
        url = first.account_url
    finally:
        await first.close()
    assert store.saves == 1

    second = make_issuer(pebble, store, acme_responder)
    try:
        await second.start()
        assert second.account_url == url
        assert store.saves == 1  # found, not registered again
        cert = await second.issue([unique_name], generate_private_key())
        verify_chain(cert.chain_pem, pebble.root_pem(), unique_name)
    finally:
        await second.close()


async def test_account_registered_again_when_ca_forgot_it(
    pebble: Pebble, acme_responder: Http01Responder
) -> None:
    """A stored key the CA does not know (e.g. Pebble restarted) registers anew."""
    from certbroker.acme.account import new_account_key

    store = MemoryAccountStore()
    key = new_account_key()
    store.value = (key, "https://127.0.0.1:1/my-account/gone")
    iss = make_issuer(pebble, store, acme_responder)
    try:
        await iss.start()
    finally:
        await iss.close()
    assert store.value is not None
    assert store.value[0] == key
    assert store.value[1] == iss.account_url != "https://127.0.0.1:1/my-account/gone"


async def test_resume_valid_order_downloads_without_new_issuance(
    issuer: AcmeIssuer, pebble: Pebble, unique_name: str
) -> None:
    key = generate_private_key()
    cert = await issuer.issue([unique_name], key)
    issued = pebble.issued_count()

    again = await issuer.resume(cert.order_url, [unique_name], key)

    assert again.order_url == cert.order_url
    assert leaf_serial(again.chain_pem) == leaf_serial(cert.chain_pem)
    assert pebble.issued_count() == issued


async def test_resume_pending_order_after_crash(
    issuer: AcmeIssuer, pebble: Pebble, acme_responder: Http01Responder, unique_name: str
) -> None:
    key = generate_private_key()
    saved: list[str] = []

    async def persist_then_crash(url: str) -> None:
        saved.append(url)
        raise _Crash

    with pytest.raises(_Crash):
        await issuer.issue([unique_name], key, on_order_created=persist_then_crash)
    assert len(acme_responder) == 0
    issued = pebble.issued_count()

    cert = await issuer.resume(saved[0], [unique_name], key)

    assert cert.order_url == saved[0]
    verify_chain(cert.chain_pem, pebble.root_pem(), unique_name)
    assert pebble.issued_count() == issued + 1


async def test_resume_unknown_order_starts_over(issuer: AcmeIssuer, pebble: Pebble) -> None:
    url = pebble.directory_url.replace("/dir", "/my-order/does-not-exist")
    with pytest.raises(AcmeProblem) as info:
        await issuer.resume(url, ["gone.acme-test.example"], generate_private_key())
    assert info.value.reason == "ACME_ORDER_INVALID"
    assert info.value.retryable is True


async def test_resume_invalid_order_starts_over(
    issuer: AcmeIssuer, acme_dns: ChallTestSrv, unique_name: str
) -> None:
    saved: list[str] = []

    async def persist(url: str) -> None:
        saved.append(url)

    acme_dns.add_a(unique_name, ["127.0.0.2"])  # nothing listens there: validation fails
    try:
        with pytest.raises(AcmeProblem):
            await issuer.issue([unique_name], generate_private_key(), on_order_created=persist)
    finally:
        acme_dns.clear_a(unique_name)
    with pytest.raises(AcmeProblem) as info:
        await issuer.resume(saved[0], [unique_name], generate_private_key())
    assert info.value.reason == "ACME_ORDER_INVALID"
    assert info.value.retryable is True


async def test_resume_refuses_other_names(issuer: AcmeIssuer, unique_name: str) -> None:
    key = generate_private_key()
    cert = await issuer.issue([unique_name], key)
    with pytest.raises(AcmeProblem) as info:
        await issuer.resume(cert.order_url, ["other." + unique_name], key)
    assert info.value.reason == "ACME_ORDER_INVALID"


async def test_closed_issuer_refuses_work(
    pebble: Pebble, acme_responder: Http01Responder, account_store: MemoryAccountStore
) -> None:
    iss: AcmeIssuer = make_issuer(pebble, account_store, acme_responder)
    await iss.start()
    await iss.close()
    with pytest.raises(RuntimeError):
        await iss.issue(["closed.acme-test.example"], generate_private_key())
