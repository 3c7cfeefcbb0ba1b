"""Custom certificates over time: the instant Let's Encrypt fallback and the expiry warning.

The seed: "If you forget to renew your certificate and it expires, or if you
delete it, a Let's Encrypt certificate will automatically and immediately
replace it." Proved here through the real server with an injected clock: the
swap is one write (one revision, one watch event) at the custom certificate's
``not_after`` — scheduled for that instant, not found by a later poll — and a
delete hands over in the very write that deletes. Where a real Let's Encrypt
certificate must exist, Pebble issues it (the ``lab`` fixture).

The last test drives the seed's CLI (``domains-add --cert --key``,
``domains-ssl --cert --key`` / ``--disable``) against the broker as a process.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from cryptography import x509

from certbroker.clock import FakeClock
from certbroker.model import Source
from certbroker.v1 import broker_pb2, broker_pb2_grpc, domain_pb2
from tests.api.test_upload import PKI, trust_file
from tests.broker import BrokerHandle, broker_settings, started_broker
from tests.infra.ports import free_port
from tests.integration.lab import (
    BrokerProcess,
    Lab,
    in_use,
    unique_domain,
    verify_chain,
    wait_status,
)
from tests.pki import NOW, Issued

IN_USE = domain_pb2.LETS_ENCRYPT_STATE_IN_USE
NOT_USED = domain_pb2.LETS_ENCRYPT_STATE_NOT_USED
DISABLED = domain_pb2.LETS_ENCRYPT_STATE_DISABLED
PENDING_DNS = domain_pb2.LETS_ENCRYPT_STATE_PENDING_DNS
CUSTOM = domain_pb2.CERTIFICATE_SOURCE_CUSTOM
LETS_ENCRYPT = domain_pb2.CERTIFICATE_SOURCE_LETS_ENCRYPT
NONE = domain_pb2.CERTIFICATE_SOURCE_NONE
SECOND = timedelta(seconds=1)


def lab_clock() -> FakeClock:
    """A frozen clock a minute ahead of Pebble's.

    Pebble's certificates start at the second they are issued. A clock frozen at
    the test's start can lag that by a fraction of a second, and the broker then
    sees a not-yet-valid certificate and orders again (until the quota stops it).
    """
    return FakeClock(datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=1))


def custom_leaf(name: str, now: datetime, lifetime: timedelta) -> Issued:
    """A leaf from the private test PKI, valid from a day ago for ``lifetime`` from ``now``."""
    return PKI.leaf(name, not_before=now - timedelta(days=1), not_after=now + lifetime)


async def upload(
    stub: broker_pb2_grpc.CertificateBrokerServiceStub, name: str, leaf: Issued
) -> domain_pb2.Domain:
    reply = await stub.UploadCustom(
        broker_pb2.UploadCustomRequest(
            domain=name, certificate=PKI.bundle(leaf), private_key=leaf.key_pem()
        )
    )
    return reply.domain


async def status(
    stub: broker_pb2_grpc.CertificateBrokerServiceStub, name: str
) -> domain_pb2.Domain:
    return (await stub.GetStatus(broker_pb2.GetStatusRequest(domain=name))).domain


class Watch:
    """A WatchStatus stream from a revision on, read with deadlines."""

    def __init__(self, call: grpc.aio.UnaryStreamCall) -> None:  # type: ignore[type-arg]
        self.call = call

    async def next_update(self, timeout: float = 10.0) -> broker_pb2.WatchEvent:
        """The next domain event, skipping heartbeats."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            response = await asyncio.wait_for(self.call.read(), deadline - loop.time())
            assert response is not grpc.aio.EOF, "the watch stream ended"
            if response.HasField("event"):
                return response.event


@asynccontextmanager
async def watching(broker: BrokerHandle, name: str, after: int) -> AsyncIterator[Watch]:
    call = broker.stub.WatchStatus(
        broker_pb2.WatchStatusRequest(after_revision=after, domains=[name])
    )
    try:
        yield Watch(call)
    finally:
        call.cancel()


async def swap_time_is_scheduled(broker: BrokerHandle, name: str, when: datetime) -> None:
    """The domain's next run is the custom certificate's expiry itself."""
    got = await status(broker.stub, name)
    assert got.next_check_time.ToDatetime(UTC) == when, got


# -- with a real Let's Encrypt certificate (Pebble) ---------------------------------------


