"""RFC 8659 decisions without I/O: ``parse_issue_value``, ``decide_caa``, ``caa_fix``."""

from __future__ import annotations

import pytest

from certbroker.dns import CaaRecord, caa_fix, decide_caa, parse_issue_value

LE = "letsencrypt.org"


def rec(tag: str, value: str, flags: int = 0, owner: str = "example.com.") -> CaaRecord:
    return CaaRecord(owner=owner, flags=flags, tag=tag, value=value)


@pytest.mark.parametrize(
    ("value", "issuer"),
    [
        ("letsencrypt.org", "letsencrypt.org"),
        ("  LetsEncrypt.ORG  ", "letsencrypt.org"),
        (
            "letsencrypt.org; accounturi=https://acme-v02.api.letsencrypt.org/acme/acct/1",
            "letsencrypt.org",
        ),
        ("letsencrypt.org;validationmethods=dns-01", "letsencrypt.org"),
        ("ca-1.example", "ca-1.example"),
        (";", None),
        ("", None),
        ("  ;  ", None),
        ("bad_ca.example", None),  # malformed → authorizes nobody
        ("-bad.example", None),
        ("letsencrypt.org.", None),  # not in the RFC's grammar
    ],
)
def test_parse_issue_value(value: str, issuer: str | None) -> None:
    assert parse_issue_value(value) == issuer


def test_no_records_allows() -> None:
    assert decide_caa([], LE, wildcard=False).allowed


def test_issue_naming_the_ca_allows() -> None:
    d = decide_caa([rec("issue", "other.ca"), rec("issue", LE)], LE, wildcard=False)
    assert d.allowed
    assert d.records == (rec("issue", LE),)


def test_issue_naming_another_ca_forbids() -> None:
    d = decide_caa([rec("issue", "other.ca")], LE, wildcard=False)
    assert not d.allowed
    assert [r.text() for r in d.records] == ['example.com. CAA 0 issue "other.ca"']


def test_issue_semicolon_forbids_all() -> None:
    d = decide_caa([rec("issue", ";")], LE, wildcard=False)
    assert not d.allowed
    assert "any CA" in d.why


def test_only_iodef_does_not_restrict() -> None:
    assert decide_caa([rec("iodef", "mailto:sec@example.com")], LE, wildcard=False).allowed


def test_issuewild_only_for_wildcards() -> None:
    records = [rec("issue", LE), rec("issuewild", "other.ca")]
    assert decide_caa(records, LE, wildcard=False).allowed
    assert not decide_caa(records, LE, wildcard=True).allowed


def test_wildcard_falls_back_to_issue_without_issuewild() -> None:
    assert not decide_caa([rec("issue", "other.ca")], LE, wildcard=True).allowed
    assert decide_caa([rec("issue", LE)], LE, wildcard=True).allowed


def test_issuewild_allows_wildcard_even_when_issue_forbids() -> None:
    records = [rec("issue", ";"), rec("issuewild", LE)]
    assert decide_caa(records, LE, wildcard=True).allowed
    assert not decide_caa(records, LE, wildcard=False).allowed


def test_unknown_critical_tag_forbids() -> None:
    d = decide_caa([rec("issue", LE), rec("futuretag", "x", flags=128)], LE, wildcard=False)
    assert not d.allowed
    assert "critical" in d.why


def test_unknown_non_critical_tag_is_ignored() -> None:
    assert decide_caa([rec("issue", LE), rec("futuretag", "x")], LE, wildcard=False).allowed


def test_known_critical_tag_is_fine() -> None:
    assert decide_caa([rec("issue", LE, flags=128)], LE, wildcard=False).allowed


def test_ca_identity_compared_case_insensitively() -> None:
    assert decide_caa([rec("issue", LE)], "LetsEncrypt.org.", wildcard=False).allowed


def test_record_text_escapes_quotes() -> None:
    assert rec("issue", 'a"b').text() == 'example.com. CAA 0 issue "a\\"b"'


def test_the_fix_is_the_record_to_add_where_the_set_decided() -> None:
    other = [CaaRecord("example.com.", 0, "issue", "other.example")]
    assert caa_fix("example.com", other, LE, wildcard=False) == (
        'example.com. CAA 0 issue "letsencrypt.org"'
    )
    assert caa_fix("example.com", other, LE, wildcard=True) == (
        'example.com. CAA 0 issuewild "letsencrypt.org"'
    )


def test_an_unknown_critical_tag_must_be_removed_not_outweighed() -> None:
    critical = [CaaRecord("example.com.", 128, "tbs", "x")]
    assert caa_fix("example.com", critical, LE, wildcard=False) == (
        'remove example.com. CAA 128 tbs "x"'
    )
