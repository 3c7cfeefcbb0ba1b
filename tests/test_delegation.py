"""The one-time DNS-01 delegation: a label bound to its owner, the record ready to paste."""

from __future__ import annotations

import re

import pytest

from certbroker import delegation
from certbroker.delegation import LabelKey

KEY = LabelKey(bytes(range(32)))


def test_the_legacy_label_never_changes() -> None:
    # A fixed value: migration 003 stores it for domains that existed before owner binding.
    assert delegation.legacy_label("example.com") == "armfqahhx7pvoanywc4m"
    assert delegation.legacy_label("*.Example.COM.") == "armfqahhx7pvoanywc4m"


def test_the_label_is_bound_to_the_app_and_the_secret() -> None:
    alice = KEY.label("alice", "*.w.example.com")
    assert re.fullmatch(r"[a-z2-7]{20}", alice)
    assert KEY.label("alice", "*.w.example.com") == alice  # stable: the customer's record holds
    assert KEY.label("mallory", "*.w.example.com") != alice
    assert LabelKey(bytes(32)).label("alice", "*.w.example.com") != alice
    assert alice != delegation.legacy_label("w.example.com")
    # the app and the name cannot be shifted into each other
    assert KEY.label("a", "b.example.com") != KEY.label("ab", "example.com")


def test_wildcard_and_apex_of_one_app_share_one_delegation() -> None:
    assert KEY.label("shop", "*.example.com") == KEY.label("shop", "example.com")
    assert KEY.label("shop", "Example.COM.") == KEY.label("shop", "example.com")
    assert delegation.challenge_name("*.example.com") == "_acme-challenge.example.com"


def test_different_names_get_different_labels() -> None:
    labels = {KEY.label("shop", f"n{i}.example.com") for i in range(2000)}
    assert len(labels) == 2000


def test_the_secret_is_never_printed() -> None:
    assert "0001" not in repr(KEY) and str(bytes(range(32))) not in repr(KEY)
    with pytest.raises(ValueError, match="32 bytes"):
        LabelKey(b"short")


def test_record_is_zone_file_text_ready_to_paste() -> None:
    label = KEY.label("shop", "example.com")
    assert delegation.target(label, "Acme.Platform.NET.") == f"{label}.acme.platform.net"
    assert delegation.record("*.example.com", label, "acme.platform.net") == (
        f"_acme-challenge.example.com. CNAME {label}.acme.platform.net."
    )


@pytest.mark.parametrize("bad", ["", "a.b", "-a", "a" * 64, "A_B", "x\n"])
def test_a_label_is_one_dns_label(bad: str) -> None:
    with pytest.raises(ValueError, match="not a delegation label"):
        delegation.target(bad, "acme.platform.net")


def test_instruction_says_what_is_there_and_what_to_create() -> None:
    label = KEY.label("shop", "example.com")
    record = delegation.record("*.example.com", label, "acme.platform.net")
    missing = delegation.instruction("*.example.com", label, "acme.platform.net", None)
    assert "_acme-challenge.example.com has no CNAME record" in missing
    assert missing.endswith(record)
    wrong = delegation.instruction("www.example.com", label, "acme.platform.net", "old.dns.example")
    assert "is a CNAME to old.dns.example., not to the broker's zone" in wrong
    assert delegation.record("www.example.com", label, "acme.platform.net") in wrong
    earlier = delegation.instruction(
        "*.example.com", label, "acme.platform.net", "otherlabel.acme.platform.net"
    )
    assert "not to this domain's record" in earlier
    assert earlier.endswith(record)
