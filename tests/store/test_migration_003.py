"""Migration 003: existing DNS-01 domains keep the delegation label their customers use."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from certbroker import delegation
from certbroker.store.sqlite import SqliteStore
from tests.store.legacy import LegacyDomain, schema_002_database

T0 = datetime(2026, 1, 1, tzinfo=UTC)


async def test_existing_dns01_domains_keep_the_legacy_label(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    schema_002_database(
        path,
        [
            LegacyDomain("*.w.example.com", "alice", "DNS_01", T0, include_apex=True),
            LegacyDomain("plain.example.com", "alice", "DNS_01", T0),
            LegacyDomain("www.example.com", "alice", "HTTP_01", T0),
        ],
    )
    store = await SqliteStore.open(str(path))
    try:
        wildcard = await store.get_domain("*.w.example.com")
        plain = await store.get_domain("plain.example.com")
        http = await store.get_domain("www.example.com")
    finally:
        await store.close()
    assert wildcard is not None and plain is not None and http is not None
    assert wildcard.delegation_label == delegation.legacy_label("w.example.com")
    assert wildcard.include_apex and wildcard.app == "alice"  # the rest is untouched
    assert plain.delegation_label == delegation.legacy_label("plain.example.com")
    assert http.delegation_label == ""  # HTTP-01 needs none


async def test_of_a_name_and_its_wildcard_in_two_apps_only_the_older_keeps_it(
    tmp_path: Path,
) -> None:
    """The later claim may be the very cross-app claim owner binding stops: no legacy label."""
    path = tmp_path / "old.sqlite3"
    schema_002_database(
        path,
        [
            LegacyDomain("v.example.com", "alice", "DNS_01", T0),
            LegacyDomain("*.v.example.com", "mallory", "DNS_01", T0 + timedelta(days=3)),
            LegacyDomain("*.u.example.com", "alice", "DNS_01", T0 + timedelta(days=1)),
            LegacyDomain("u.example.com", "mallory", "DNS_01", T0 + timedelta(days=2)),
            # the same app's pair shares the label, as before
            LegacyDomain("s.example.com", "bob", "DNS_01", T0),
            LegacyDomain("*.s.example.com", "bob", "DNS_01", T0 + timedelta(days=1)),
        ],
    )
    store = await SqliteStore.open(str(path))
    try:
        labels = {
            name: d.delegation_label
            for name in (
                "v.example.com",
                "*.v.example.com",
                "*.u.example.com",
                "u.example.com",
                "s.example.com",
                "*.s.example.com",
            )
            if (d := await store.get_domain(name)) is not None
        }
    finally:
        await store.close()
    assert labels == {
        "v.example.com": delegation.legacy_label("v.example.com"),
        "*.v.example.com": "",
        "*.u.example.com": delegation.legacy_label("u.example.com"),
        "u.example.com": "",
        "s.example.com": delegation.legacy_label("s.example.com"),
        "*.s.example.com": delegation.legacy_label("s.example.com"),
    }
