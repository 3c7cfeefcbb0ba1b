"""Chain checks for the ACME tests (cryptography's own path validation)."""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store


def verify_chain(chain_pem: str, root_pem: bytes, name: str) -> list[x509.Certificate]:
    """Validate ``chain_pem`` (leaf first) for ``name`` against ``root_pem``; return the path."""
    certs = x509.load_pem_x509_certificates(chain_pem.encode())
    root = x509.load_pem_x509_certificate(root_pem)
    verifier = (
        PolicyBuilder()
        .store(Store([root]))
        .time(dt.datetime.now(dt.UTC))
        .build_server_verifier(x509.DNSName(name))
    )
    return verifier.verify(certs[0], certs[1:])


def leaf_serial(chain_pem: str) -> int:
    return x509.load_pem_x509_certificates(chain_pem.encode())[0].serial_number
