"""ACME Renewal Information (RFC 9773): certificate ids, suggested windows, ``replaces``.

A CA that offers ARI lists ``renewalInfo`` in its directory. For each
certificate the client GETs ``<renewalInfo>/<certID>`` (no signature) and gets
a suggested window; it renews at a time it picks inside that window, asks
again when ``Retry-After`` says, and names the certificate it replaces in the
new order (``replaces``), which Let's Encrypt exempts from its rate limits.

acme 5.9 computes the id inside ``ClientV2.renewal_time`` but its
``NewOrder`` has no ``replaces`` field, so the id, the window parsing and the
order message with ``replaces`` are here, without I/O.
"""

from __future__ import annotations

import base64
import datetime as dt
import math
from datetime import timedelta
from typing import Any, Final

from cryptography import x509
from josepy import json_util

from acme import messages
from certbroker.ports import RenewalWindow

#: RFC 9773 §4.3: without a usable Retry-After, ask again in six hours.
DEFAULT_RETRY_AFTER: Final = timedelta(hours=6)
#: Bounds on how often one certificate's window is fetched, whatever the CA says.
MIN_RETRY_AFTER: Final = timedelta(minutes=1)
MAX_RETRY_AFTER: Final = timedelta(days=1)


class ARIError(ValueError):
    """The renewal information could not be read (not JSON, no window, end before start)."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def cert_id(chain_pem: str) -> str:
    """The ARI id of the chain's leaf: ``base64url(AKI keyIdentifier).base64url(serial)``.

    The serial is the DER INTEGER's content octets (two's complement, so a
    leading zero byte when the high bit is set), as RFC 9773 §4.1 says.
    """
    leaf = x509.load_pem_x509_certificate(chain_pem.encode())
    try:
        aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound:
        raise ARIError("the certificate has no Authority Key Identifier") from None
    if aki.key_identifier is None:
        raise ARIError("the Authority Key Identifier has no keyIdentifier")
    serial = leaf.serial_number
    serial_bytes = serial.to_bytes(math.ceil((serial.bit_length() + 1) / 8), "big", signed=True)
    return f"{_b64(aki.key_identifier)}.{_b64(serial_bytes)}"


def clamp_retry_after(value: timedelta | None) -> timedelta:
    """The wait before the next fetch: the CA's ``Retry-After`` within sane bounds."""
    if value is None:
        return DEFAULT_RETRY_AFTER
    return min(max(value, MIN_RETRY_AFTER), MAX_RETRY_AFTER)


def _time(value: Any, what: str) -> dt.datetime:
    if not isinstance(value, str):
        raise ARIError(f"suggestedWindow.{what} is missing")
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ARIError(f"suggestedWindow.{what} is not an RFC 3339 time: {value!r}") from None
    if parsed.tzinfo is None:
        raise ARIError(f"suggestedWindow.{what} has no time zone: {value!r}")
    return parsed.astimezone(dt.UTC)


def parse_renewal_info(body: Any, retry_after: timedelta | None) -> RenewalWindow:
    """A renewalInfo response body (decoded JSON) as a window; ``ARIError`` if unusable."""
    if not isinstance(body, dict) or not isinstance(body.get("suggestedWindow"), dict):
        raise ARIError("no suggestedWindow in the renewal information")
    window = body["suggestedWindow"]
    start, end = _time(window.get("start"), "start"), _time(window.get("end"), "end")
    if end < start:
        raise ARIError("suggestedWindow ends before it starts")
    url = body.get("explanationURL")
    return RenewalWindow(
        start=start,
        end=end,
        retry_after=clamp_retry_after(retry_after),
        explanation_url=url if isinstance(url, str) else "",
    )


class NewOrderReplacing(messages.NewOrder):
    """``NewOrder`` with RFC 9773's ``replaces`` (the ARI id of the certificate being renewed)."""

    replaces: str | None = json_util.field("replaces", omitempty=True)


def new_order_body(identifiers: list[messages.Identifier], replaces: str) -> messages.NewOrder:
    """The newOrder payload; ``replaces`` only when non-empty (omitted, not sent as null)."""
    if replaces:
        return NewOrderReplacing(identifiers=identifiers, replaces=replaces)
    return messages.NewOrder(identifiers=identifiers)
