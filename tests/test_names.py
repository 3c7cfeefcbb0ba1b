"""Names at the edge: one canonical form, and every name no certificate can cover refused."""

from __future__ import annotations

import pytest

from certbroker import names
from certbroker.errors import InvalidArgument
from certbroker.names import normalise_domain, registered_domain


def _refused(raw: str, field: str = "domain") -> InvalidArgument:
    with pytest.raises(InvalidArgument) as caught:
        normalise_domain(raw, field)
    error = caught.value
    assert error.violations, "a refusal names at least one field violation"
    assert all(v.field == field for v in error.violations)
    return error


def _descriptions(error: InvalidArgument) -> str:
    return " | ".join(v.description for v in error.violations)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("example.com", "example.com"),
        ("WWW.Example.COM.", "www.example.com"),
        ("  app.example.com  ", "app.example.com"),
        ("*.Example.com", "*.example.com"),
        ("bücher.de", "xn--bcher-kva.de"),
        ("BÜCHER.de", "xn--bcher-kva.de"),
        ("*.bücher.de", "*.xn--bcher-kva.de"),
        ("xn--bcher-kva.de", "xn--bcher-kva.de"),
        ("a-b.example.co.uk", "a-b.example.co.uk"),
        ("123.example.com", "123.example.com"),
    ],
)
def test_accepted_names_are_normalised(raw: str, expected: str) -> None:
    assert normalise_domain(raw) == expected


@pytest.mark.parametrize("raw", ["", "   ", "."])
def test_empty_is_refused(raw: str) -> None:
    error = _refused(raw)
    assert error.reason == "DOMAIN_INVALID"
    assert _descriptions(error) == "must not be empty"


def test_the_field_name_is_the_callers() -> None:
    error = _refused("", field="domains[2]")
    assert error.violations[0].field == "domains[2]"
    assert str(error).startswith("domains[2]: ")


def test_a_name_of_253_characters_is_accepted_and_254_refused() -> None:
    labels = ["a" * 63, "b" * 63, "c" * 63, "d" * 57, "com"]
    name = ".".join(labels)
    assert len(name) == 253
    assert normalise_domain(name) == name
    assert normalise_domain(name + ".") == name  # the trailing dot does not count
    longer = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 58, "com"])
    assert len(longer) == 254
    error = _refused(longer)
    assert error.reason == "DOMAIN_INVALID"
    assert _descriptions(error) == "is 254 characters, over 253"


def test_a_label_of_63_characters_is_accepted_and_64_refused() -> None:
    assert normalise_domain("a" * 63 + ".com") == "a" * 63 + ".com"
    error = _refused("a" * 64 + ".com")
    assert error.reason == "DOMAIN_INVALID"
    assert "is 64 characters, over 63" in _descriptions(error)


def test_an_idna_label_over_63_after_punycode_is_refused() -> None:
    error = _refused("ü" * 60 + ".de")  # 60 characters, but its A-label is longer than 63
    assert "is not valid IDNA" in _descriptions(error)
    assert "too long" in _descriptions(error)


def test_a_unicode_label_over_63_characters_is_refused_before_idna() -> None:
    error = _refused("ü" * 70 + ".de")
    assert "is 70 characters, over 63" in _descriptions(error)
    assert "IDNA" not in _descriptions(error)


@pytest.mark.parametrize("raw", ["a..example.com", ".example.com", "example.com.."])
def test_an_empty_label_is_refused(raw: str) -> None:
    error = _refused(raw)
    assert error.reason == "DOMAIN_INVALID"
    assert "has an empty label (two dots in a row)" in _descriptions(error)


@pytest.mark.parametrize(
    ("raw", "label"),
    [("a_b.example.com", "a_b"), ("exa mple.com", "exa mple"), ("ex!ample.com", "ex!ample")],
)
def test_characters_outside_ldh_are_refused(raw: str, label: str) -> None:
    error = _refused(raw)
    assert error.reason == "DOMAIN_INVALID"
    assert f"label {label!r} has characters outside letters, digits and hyphens" in _descriptions(
        error
    )


@pytest.mark.parametrize(
    ("raw", "label"), [("-app.example.com", "-app"), ("app-.example.com", "app-")]
)
def test_a_leading_or_trailing_hyphen_is_refused(raw: str, label: str) -> None:
    error = _refused(raw)
    assert f"label {label!r} starts or ends with a hyphen" in _descriptions(error)


@pytest.mark.parametrize(
    "raw", ["192.0.2.10", "192.0.2.10.", "::1", "2001:db8::1", "[2001:db8::1]"]
)
def test_ip_addresses_are_refused(raw: str) -> None:
    error = _refused(raw)
    assert error.reason == "DOMAIN_INVALID"
    assert "is an IP address; certificates here are for domain names" in _descriptions(error)


