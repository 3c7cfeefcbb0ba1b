"""The ``certbroker`` CLI waiting on Let's Encrypt for real: Pebble, challtestsrv, a broker.

``domains-add --wait`` follows WatchStatus from Pending DNS to In use;
``domains-renew`` on a certificate not due replaces it (IssueCertificate renew);
``domains-renew`` on a failing domain asks for the next attempt now, and a
second one within the broker's forced-retry interval is refused with the
wait printed ("try again in 10 min"). The broker runs in-process (this
test's event loop); the CLI is a subprocess, as a person runs it.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from certbroker.model import Source
from certbroker.v1 import broker_pb2
from certbroker_client.client import BrokerError
from tests.broker import started_broker
from tests.client.clirun import assert_clean_error, run_async
from tests.infra.pebble import Pebble
from tests.integration.lab import Lab, in_use, unique_domain, verify_chain, wait_status


async def test_add_wait_reaches_in_use_then_renew_replaces_the_certificate(
    lab: Lab, tmp_path: Path
) -> None:
    """``domains-renew`` on a certificate that is not due: a new one (another serial), the
    old one serving in every event until then; a second renewal is refused, nothing written."""
    name = unique_domain()
    async with started_broker(lab.settings(tmp_path)) as broker:
        addr = broker.address
        added = await run_async("--addr", addr, "--app", "shop", "domains-add", name, "--wait",
                                "--timeout", "60")  # fmt: skip
        assert added.returncode == 0, added
        lines = added.stdout.splitlines()
        assert lines[0].startswith(f"+0:00 {name}: Pending DNS")
        assert lines[-1] == "In use: a Let's Encrypt certificate serves, expires in 89 days"
        first = await wait_status(broker.stub, name, in_use)
        old = first.lets_encrypt_certificate.serial
        store = broker.running.store
        revision = await store.current_revision()

        renew = await run_async("--addr", addr, "domains-renew", name)
        assert renew.returncode == 0, renew
        assert renew.stdout == (
            f"{name}: renewing its Let's Encrypt certificate now; the current one serves "
            "until the new one arrives\n"
        )
        renewed = await wait_status(
            broker.stub, name, lambda d: d.lets_encrypt_certificate.serial != old, timeout=60
        )
        assert in_use(renewed) and renewed.retry.attempt == 0
        verify_chain(renewed.lets_encrypt_certificate.chain_pem, lab.pebble.root_pem(), name)
        events = await store.events_after(revision, 1000)
        shown = [e.domain for e in events if e.domain is not None and e.domain_name == name]
        serials = [d.le_cert.serial.lower() if d.le_cert else "" for d in shown]
        new_at = serials.index(renewed.lets_encrypt_certificate.serial.lower())
        assert new_at > 0  # the renewal time moved first, the old certificate serving
        for d in shown[:new_at]:
            assert d.serving is Source.LETS_ENCRYPT, d
            assert d.le_cert is not None and d.le_cert.serial.lower() == old.lower()
        assert shown[new_at].serving is Source.LETS_ENCRYPT

        settled_at = await store.current_revision()
        with pytest.raises(grpc.RpcError) as caught:
            await broker.stub.IssueCertificate(
                broker_pb2.IssueCertificateRequest(domain=name, app="shop", renew=True)
            )
        refused = BrokerError.from_rpc_error(caught.value)
        assert refused.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refused.reason == "RETRY_TOO_SOON"
        assert refused.retry_after is not None
        assert timedelta(0) < refused.retry_after <= timedelta(minutes=10)
        again = await run_async("--addr", addr, "domains-renew", name)
        assert_clean_error(again, 1, "error: RESOURCE_EXHAUSTED (RETRY_TOO_SOON): ")
        assert await store.current_revision() == settled_at
        status = await broker.stub.GetStatus(broker_pb2.GetStatusRequest(domain=name))
        assert (
            status.domain.lets_encrypt_certificate.serial == renewed.lets_encrypt_certificate.serial
        )

        table = await run_async("--addr", addr, "domains", "--app", "shop")
        row = next(line for line in table.stdout.splitlines() if line.startswith(name))
        assert "In use" in row and "in 89 days" in row


async def test_renew_of_a_failing_domain_then_refused_with_the_wait(
    lab: Lab, failing_ca: Pebble, tmp_path: Path
) -> None:
    """A CA whose validations fail (nothing answers its HTTP-01 port): a retryable failure,
    backing off. (A CAA record that forbids the CA is Action required instead: no failure.)"""
    name = unique_domain()
    settings = lab.settings(
        tmp_path, acme_directory=failing_ca.directory_url, acme_ca_bundle=failing_ca.ca_bundle_path
    )
    async with started_broker(settings) as broker:
        addr = broker.address
        added = await run_async("--addr", addr, "--app", "shop", "domains-add", name,
                                "--wait", "--timeout", "3")  # fmt: skip
        assert added.returncode == 124, added  # the CA keeps failing: it cannot settle
        assert "attempt 1 failed: ACME_" in added.stdout, added.stdout
        assert "; next try in " in added.stdout

        forced = await run_async("--addr", addr, "domains-renew", name, "--wait",
                                 "--timeout", "3")  # fmt: skip
        assert forced.returncode == 124, forced
        assert "attempt 2 failed: ACME_" in forced.stdout, forced.stdout

        again = await run_async("--addr", addr, "domains-renew", name)
        assert_clean_error(again, 1, "error: RESOURCE_EXHAUSTED (RETRY_TOO_SOON): ")
        assert again.stderr.splitlines()[-1] == "  try again in 10 min"
