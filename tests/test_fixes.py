"""The ``action_required`` texts: exact records and things to do."""

from __future__ import annotations

from certbroker.dns import CaaReason, CaaResult
from certbroker.fixes import ca_refusal, caa_record


def forbidding(record: str, at: str = "example.com") -> CaaResult:
    return CaaResult(False, record, at, CaaReason.FORBIDS, "forbids")


def test_the_record_to_add_goes_where_the_caa_set_decided() -> None:
    found = forbidding('example.com. CAA 0 issue "other.example"')
    assert caa_record(found, "letsencrypt.org", wildcard=False) == (
        'example.com. CAA 0 issue "letsencrypt.org"'
    )


def test_a_wildcard_gets_issuewild_only_where_issuewild_decides() -> None:
    wild = forbidding('example.com. CAA 0 issuewild "other.example"')
    assert "issuewild" in caa_record(wild, "letsencrypt.org", wildcard=True)
    plain = forbidding('example.com. CAA 0 issue "other.example"')
    assert 'CAA 0 issue "letsencrypt.org"' in caa_record(plain, "letsencrypt.org", wildcard=True)


def test_an_unknown_critical_tag_must_be_removed() -> None:
    found = forbidding('example.com. CAA 128 tbs "x"')
    assert caa_record(found, "letsencrypt.org", wildcard=False).startswith(
        'remove the critical CAA record(s) example.com. CAA 128 tbs "x"'
    )


def test_ca_refusals_name_the_domain_and_quote_the_ca() -> None:
    text = ca_refusal(
        "www.example.com", "ACME_REJECTED_IDENTIFIER", "policy forbids", "letsencrypt.org",
        dns01=False, base="www.example.com",
    )  # fmt: skip
    assert "www.example.com" in text and "policy forbids" in text
    dns01 = ca_refusal(
        "*.example.com", "ACME_UNAUTHORIZED", "no TXT", "letsencrypt.org",
        dns01=True, base="example.com",
    )  # fmt: skip
    assert "_acme-challenge" in dns01
    other = ca_refusal(
        "x.example", "ACME_BAD_CSR", "", "letsencrypt.org", dns01=False, base="x.example"
    )
    assert "ACME_BAD_CSR" in other and "operator" in other
