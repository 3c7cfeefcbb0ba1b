"""Custom certificates: parse uploads, validate chains, describe certificates, seal keys.

The public surface is re-exported here; see each module for the reasons behind it.
"""

from certbroker.x509.info import certificate_info, key_algorithm_name
from certbroker.x509.intake import (
    MAX_INPUT_BYTES,
    PrivateKey,
    Reason,
    parse_certificates,
    parse_private_key,
)
from certbroker.x509.sealing import KekError, KeySealer
from certbroker.x509.validate import (
    CustomCertificateValidator,
    TrustStoreError,
    ValidatedBundle,
)

__all__ = [
    "MAX_INPUT_BYTES",
    "CustomCertificateValidator",
    "KekError",
    "KeySealer",
    "PrivateKey",
    "Reason",
    "TrustStoreError",
    "ValidatedBundle",
    "certificate_info",
    "key_algorithm_name",
    "parse_certificates",
    "parse_private_key",
]