async def test_expiry_swaps_to_letsencrypt_in_one_write_at_not_after(
    lab: Lab, tmp_path: Path
) -> None:
    name = unique_domain()
    clock = lab_clock()
    settings = lab.settings(tmp_path, trust_bundle=str(trust_file(tmp_path, PKI)))
    async with started_broker(settings, clock) as broker:
        stub = broker.stub
        await stub.IssueCertificate(broker_pb2.IssueCertificateRequest(domain=name, app="shop"))
        issued = await wait_status(stub, name, in_use)
        leaf = custom_leaf(name, clock.now(), timedelta(days=30))
        installed = await upload(stub, name, leaf)
        assert (installed.serving_source, installed.lets_encrypt_state) == (CUSTOM, NOT_USED)
        # the Let's Encrypt certificate stays, warm for the fallback
        assert installed.lets_encrypt_certificate == issued.lets_encrypt_certificate

        not_after = leaf.cert.not_valid_after_utc
        clock.set(not_after - SECOND)  # inside the 14-day window: the warning is written first
        warned = await wait_status(stub, name, lambda d: d.custom_certificate_expiring)
        assert (warned.serving_source, warned.lets_encrypt_state) == (CUSTOM, NOT_USED)
        await swap_time_is_scheduled(broker, name, not_after)

        before = await broker.running.store.current_revision()
        async with watching(broker, name, before) as watch:
            clock.set(not_after)
            event = await watch.next_update()
        assert event.type == broker_pb2.EVENT_TYPE_DOMAIN_UPDATED
        assert event.revision == before + 1  # one write does the whole swap
        swapped = event.domain
        assert swapped.serving_source == LETS_ENCRYPT
        assert swapped.lets_encrypt_state == IN_USE
        assert swapped.revision == before + 1
        assert swapped.lets_encrypt_certificate.serial == issued.lets_encrypt_certificate.serial
        assert swapped.custom_certificate.days_left == 0  # still shown, for the customer
        assert await status(stub, name) == swapped
        assert await broker.running.store.current_revision() == before + 1

        record = await broker.running.store.get_domain(name)
        assert record is not None
        served = await broker.running.broker.serving_material(record)
        assert served is not None and served.source is Source.LETS_ENCRYPT
        verify_chain(served.chain_pem, lab.pebble.root_pem(), name, clock.now())


async def test_delete_falls_back_to_letsencrypt_in_the_same_revision(
    lab: Lab, tmp_path: Path
) -> None:
    name = unique_domain()
    clock = lab_clock()
    settings = lab.settings(tmp_path, trust_bundle=str(trust_file(tmp_path, PKI)))
    async with started_broker(settings, clock) as broker:
        stub = broker.stub
        await stub.IssueCertificate(broker_pb2.IssueCertificateRequest(domain=name, app="shop"))
        issued = await wait_status(stub, name, in_use)
        installed = await upload(stub, name, custom_leaf(name, clock.now(), timedelta(days=90)))
        assert installed.lets_encrypt_state == NOT_USED

        async with watching(broker, name, installed.revision) as watch:
            deleted = (await stub.DeleteCustom(broker_pb2.DeleteCustomRequest(domain=name))).domain
            event = await watch.next_update()
        assert deleted.revision == installed.revision + 1
        assert (deleted.serving_source, deleted.lets_encrypt_state) == (LETS_ENCRYPT, IN_USE)
        assert not deleted.HasField("custom_certificate")
        assert deleted.lets_encrypt_certificate == issued.lets_encrypt_certificate
        assert event.revision == deleted.revision and event.domain == deleted
        assert await broker.running.store.current_revision() == deleted.revision

        again = await stub.DeleteCustom(broker_pb2.DeleteCustomRequest(domain=name))
        assert again.domain == deleted  # deleting twice changes nothing


