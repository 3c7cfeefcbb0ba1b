"""Hand-built model values for the pure state-machine tests (lifecycle, the doctor's schedule).

One ``www.example.com`` domain created a day before ``NOW`` and certificates
for it, so the tests that feed ``certbroker.lifecycle`` start from the same
values and differ only in the changes they name.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from itertools import count

from certbroker import lifecycle as lc
from certbroker.model import CertificateInfo, Domain, LetsEncryptState, Source

NOW = datetime(2026, 4, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
_ids = count(1)


def cert(
    not_before: datetime,
    lifetime: timedelta = timedelta(days=90),
    *,
    received_at: datetime | None = None,
) -> CertificateInfo:
    """A certificate for ``www.example.com`` valid from ``not_before``, with a unique id."""
    cert_id = next(_ids)
    return CertificateInfo(
        id=cert_id,
        sans=("www.example.com",),
        subject="CN=www.example.com",
        issuer="CN=Test",
        serial=f"{cert_id:x}",
        not_before=not_before,
        not_after=not_before + lifetime,
        sha256_fingerprint=f"{cert_id:064x}",
        chain_pem="",
        key_algorithm="ECDSA_P256",
        received_at=received_at,
    )


def domain(**changes: object) -> Domain:
    """A Let's Encrypt domain of app ``shop``, pending DNS since ``NOW - DAY``, with ``changes``.

    As given: not settled (``settled`` is what the store would hold).
    """
    base = Domain(
        name="www.example.com",
        app="shop",
        letsencrypt_enabled=True,
        le_state=LetsEncryptState.PENDING_DNS,
        serving=Source.NONE,
        created_at=NOW - DAY,
        updated_at=NOW - DAY,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def settled(**changes: object) -> Domain:
    """``domain(**changes)`` settled at ``NOW`` (what it serves, its state)."""
    return lc.settle(domain(**changes), NOW)
