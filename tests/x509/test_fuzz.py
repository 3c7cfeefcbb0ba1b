"""Whatever bytes arrive, the validator answers with a bundle or InvalidArgument, nothing else.

An uncaught ValueError from a parser would become an INTERNAL gRPC error and a
500 on the dashboard; these properties keep every path through intake explicit.
"""

from __future__ import annotations

import base64

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from certbroker.errors import InvalidArgument
from certbroker.x509 import CustomCertificateValidator, ValidatedBundle
from tests.pki import NOW, Issued, TestPKI, pkcs7_bundle

DOMAIN = "www.example.com"
FUZZ = settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@st.composite
def mutated(draw: st.DrawFn, original: bytes) -> bytes:
    """One to four edits of ``original``: flips, deletions, insertions, truncation, repeats."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        operation = draw(st.sampled_from(["flip", "delete", "insert", "truncate", "repeat", "set"]))
        if operation == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif operation == "set":
            data[at] = draw(st.integers(0, 255))
        elif operation == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        elif operation == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=32))
        elif operation == "truncate":
            del data[at:]
        else:
            data[at:at] = data[at : at + draw(st.integers(1, 200))]
    return bytes(data)


def outcome(
    validator: CustomCertificateValidator, certificate: bytes, key: bytes
) -> ValidatedBundle | InvalidArgument:
    try:
        return validator.validate(DOMAIN, certificate, key, NOW)
    except InvalidArgument as error:
        assert error.violations and error.reason != InvalidArgument.reason
        assert error.violations[0].field in {"certificate", "private_key", "domain"}
        return error


@FUZZ
@given(certificate=st.binary(max_size=3000), key=st.binary(max_size=600))
def test_arbitrary_bytes(
    validator: CustomCertificateValidator, certificate: bytes, key: bytes
) -> None:
    assert isinstance(outcome(validator, certificate, key), InvalidArgument)


@FUZZ
@given(
    body=st.binary(max_size=2000),
    label=st.sampled_from(["CERTIFICATE", "PKCS7", "TRUSTED CERTIFICATE"]),
)
def test_arbitrary_der_inside_pem(
    validator: CustomCertificateValidator, leaf: Issued, body: bytes, label: str
) -> None:
    pem = (
        f"-----BEGIN {label}-----\n".encode()
        + base64.encodebytes(b"\x30" + body)
        + f"-----END {label}-----\n".encode()
    )
    assert isinstance(outcome(validator, pem, leaf.key_pem()), InvalidArgument)


@pytest.fixture(scope="module")
def forms(pki: TestPKI, leaf: Issued) -> dict[str, bytes]:
    return {
        "pem": pki.bundle(leaf, root=True, order=(1, 0, 3, 2), junk=True),
        "der": leaf.der,
        "p7b-der": pkcs7_bundle([leaf, pki.int2, pki.int1], "der"),
        "p7b-pem": pkcs7_bundle([leaf, pki.int2, pki.int1], "pem"),
    }


@FUZZ
@given(data=st.data(), form=st.sampled_from(["pem", "der", "p7b-der", "p7b-pem"]))
def test_mutated_certificates(
    validator: CustomCertificateValidator,
    leaf: Issued,
    forms: dict[str, bytes],
    data: st.DataObject,
    form: str,
) -> None:
    certificate = data.draw(mutated(forms[form]))
    outcome(validator, certificate, leaf.key_pem())


@FUZZ
@given(data=st.data(), form=st.sampled_from(["pkcs8-pem", "sec1-pem", "pkcs8-der", "sec1-der"]))
def test_mutated_keys(
    validator: CustomCertificateValidator,
    pki: TestPKI,
    leaf: Issued,
    data: st.DataObject,
    form: str,
) -> None:
    fmt = "pkcs8" if form.startswith("pkcs8") else "traditional"
    key = leaf.key_pem(fmt) if form.endswith("pem") else leaf.key_der(fmt)  # type: ignore[arg-type]
    outcome(validator, pki.bundle(leaf), data.draw(mutated(key)))


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_mutated_rsa_keys(
    validator: CustomCertificateValidator, pki: TestPKI, data: st.DataObject
) -> None:
    leaf = pki.leaf(DOMAIN, key="rsa2048")
    outcome(validator, pki.bundle(leaf), data.draw(mutated(leaf.key_der("traditional"))))