async def test_delete_before_any_issuance_orders_at_once(lab: Lab, tmp_path: Path) -> None:
    """Opted in, nothing issued yet (DNS was not ready): the delete starts the order now."""
    name = unique_domain()
    lab.dns.add_a(name, ["192.0.2.10"])
    clock = lab_clock()
    settings = lab.settings(tmp_path, trust_bundle=str(trust_file(tmp_path, PKI)))
    try:
        async with started_broker(settings, clock) as broker:
            stub = broker.stub
            await stub.IssueCertificate(broker_pb2.IssueCertificateRequest(domain=name, app="shop"))
            pending = await wait_status(
                stub, name, lambda d: d.retry.last_error_reason == "DNS_NOT_POINTING"
            )
            next_dns_check = pending.retry.next_attempt_time.ToDatetime(UTC)
            assert next_dns_check == clock.now() + timedelta(seconds=60)
            installed = await upload(stub, name, custom_leaf(name, clock.now(), timedelta(days=90)))
            assert (installed.serving_source, installed.lets_encrypt_state) == (CUSTOM, NOT_USED)
            assert not installed.HasField("lets_encrypt_certificate")

            lab.dns.clear_a(name)  # now it points at the platform (challtestsrv's default)
            deleted = (await stub.DeleteCustom(broker_pb2.DeleteCustomRequest(domain=name))).domain
            assert deleted.serving_source == NONE
            assert deleted.lets_encrypt_state == PENDING_DNS
            # the 60-second DNS cadence is skipped: work is due now
            assert deleted.retry.next_attempt_time.ToDatetime(UTC) == clock.now()
            assert deleted.next_check_time.ToDatetime(UTC) == clock.now()
            done = await wait_status(stub, name, in_use)  # the clock never moved
            assert clock.now() < next_dns_check
            assert done.serving_source == LETS_ENCRYPT
            verify_chain(
                done.lets_encrypt_certificate.chain_pem, lab.pebble.root_pem(), name, clock.now()
            )
    finally:
        lab.dns.clear_a(name)


async def test_expiry_before_any_issuance_orders_at_once(lab: Lab, tmp_path: Path) -> None:
    """The custom certificate runs out while DNS was still waiting: order at that instant."""
    name = unique_domain()
    lab.dns.add_a(name, ["192.0.2.10"])
    clock = lab_clock()
    settings = lab.settings(tmp_path, trust_bundle=str(trust_file(tmp_path, PKI)))
    try:
        async with started_broker(settings, clock) as broker:
            stub = broker.stub
            await stub.IssueCertificate(broker_pb2.IssueCertificateRequest(domain=name, app="shop"))
            pending = await wait_status(
                stub, name, lambda d: d.retry.last_error_reason == "DNS_NOT_POINTING"
            )
            next_dns_check = pending.retry.next_attempt_time.ToDatetime(UTC)
            leaf = custom_leaf(name, clock.now(), timedelta(seconds=20))
            await upload(stub, name, leaf)
            # expires within 14 days from the start: the warning is written at once
            warned = await wait_status(stub, name, lambda d: d.custom_certificate_expiring)
            assert warned.serving_source == CUSTOM
            await swap_time_is_scheduled(broker, name, leaf.cert.not_valid_after_utc)

            lab.dns.clear_a(name)
            clock.set(leaf.cert.not_valid_after_utc)  # before the next 60-second DNS check
            assert clock.now() < next_dns_check
            done = await wait_status(stub, name, in_use)
            assert clock.now() < next_dns_check
            assert done.serving_source == LETS_ENCRYPT
    finally:
        lab.dns.clear_a(name)


async def test_letsencrypt_is_issued_and_renewed_behind_a_custom_certificate(
    lab: Lab, tmp_path: Path
) -> None:
    """Kept warm: issued once DNS points, renewed at two thirds, while custom keeps serving."""
    name = unique_domain()
    lab.dns.add_a(name, ["192.0.2.10"])
    clock = lab_clock()
    settings = lab.settings(tmp_path, trust_bundle=str(trust_file(tmp_path, PKI)))
    try:
        async with started_broker(settings, clock) as broker:
            stub = broker.stub
            await stub.IssueCertificate(broker_pb2.IssueCertificateRequest(domain=name, app="shop"))
            await wait_status(stub, name, lambda d: d.retry.last_error_reason == "DNS_NOT_POINTING")
            await upload(stub, name, custom_leaf(name, clock.now(), timedelta(days=120)))
            lab.dns.clear_a(name)
            clock.advance(timedelta(seconds=60))  # the next DNS check
            warm = await wait_status(stub, name, lambda d: d.HasField("lets_encrypt_certificate"))
            assert (warm.serving_source, warm.lets_encrypt_state) == (CUSTOM, NOT_USED)
            assert warm.retry.attempt == 0

            clock.set(warm.renewal_time.ToDatetime(UTC))
            first = warm.lets_encrypt_certificate.serial
            renewed = await wait_status(
                stub, name, lambda d: d.lets_encrypt_certificate.serial != first
            )
            assert (renewed.serving_source, renewed.lets_encrypt_state) == (CUSTOM, NOT_USED)
            assert renewed.custom_certificate.serial == warm.custom_certificate.serial
    finally:
        lab.dns.clear_a(name)


