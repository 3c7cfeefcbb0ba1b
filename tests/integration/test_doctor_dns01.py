"""``CheckDomain`` for a wildcard: the DNS-01 delegation, expected vs found, against real BIND.

The name is not added: the doctor shows the record the asking app would be
asked for, then finds it once the customer creates it (and checks that the
broker's TSIG key may update its own record, changing nothing).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from certbroker import delegation
from certbroker.v1 import broker_pb2
from tests.broker import label_key, started_broker
from tests.infra.bind import Bind
from tests.infra.pebble import Pebble
from tests.integration.dns01 import base_name, dns01_settings

pytestmark = pytest.mark.integration

B = broker_pb2


def checks(response: B.CheckDomainResponse) -> dict[str, B.DomainCheck]:
    return {check.name: check for check in response.checks}


async def test_wildcard_delegation_expected_then_found(
    bind: Bind, pebble: Pebble, tmp_path: Path
) -> None:
    base = base_name()
    name = f"*.{base}"
    challenge = delegation.challenge_name(name)
    # Three runs on one name in a row: the per-domain interval is shortened here.
    settings = replace(dns01_settings(tmp_path, bind, pebble), doctor_interval=timedelta(0, 0, 1))
    async with started_broker(settings) as broker:
        label = (await label_key(broker)).label("shop", name)
        expected = delegation.record(name, label, bind.challenge_zone)
        request = B.CheckDomainRequest(domain=name, app="shop")
        revision = await broker.running.store.current_revision()

        missing = checks(await broker.stub.CheckDomain(request))
        bind.set_cname(challenge, "elsewhere.example.net")
        wrong = checks(await broker.stub.CheckDomain(request))
        bind.set_cname(challenge, delegation.target(label, bind.challenge_zone))
        report = await broker.stub.CheckDomain(request)

        assert await broker.running.store.current_revision() == revision  # nothing written

    found = missing["dns01_delegation"]
    assert found.verdict == B.CHECK_VERDICT_FAIL
    assert found.summary == f"{challenge} has no CNAME record"
    assert found.detail == f"expected: {expected}\nfound: no CNAME at {challenge}"
    assert found.fix == expected
    assert missing["http01_probe"].verdict == B.CHECK_VERDICT_SKIPPED

    assert wrong["dns01_delegation"].summary == (
        f"{challenge} is a CNAME to elsewhere.example.net., not to the broker's zone"
    )

    ok = checks(report)["dns01_delegation"]
    assert ok.verdict == B.CHECK_VERDICT_OK, ok
    assert ok.summary == f"{challenge} is delegated to the broker, which may update the record"
    # A wildcard need not point at the platform to be validated: a warning, not a failure.
    assert checks(report)["dns"].verdict in (B.CHECK_VERDICT_OK, B.CHECK_VERDICT_WARN)
    assert report.would_issue_now, report
