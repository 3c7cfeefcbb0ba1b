"""The order state machine against an in-memory CA: no network, no private methods."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from josepy import jwk

from certbroker.acme.account import jwk_and_alg, new_account_key
from certbroker.acme.http01 import Http01Responder
from certbroker.acme.keys import generate_private_key
from certbroker.acme.orders import Challenges, OrderGone, OrderMachine
from certbroker.acme.problems import AcmeProblem
from tests.fakes.acme_ca import FakeCa

ACCOUNT: jwk.JWK = jwk_and_alg(new_account_key())[0]


class RecordingResponder(Http01Responder):
    """The real responder, remembering every token it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.added: list[str] = []

    def add(self, token: str, key_authorization: str) -> None:
        self.added.append(token)
        super().add(token, key_authorization)


class RecordingDns01:
    def __init__(self) -> None:
        self.published: list[tuple[str, str]] = []
        self.unpublished: list[tuple[str, str]] = []

    async def publish(self, label: str, value: str) -> None:
        self.published.append((label, value))

    async def unpublish(self, label: str, value: str) -> None:
        self.unpublished.append((label, value))


def machine(
    ca: FakeCa, responder: Http01Responder | None = None, dns01: RecordingDns01 | None = None
) -> OrderMachine:
    return OrderMachine(
        ca, lambda: ACCOUNT, responder if responder is not None else Http01Responder(), dns01,
        poll_interval=0.001,
        order_timeout=5,
    )  # fmt: skip


def leaf_key_matches(chain_pem: str, key_pem: bytes) -> bool:
    leaf = x509.load_pem_x509_certificate(chain_pem.encode())
    key = serialization.load_pem_private_key(key_pem, password=None)
    return leaf.public_key() == key.public_key()


async def test_an_order_is_created_reported_answered_finalized_and_downloaded() -> None:
    ca = FakeCa()
    responder = RecordingResponder()
    created: list[str] = []

    async def on_created(url: str) -> None:
        assert ca.answered == []  # persisted before any challenge is answered
        created.append(url)

    key = generate_private_key()
    issued = await machine(ca, responder).place(
        ["a.test", "b.test"], key, Challenges(), replaces="AAA.BBB", on_order_created=on_created
    )
    assert created == [issued.order_url]
    assert ca.new_orders == [(("a.test", "b.test"), "AAA.BBB")]
    assert sorted(ca.answered) == ["a.test", "b.test"]
    assert leaf_key_matches(issued.chain_pem, key)
    assert len(responder.added) == 2
    assert all(responder.get(t) is None for t in responder.added)  # removed afterwards


async def test_a_certificate_already_replaced_is_ordered_again_without_replaces() -> None:
    ca = FakeCa(already_replaced={"OLD.ID"})
    await machine(ca).place(["a.test"], generate_private_key(), Challenges(), replaces="OLD.ID")
    assert ca.new_orders == [(("a.test",), "")]


async def test_failed_authorizations_are_counted_and_the_first_problem_raised() -> None:
    ca = FakeCa(refuse={"a.test": "unauthorized", "b.test": "unauthorized"})
    with pytest.raises(AcmeProblem) as caught:
        await machine(ca).place(["a.test", "b.test"], generate_private_key(), Challenges())
    assert caught.value.reason == "ACME_UNAUTHORIZED"
    assert caught.value.retryable
    assert caught.value.failed_authorizations == 2
    assert ca.finalized == 0


async def test_a_valid_order_is_resumed_by_downloading_not_ordering_again() -> None:
    ca = FakeCa()
    key = generate_private_key()
    orders = machine(ca)
    first = await orders.place(["a.test"], key, Challenges())
    again = await orders.resume_or_place(first.order_url, ["a.test"], key, Challenges())
    assert len(ca.new_orders) == 1 and ca.downloads == 2
    assert again.order_url == first.order_url


async def test_an_order_that_cannot_be_resumed_is_placed_anew() -> None:
    ca = FakeCa()
    key = generate_private_key()
    orders = machine(ca)
    with pytest.raises(OrderGone):
        await orders.resume("https://ca.test/order/404", ["a.test"], key, Challenges())
    first = await orders.place(["a.test"], key, Challenges())
    with pytest.raises(OrderGone):  # for other names
        await orders.resume(first.order_url, ["b.test"], key, Challenges())
    created: list[str] = []

    async def on_created(url: str) -> None:
        created.append(url)

    issued = await orders.resume_or_place(
        "https://ca.test/order/404", ["a.test"], key, Challenges(), on_order_created=on_created
    )
    assert created == [issued.order_url] and len(ca.new_orders) == 2


async def test_not_ready_at_finalize_means_poll_and_finalize_again() -> None:
    ca = FakeCa(not_ready_once=True)
    issued = await machine(ca).place(["a.test"], generate_private_key(), Challenges())
    assert ca.finalized == 2 and issued.chain_pem


async def test_a_wildcard_is_answered_by_dns01_at_its_label_and_cleaned_up() -> None:
    ca = FakeCa()
    dns01 = RecordingDns01()
    await machine(ca, dns01=dns01).place(
        ["*.w.test", "w.test"], generate_private_key(), Challenges(dns01=True, label="lbl")
    )
    assert [label for label, _ in dns01.published] == ["lbl", "lbl"]
    assert sorted(dns01.unpublished) == sorted(dns01.published)


async def test_dns01_without_a_label_or_a_zone_fails_before_answering() -> None:
    ca = FakeCa()
    with pytest.raises(AcmeProblem) as no_label:
        await machine(ca, dns01=RecordingDns01()).place(
            ["*.w.test"], generate_private_key(), Challenges(dns01=True)
        )
    assert no_label.value.reason == "DNS01_LABEL_MISSING"
    with pytest.raises(AcmeProblem) as no_zone:
        await machine(ca).place(["*.w.test"], generate_private_key(), Challenges(label="x"))
    assert no_zone.value.reason == "DNS01_NOT_CONFIGURED"
    assert ca.answered == []