# -- opted out: nothing to fall back to ----------------------------------------------------


async def test_opted_out_expiry_serves_nothing_and_says_so(tmp_path: Path) -> None:
    clock = FakeClock(NOW)
    name = "optout.example.com"
    settings = broker_settings(tmp_path, trust_bundle=str(trust_file(tmp_path, PKI)))
    async with started_broker(settings, clock) as broker:
        stub = broker.stub
        await stub.IssueCertificate(
            broker_pb2.IssueCertificateRequest(domain=name, app="shop", disable_letsencrypt=True)
        )
        leaf = custom_leaf(name, NOW, timedelta(days=30))
        installed = await upload(stub, name, leaf)
        assert (installed.serving_source, installed.lets_encrypt_state) == (CUSTOM, DISABLED)
        not_after = leaf.cert.not_valid_after_utc
        clock.set(not_after - SECOND)
        await wait_status(stub, name, lambda d: d.custom_certificate_expiring)
        await swap_time_is_scheduled(broker, name, not_after)
        before = await broker.running.store.current_revision()
        async with watching(broker, name, before) as watch:
            clock.set(not_after)
            event = await watch.next_update()
        expired = event.domain
        assert event.revision == before + 1
        assert (expired.serving_source, expired.lets_encrypt_state) == (NONE, DISABLED)
        assert expired.disable_letsencrypt
        # the status keeps the expired certificate, so it says why nothing serves
        assert expired.custom_certificate.days_left == 0
        assert expired.custom_certificate_expiring
        assert not expired.HasField("next_check_time")  # nothing left to do on its own
        record = await broker.running.store.get_domain(name)
        assert record is not None
        assert await broker.running.broker.serving_material(record) is None

        clock.advance(timedelta(days=1))
        later = await status(stub, name)
        assert later.custom_certificate.days_left == -1
        assert later.revision == expired.revision


async def test_opted_out_delete_serves_nothing(tmp_path: Path) -> None:
    clock = FakeClock(NOW)
    name = "optout-delete.example.com"
    settings = broker_settings(tmp_path, trust_bundle=str(trust_file(tmp_path, PKI)))
    async with started_broker(settings, clock) as broker:
        stub = broker.stub
        await stub.IssueCertificate(
            broker_pb2.IssueCertificateRequest(domain=name, app="shop", disable_letsencrypt=True)
        )
        installed = await upload(stub, name, custom_leaf(name, NOW, timedelta(days=30)))
        deleted = (await stub.DeleteCustom(broker_pb2.DeleteCustomRequest(domain=name))).domain
        assert deleted.revision == installed.revision + 1
        assert (deleted.serving_source, deleted.lets_encrypt_state) == (NONE, DISABLED)
        assert not deleted.HasField("custom_certificate")
        assert not deleted.HasField("next_check_time")
        assert not deleted.custom_certificate_expiring
        assert await status(stub, name) == deleted


# -- the 14-day warning ------------------------------------------------------------------


async def test_expiring_flag_flips_at_fourteen_days_with_a_watch_event(tmp_path: Path) -> None:
    clock = FakeClock(NOW)
    name = "expiring.example.com"
    settings = broker_settings(tmp_path, trust_bundle=str(trust_file(tmp_path, PKI)))
    async with started_broker(settings, clock) as broker:
        stub = broker.stub
        await stub.IssueCertificate(
            broker_pb2.IssueCertificateRequest(domain=name, app="shop", disable_letsencrypt=True)
        )
        leaf = custom_leaf(name, NOW, timedelta(days=20))
        installed = await upload(stub, name, leaf)
        assert not installed.custom_certificate_expiring
        assert installed.custom_certificate.days_left in (19, 20)
        warn_at = leaf.cert.not_valid_after_utc - timedelta(days=14)
        assert installed.next_check_time.ToDatetime(UTC) == warn_at  # scheduled, not polled

        async with watching(broker, name, installed.revision) as watch:
            clock.set(warn_at - SECOND)
            quiet = await status(stub, name)
            assert not quiet.custom_certificate_expiring
            assert quiet.custom_certificate.days_left == 14
            clock.set(warn_at)  # six days after the upload
            event = await watch.next_update()
        assert event.type == broker_pb2.EVENT_TYPE_DOMAIN_UPDATED
        assert event.revision == installed.revision + 1  # the only write since the upload
        assert event.domain.custom_certificate_expiring
        assert event.domain.custom_certificate.days_left == 14
        assert event.domain.serving_source == CUSTOM
        assert event.domain.next_check_time.ToDatetime(UTC) == leaf.cert.not_valid_after_utc

        # a fresh certificate ends the warning in the same write that installs it
        renewed = await upload(stub, name, custom_leaf(name, clock.now(), timedelta(days=90)))
        assert not renewed.custom_certificate_expiring
        assert renewed.revision == event.revision + 1


