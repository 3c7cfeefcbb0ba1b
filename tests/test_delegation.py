"""The one-time DNS-01 delegation: a stable label per base name, the record ready to paste."""

from __future__ import annotations

import re

from certbroker import delegation


def test_the_label_is_derived_and_never_changes() -> None:
    # A fixed value: a change here would orphan every customer's delegation.
    assert delegation.label("example.com") == "armfqahhx7pvoanywc4m"
    assert re.fullmatch(r"[a-z2-7]{20}", delegation.label("shop.example.org"))


def test_wildcard_and_apex_share_one_delegation() -> None:
    assert delegation.label("*.example.com") == delegation.label("example.com")
    assert delegation.challenge_name("*.example.com") == "_acme-challenge.example.com"
    assert delegation.label("Example.COM.") == delegation.label("example.com")


def test_different_names_get_different_labels() -> None:
    labels = {delegation.label(f"n{i}.example.com") for i in range(2000)}
    assert len(labels) == 2000
    assert delegation.label("a.example.com") != delegation.label("example.com")


def test_record_is_zone_file_text_ready_to_paste() -> None:
    label = delegation.label("example.com")
    assert delegation.target("*.example.com", "Acme.Platform.NET.") == f"{label}.acme.platform.net"
    assert delegation.record("*.example.com", "acme.platform.net") == (
        f"_acme-challenge.example.com. CNAME {label}.acme.platform.net."
    )


def test_instruction_says_what_is_there_and_what_to_create() -> None:
    record = delegation.record("*.example.com", "acme.platform.net")
    missing = delegation.instruction("*.example.com", "acme.platform.net", None)
    assert "_acme-challenge.example.com has no CNAME record" in missing
    assert missing.endswith(record)
    wrong = delegation.instruction("www.example.com", "acme.platform.net", "old.dns.example")
    assert "is a CNAME to old.dns.example., not to the broker's zone" in wrong
    assert delegation.record("www.example.com", "acme.platform.net") in wrong
