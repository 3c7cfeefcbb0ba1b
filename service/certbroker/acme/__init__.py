"""ACME: the issuer (orders → certificates), HTTP-01 and DNS-01 responders, keys/CSRs, problems."""

from certbroker.acme.dns01 import Dns01Error, Dns01Updater, TsigKey
from certbroker.acme.http01 import Http01Responder
from certbroker.acme.issuer import (
    AccountStore,
    AcmeIssuer,
    ChallengeResponder,
    Dns01Responder,
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
    "Dns01Error",
    "Dns01Responder",
    "Dns01Updater",
    "Http01Responder",
    "IssuedCertificate",
    "MemoryAccountStore",
    "TsigKey",
    "classify",
    "generate_private_key",
    "make_csr",
]
