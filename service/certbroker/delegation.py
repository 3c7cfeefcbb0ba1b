"""DNS-01 by delegation: the one record a customer creates, once, and where it points.

Why delegation: Let's Encrypt's pending authorizations live one hour (the
45-day profile), so asking a customer for a fresh TXT value at every order
and renewal cannot work. Instead the customer points ``_acme-challenge.<base>``
at a name in a zone the broker controls (``CERTBROKER_DNS01_ZONE``), once::

    _acme-challenge.example.com. CNAME <label>.<dns01 zone>.

and the broker writes the challenge TXT values at ``<label>.<dns01 zone>`` by
RFC 2136 update for every issuance and renewal (``certbroker.acme.dns01``).
The CA follows the CNAME (RFC 8555 §8.4 allows it).

The label is derived, not stored: the first 20 base32 characters (100 bits) of
SHA-256 over the base name (the domain without ``*.``, lower-case A-labels).
So it never changes, needs no column, is the same on every broker replica and
after a restore, and ``*.example.com`` and ``example.com`` (which share one
``_acme-challenge.example.com``) share one delegation. Pure functions, no I/O.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Final

CHALLENGE_LABEL: Final = "_acme-challenge"
_LABEL_CHARS: Final = 20
_PREFIX: Final = b"certbroker-dns01:"


def base_name(domain: str) -> str:
    """``*.example.com`` → ``example.com``; the name validated for a wildcard (RFC 8555 §7.1.3)."""
    name = domain.strip().rstrip(".").lower()
    return name[2:] if name.startswith("*.") else name


def label(domain: str) -> str:
    """The stable label of ``domain``'s delegation target (base32, lower-case, 20 characters)."""
    digest = hashlib.sha256(_PREFIX + base_name(domain).encode("ascii")).digest()
    return base64.b32encode(digest).decode("ascii")[:_LABEL_CHARS].lower()


def challenge_name(domain: str) -> str:
    """``_acme-challenge.<base>``, where the customer creates the CNAME (no trailing dot)."""
    return f"{CHALLENGE_LABEL}.{base_name(domain)}"


def target(domain: str, zone: str) -> str:
    """``<label>.<zone>``: where the CNAME points and the broker writes TXT (no trailing dot)."""
    return f"{label(domain)}.{zone.strip().rstrip('.').lower()}"


def record(domain: str, zone: str) -> str:
    """The record to create, in zone-file form, ready to paste."""
    return f"{challenge_name(domain)}. CNAME {target(domain, zone)}."


def instruction(domain: str, zone: str, found: str | None) -> str:
    """What the customer must do, for ``retry.last_error_message``.

    ``found`` is the current CNAME target of ``_acme-challenge.<base>`` (None: no CNAME).
    """
    what = "validate" if not domain.startswith("*.") else "issue the wildcard certificate for"
    lead = (
        f"{challenge_name(domain)} has no CNAME record"
        if found is None
        else f"{challenge_name(domain)} is a CNAME to {found}., not to the broker's zone"
    )
    return (
        f"{lead}. To let the broker {what} {domain} with DNS-01, create this record once "
        f"(it also covers every renewal): {record(domain, zone)}"
    )
