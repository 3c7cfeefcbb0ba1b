"""The ``action_required`` texts after a CA refusal."""

from __future__ import annotations

from certbroker.fixes import ca_refusal


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
