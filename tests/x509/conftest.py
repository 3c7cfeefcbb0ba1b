"""Shared fixtures: one test PKI and one validator per session (keys are the slow part)."""

from __future__ import annotations

import pytest

from certbroker.x509 import CustomCertificateValidator
from tests.pki import Issued, TestPKI


@pytest.fixture(scope="session")
def pki() -> TestPKI:
    return TestPKI()


@pytest.fixture(scope="session")
def other_pki() -> TestPKI:
    """A second hierarchy the validator does not trust."""
    return TestPKI("Other", key_slot=1)


@pytest.fixture(scope="session")
def validator(pki: TestPKI) -> CustomCertificateValidator:
    return CustomCertificateValidator([pki.root.cert])


@pytest.fixture(scope="session")
def leaf(pki: TestPKI) -> Issued:
    return pki.leaf("www.example.com", "example.com")