# -- the seed's CLI against the broker as a process ---------------------------------------


def _cli(addr: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTBROKER_")}
    return subprocess.run(
        [sys.executable, "-m", "certbroker_client.cli", "--addr", addr, "--json", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_domains_add_and_ssl_with_the_broker_as_a_process(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    port = free_port()
    trust = trust_file(tmp_path, PKI)
    proc = BrokerProcess(
        broker_settings(tmp_path, dns_servers=(("127.0.0.1", 9),)),
        port,
        tmp_path / "broker.log",
        {
            "CERTBROKER_TRUST_BUNDLE": str(trust),
            "CERTBROKER_ACME_DIRECTORY": "https://127.0.0.1:9/directory",  # never reached
        },
    )
    addr = f"127.0.0.1:{port}"
    first = PKI.leaf(
        "cli.example.com", not_before=now - timedelta(days=1), not_after=now + timedelta(days=60)
    )
    second = PKI.leaf(
        "cli.example.com", not_before=now - timedelta(days=1), not_after=now + timedelta(days=90)
    )
    files = {}
    for label, data in [
        ("app.crt", PKI.bundle(first, root=True, order=(3, 1, 0, 2), junk=True)),
        ("app.key", first.key_pem("traditional")),
        ("new.der", second.der),  # leaf alone: the intermediates are missing
        ("new.pem", PKI.bundle(second, order=(2, 1, 0))),
        ("new.key", second.key_der()),
    ]:
        files[label] = tmp_path / label
        files[label].write_bytes(data)
    proc.start()
    try:
        added = _cli(
            addr,
            "domains-add",
            "cli.example.com",
            "--app",
            "shop",
            "--no-letsencrypt",
            "--cert",
            str(files["app.crt"]),
            "--key",
            str(files["app.key"]),
        )
        assert added.returncode == 0, added.stderr
        domain = json.loads(added.stdout)
        assert domain["servingSource"] == "CERTIFICATE_SOURCE_CUSTOM"
        assert domain["letsEncryptState"] == "LETS_ENCRYPT_STATE_DISABLED"
        chain = x509.load_pem_x509_certificates(domain["customCertificate"]["chainPem"].encode())
        assert chain == [i.cert for i in PKI.chain(first)]

        refused = _cli(
            addr,
            "domains-ssl",
            "cli.example.com",
            "--cert",
            str(files["new.der"]),
            "--key",
            str(files["new.key"]),
        )
        assert refused.returncode == 1
        assert (
            "INVALID_ARGUMENT (CHAIN_INTERMEDIATE_MISSING): certificate: the issuer of"
            in refused.stderr
        )  # the field, then the reason
        assert refused.stderr.count("the issuer of") == 1  # said once, not again as a violation
        assert "Traceback" not in refused.stderr

        replaced = _cli(
            addr,
            "domains-ssl",
            "cli.example.com",
            "--cert",
            str(files["new.pem"]),
            "--key",
            str(files["new.key"]),
        )
        assert replaced.returncode == 0, replaced.stderr
        domain = json.loads(replaced.stdout)
        assert domain["customCertificate"]["serial"] == format(second.cert.serial_number, "x")
        assert int(domain["revision"]) == 3  # add, install, replace: the refusal wrote nothing

        disabled = _cli(addr, "domains-ssl", "cli.example.com", "--disable")
        assert disabled.returncode == 0, disabled.stderr
        domain = json.loads(disabled.stdout)
        assert domain["servingSource"] == "CERTIFICATE_SOURCE_NONE"
        assert "customCertificate" not in domain
    finally:
        assert proc.terminate() == 0, (tmp_path / "broker.log").read_text()
