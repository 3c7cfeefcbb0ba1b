"""A new DNS-01 domain shares its challenge sibling's delegation label, the legacy one too.

``x`` and ``*.x`` validate at the one ``_acme-challenge.x``, a CNAME that can point
at one label. After an upgrade, a wildcard kept its legacy label (migration 003);
adding its apex (or the wildcard of an existing name) by the same app used to get
the owner-bound label instead, so the customer was asked to move the record, which
would break the sibling: two domains asking in turn for two different records.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from certbroker import delegation
from certbroker.app import Broker
from certbroker.clock import FakeClock
from certbroker.delegation import LabelKey
from certbroker.errors import FailedPrecondition
from certbroker.model import ChallengeType
from certbroker.store.sqlite import SqliteStore
from certbroker.x509.sealing import KeySealer
from certbroker.x509.validate import CustomCertificateValidator
from tests.pki import TestPKI
from tests.store.legacy import LegacyDomain, schema_002_database

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
async def upgraded(tmp_path: Path) -> AsyncIterator[tuple[Broker, LabelKey]]:
    """A broker over a database an older version left: bob's wildcard and alice's name."""
    path = tmp_path / "old.sqlite3"
    schema_002_database(
        path,
        [
            LegacyDomain("*.s.example.com", "bob", "DNS_01", T0),
            LegacyDomain("t.example.com", "alice", "DNS_01", T0),
        ],
    )
    store = await SqliteStore.open(str(path))
    labels = LabelKey(secrets.token_bytes(32))
    broker = Broker(
        store,
        FakeClock(T0),
        KeySealer(secrets.token_bytes(32)),
        CustomCertificateValidator([TestPKI("Labels").root.cert]),
        labels,
    )
    try:
        yield broker, labels
    finally:
        await store.close()


async def test_the_apex_added_to_a_legacy_wildcard_gets_the_same_label(
    upgraded: tuple[Broker, LabelKey],
) -> None:
    broker, _ = upgraded
    apex = await broker.issue_certificate("s.example.com", "bob", challenge=ChallengeType.DNS_01)
    assert apex.delegation_label == delegation.legacy_label("s.example.com")


async def test_the_wildcard_added_to_a_legacy_name_gets_the_same_label(
    upgraded: tuple[Broker, LabelKey],
) -> None:
    broker, _ = upgraded
    wildcard = await broker.issue_certificate("*.t.example.com", "alice")
    assert wildcard.delegation_label == delegation.legacy_label("t.example.com")


async def test_another_app_neither_joins_nor_inherits_a_legacy_label(
    upgraded: tuple[Broker, LabelKey],
) -> None:
    broker, labels = upgraded
    with pytest.raises(FailedPrecondition):
        await broker.issue_certificate("*.t.example.com", "mallory")
    fresh = await broker.issue_certificate("*.u.example.com", "mallory")  # no sibling
    assert fresh.delegation_label == labels.label("mallory", "*.u.example.com")
