"""DNS-01 by delegation: the one record a customer creates, once, and where it points.

Why delegation: Let's Encrypt's pending authorizations live one hour (the
45-day profile), so asking a customer for a fresh TXT value at every order
and renewal cannot work. Instead the customer points ``_acme-challenge.<base>``
at a name in a zone the broker controls (``CERTBROKER_DNS01_ZONE``), once::

    _acme-challenge.example.com. CNAME <label>.<dns01 zone>.

and the broker writes the challenge TXT values at ``<label>.<dns01 zone>`` by
RFC 2136 update for every issuance and renewal (``certbroker.acme.dns01``).
The CA follows the CNAME (RFC 8555 §8.4 allows it).

The label is bound to its owner. It is the first 20 base32 characters (100
bits) of HMAC-SHA256, under a secret only the broker holds, over the app and
the base name (the domain without ``*.``, lower-case A-labels). Why:

- *Bound to the app.* A CNAME is an authorisation the customer gave to one
  tenant. Were the label a function of the name alone, once the customer of
  app ``alice`` had delegated ``_acme-challenge.w.example`` any other app could
  ask for ``*.w.example`` (or for ``w.example`` after alice left) and the
  broker would write that app's TXT values where the CNAME points: a
  certificate for a name its owner never gave it. With the app in the MAC,
  another app, or the same name after it changed owner, gets another label:
  its TXT values go to its own label, the customer's CNAME still points at the
  old one, the CA finds nothing, and the broker asks for the new record
  (``ACTION_REQUIRED``) without ordering.
- *Keyed.* The CNAME target is public in DNS; without the secret nobody can
  compute the label of a guessed (app, name), so the record reveals nothing
  about which tenant it serves, and labels cannot be precomputed.
- *Stored with the domain.* The label is computed once, when the domain is
  added, and travels with the record (``Domain.delegation_label``) to the
  scheduler's delegation check and the TXT writes. The secret lives in the
  store, sealed with the KEK (``certbroker.store.delegation_secret``), so every
  replica and a restore derive the same labels.
- *Legacy labels.* Brokers before this change used SHA-256 of the base name
  alone (``legacy_label``). Migration 003 stored that label on every DNS-01
  domain that existed then, so customers' records keep working for their
  current owner; a new domain never gets a legacy label.

A wildcard and its apex (which share one ``_acme-challenge.<base>``) share one
label when they belong to one app (``certbroker.tenancy`` keeps a wildcard, its
apex and the names directly under it with one app). Pure functions, no I/O.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from typing import Final

CHALLENGE_LABEL: Final = "_acme-challenge"
SECRET_BYTES: Final = 32
_LABEL_CHARS: Final = 20
_LEGACY_PREFIX: Final = b"certbroker-dns01:"
_MAC_PREFIX: Final = b"certbroker-dns01-label v2\x00"
_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


def base_name(domain: str) -> str:
    """``*.example.com`` → ``example.com``; the name validated for a wildcard (RFC 8555 §7.1.3)."""
    name = domain.strip().rstrip(".").lower()
    return name[2:] if name.startswith("*.") else name


def _encode(digest: bytes) -> str:
    return base64.b32encode(digest).decode("ascii")[:_LABEL_CHARS].lower()


def legacy_label(domain: str) -> str:
    """The label brokers before owner binding derived from the name alone.

    Only migration 003 computes it, for domains that existed then; never used
    for a new domain (anyone can compute it, for any app).
    """
    return _encode(hashlib.sha256(_LEGACY_PREFIX + base_name(domain).encode("ascii")).digest())


class LabelKey:
    """Derives owner-bound labels from the broker's secret; never prints the secret."""

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        if len(secret) != SECRET_BYTES:
            raise ValueError(f"the delegation secret must be {SECRET_BYTES} bytes")
        self._secret = secret

    def __repr__(self) -> str:
        return "LabelKey(<secret>)"

    def label(self, app: str, domain: str) -> str:
        """The label of ``app``'s delegation for ``domain`` (base32, lower-case, 20 characters).

        NUL separates the parts: neither an app name nor a domain name holds one,
        so no two (app, name) pairs feed the MAC the same bytes.
        """
        message = _MAC_PREFIX + app.encode("utf-8") + b"\x00" + base_name(domain).encode("ascii")
        return _encode(hmac.new(self._secret, message, hashlib.sha256).digest())


def check_label(label: str) -> str:
    """``label`` if it is one DNS label (LDH, 1-63 characters); ``ValueError`` otherwise.

    The TXT writes go to ``<label>.<zone>``: a label with a dot would write
    somewhere else in the zone.
    """
    if not _LABEL.fullmatch(label):
        raise ValueError(f"{label!r} is not a delegation label")
    return label


def challenge_name(domain: str) -> str:
    """``_acme-challenge.<base>``, where the customer creates the CNAME (no trailing dot)."""
    return f"{CHALLENGE_LABEL}.{base_name(domain)}"


def target(label: str, zone: str) -> str:
    """``<label>.<zone>``: where the CNAME points and the broker writes TXT (no trailing dot)."""
    return f"{check_label(label)}.{zone.strip().rstrip('.').lower()}"


def record(domain: str, label: str, zone: str) -> str:
    """The record to create, in zone-file form, ready to paste."""
    return f"{challenge_name(domain)}. CNAME {target(label, zone)}."


def finding(domain: str, zone: str, found: str | None) -> str:
    """What is wrong with ``_acme-challenge.<base>``, given its CNAME target ``found``."""
    if found is None:
        return f"{challenge_name(domain)} has no CNAME record"
    if found.endswith("." + zone.strip().rstrip(".").lower()):
        # Another label in our zone: a record made for an earlier owner of this name.
        return f"{challenge_name(domain)} is a CNAME to {found}., not to this domain's record"
    return f"{challenge_name(domain)} is a CNAME to {found}., not to the broker's zone"


def instruction(domain: str, label: str, zone: str, found: str | None) -> str:
    """What the customer must do, for ``retry.last_error_message``.

    ``found`` is the current CNAME target of ``_acme-challenge.<base>`` (None: no CNAME).
    """
    what = "validate" if not domain.startswith("*.") else "issue the wildcard certificate for"
    return (
        f"{finding(domain, zone, found)}. To let the broker {what} {domain} with DNS-01, "
        f"create this record once (it also covers every renewal): {record(domain, label, zone)}"
    )
