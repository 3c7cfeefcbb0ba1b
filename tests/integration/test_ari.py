"""Renewal inside the CA's suggested window (ARI, RFC 9773), with ``replaces`` sent.

Pebble 2.4 has no ARI, so these tests put ``tests/infra/ari_proxy.AriProxy`` in
front of it: the proxy adds ``renewalInfo`` to Pebble's directory, answers the
windows the test chooses, passes every other request to Pebble unchanged, and
records the ``replaces`` of every newOrder. Everything else is real: the
broker, Pebble's orders and validations, its certificates.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from certbroker.acme import ari
from certbroker.clock import FakeClock
from certbroker.v1 import broker_pb2, domain_pb2
from tests.broker import started_broker
from tests.infra.ari_proxy import AriProxy, Window
from tests.integration.lab import Lab, in_use, unique_domain, verify_chain, wait_status


class Windows:
    """The windows the proxy answers: one per certificate id, else ``default``."""

    def __init__(self, default: Window) -> None:
        self.default = default
        self.by_id: dict[str, Window] = {}

    def __call__(self, cert_id: str) -> Window | None:
        return self.by_id.get(cert_id, self.default)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime.now(UTC))


@pytest.fixture
def windows(clock: FakeClock) -> Windows:
    start = clock.now() + timedelta(days=50)
    return Windows(Window(start, start + timedelta(days=2), timedelta(hours=6)))


@pytest.fixture
def proxy(lab: Lab, windows: Windows) -> Iterator[AriProxy]:
    with AriProxy(lab.pebble, windows) as running:
        yield running


def when(d: domain_pb2.Domain) -> datetime:
    return d.renewal_time.ToDatetime(UTC)


async def test_renewal_inside_the_cas_window_with_replaces(
    lab: Lab, proxy: AriProxy, windows: Windows, clock: FakeClock, tmp_path: Path
) -> None:
    name = unique_domain("ari")
    settings = lab.settings(tmp_path, acme_directory=proxy.directory_url)
    async with started_broker(settings, clock) as broker:
        await broker.stub.IssueCertificate(
            broker_pb2.IssueCertificateRequest(domain=name, app="shop")
        )
        default = windows.default
        first = await wait_status(
            broker.stub, name, lambda d: in_use(d) and default.start <= when(d) <= default.end
        )
        first_id = ari.cert_id(first.lets_encrypt_certificate.chain_pem)
        assert proxy.renewal_requests == [first_id]  # asked once, right after issuance
        assert proxy.replaces == [None]  # a first certificate replaces nothing

        # The CA moves the window forward (say, a revocation is coming); the broker
        # sees it when it asks again, per the Retry-After of six hours.
        soon = clock.now() + timedelta(hours=7)
        windows.by_id[first_id] = Window(soon, soon + timedelta(hours=1), timedelta(hours=6))
        clock.advance(timedelta(hours=6))
        moved = await wait_status(
            broker.stub, name, lambda d: soon <= when(d) <= soon + timedelta(hours=1)
        )
        assert len(proxy.renewal_requests) == 2

        clock.set(when(moved))
        renewed = await wait_status(
            broker.stub,
            name,
            lambda d: d.lets_encrypt_certificate.serial != first.lets_encrypt_certificate.serial,
        )
    assert proxy.replaces == [None, first_id]
    assert renewed.lets_encrypt_state == domain_pb2.LETS_ENCRYPT_STATE_IN_USE
    verify_chain(renewed.lets_encrypt_certificate.chain_pem, lab.pebble.root_pem(), name)


async def test_without_renewal_info_the_renewal_is_at_two_thirds_without_replaces(
    lab: Lab, windows: Windows, clock: FakeClock, tmp_path: Path
) -> None:
    """The same proxy passing Pebble's directory as it is (no renewalInfo): the lifetime
    rule, never a renewalInfo request, no ``replaces``."""
    name = unique_domain("noari")
    with AriProxy(lab.pebble, windows, offer_ari=False) as proxy:
        settings = lab.settings(tmp_path, acme_directory=proxy.directory_url)
        async with started_broker(settings, clock) as broker:
            await broker.stub.IssueCertificate(
                broker_pb2.IssueCertificateRequest(domain=name, app="shop")
            )
            first = await wait_status(broker.stub, name, in_use)
            cert = first.lets_encrypt_certificate
            life = cert.not_after.ToDatetime(UTC) - cert.not_before.ToDatetime(UTC)
            offset = when(first) - cert.not_before.ToDatetime(UTC)
            # two thirds of its life less the per-name spread (priorities.spread_renewal)
            assert life * (2 / 3 - 1 / 12) <= offset < life * 2 / 3 + timedelta(seconds=10)
            clock.set(when(first))
            await wait_status(
                broker.stub, name, lambda d: d.lets_encrypt_certificate.serial != cert.serial
            )
    assert proxy.renewal_requests == []
    assert proxy.replaces == [None, None]
