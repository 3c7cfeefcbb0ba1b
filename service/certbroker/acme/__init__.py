"""ACME: the issuer (orders → certificates), the HTTP-01 responder, keys/CSRs, problems."""

from certbroker.acme.http01 import Http01Responder
from certbroker.acme.issuer import (
    AccountStore,
    AcmeIssuer,
    ChallengeResponder,
    IssuedCertificate,
    MemoryAccountStore,
)
from certbroker.acme.keys import generate_private_key, make_csr
from certbroker.acme.problems import AcmeProblem, classify

__all__ = [
    "AccountStore",
    "AcmeIssuer",
    "AcmeProblem",
    "ChallengeResponder",
    "Http01Responder",
    "IssuedCertificate",
    "MemoryAccountStore",
    "classify",
    "generate_private_key",
    "make_csr",
]