@pytest.mark.parametrize("raw", ["a.*.example.com", "*.*.example.com", "www.example.*"])
def test_a_wildcard_not_leftmost_is_refused(raw: str) -> None:
    error = _refused(raw)
    assert error.reason == "DOMAIN_INVALID"
    assert "a wildcard must be the whole leftmost label (like *.example.com)" in _descriptions(
        error
    )


@pytest.mark.parametrize(
    ("raw", "label"),
    [("*app.example.com", "*app"), ("a*.example.com", "a*"), ("**.example.com", "**")],
)
def test_a_partial_wildcard_label_is_refused(raw: str, label: str) -> None:
    error = _refused(raw)
    assert f"label {label!r}: a wildcard must be the whole leftmost label" in _descriptions(error)


def test_every_problem_is_named_at_once() -> None:
    error = _refused("-a.b_c..example.com")
    text = _descriptions(error)
    assert len(error.violations) == 3
    assert "starts or ends with a hyphen" in text
    assert "outside letters, digits and hyphens" in text
    assert "empty label" in text


@pytest.mark.parametrize(
    ("raw", "suffix"),
    [
        ("com", "com"),
        ("co.uk", "co.uk"),
        ("*.co.uk", "co.uk"),
        ("*.com", "com"),
        ("CO.UK.", "co.uk"),
    ],
)
def test_public_suffixes_are_refused(raw: str, suffix: str) -> None:
    error = _refused(raw)
    assert error.reason == "DOMAIN_PUBLIC_SUFFIX"
    assert _descriptions(error) == f"{suffix} is a public suffix (like co.uk); add a name under it"


def test_invalid_idna_is_refused() -> None:
    error = _refused("a\u2488.example.com")  # U+2488 DIGIT ONE FULL STOP is disallowed
    assert error.reason == "DOMAIN_INVALID"
    assert "is not valid IDNA" in _descriptions(error)


# Boulder (Let's Encrypt) refuses these names for good (errMalformedIDN,
# errInvalidRLDH): accepting them would mean an order that can never succeed,
# retried once a day forever.
@pytest.mark.parametrize(
    ("raw", "text"),
    [
        ("xn--zz.example.com", "label 'xn--zz' is not valid IDNA"),
        ("www.xn--a-ecp.com", "label 'xn--a-ecp' is not valid IDNA"),
        ("ab--cd.example.com", "hyphens in the third and fourth positions are reserved"),
        ("bq---x.example.com", "hyphens in the third and fourth positions are reserved"),
    ],
)
def test_names_the_ca_can_never_issue_for_are_refused(raw: str, text: str) -> None:
    error = _refused(raw)
    assert error.reason == "DOMAIN_INVALID"
    assert text in _descriptions(error)


def test_valid_a_labels_and_inner_double_hyphens_pass() -> None:
    assert normalise_domain("xn--bcher-kva.example.com") == "xn--bcher-kva.example.com"
    assert normalise_domain("a-b--c.example.com") == "a-b--c.example.com"


@pytest.mark.parametrize(
    ("name", "registered"),
    [
        ("www.example.co.uk", "example.co.uk"),
        ("*.example.com", "example.com"),
        ("a.b.example.com", "example.com"),
        ("example.com", "example.com"),
        ("app.example.com", "example.com"),
    ],
)
def test_registered_domain(name: str, registered: str) -> None:
    assert registered_domain(name) == registered


def test_names_under_one_registered_domain_share_the_quota_key() -> None:
    names = ["www.example.com", "app.example.com", "example.com"]
    assert {registered_domain(normalise_domain(n)) for n in names} == {"example.com"}


@pytest.mark.parametrize(
    "raw",
    [
        "-a." * 700_000,  # ~2 MB of bad labels: once 1.4 M violations and seconds of work
        "é-é." * 50_000,
        "a" * 254,
        " " * 10 + "a" * 250 + ".com" + " " * 10,
    ],
)
def test_an_overlong_name_is_refused_by_length_before_any_idna_work(
    raw: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_idna(*_: object, **__: object) -> None:
        raise AssertionError("IDNA work on a name that is too long")

    monkeypatch.setattr(names.idna, "encode", no_idna)
    monkeypatch.setattr(names.idna, "decode", no_idna)
    monkeypatch.setattr(names, "_is_ip", no_idna)
    error = _refused(raw)
    assert error.reason == "DOMAIN_INVALID"
    [violation] = error.violations
    assert violation.description == f"is {len(raw.strip())} characters, over 253"


def test_a_253_character_name_with_blanks_and_a_trailing_dot_is_accepted() -> None:
    name = ".".join(["a" * 63] * 3 + ["b" * 57, "com"])  # 253 characters
    assert len(name) == 253
    assert normalise_domain(f"  {name}.  ") == name
