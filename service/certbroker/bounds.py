"""Every limit on what a caller may send, in one place, checked before the work it costs.

Why a module of its own: an unbounded field is a lever one caller can use to
stall every other caller, because the servicer runs on one event loop. A 2 MB
domain used to cost seconds of IDNA work and a 48 MB error message; 200,000
watch filters stalled every RPC for seconds. The rule here is cheap checks
(lengths and counts) first, parsing second, and refusals that are small.

Two layers:

* gRPC itself refuses a request larger than :data:`MAX_RECEIVE_MESSAGE_BYTES`
  before any of our code runs; the caller gets ``RESOURCE_EXHAUSTED`` from the
  transport (that is gRPC's own behaviour, documented in the README).
* Everything under that limit but over one of ours is ``INVALID_ARGUMENT`` with
  a field violation naming the field, the size and the limit, never the input.
"""

from __future__ import annotations

from collections.abc import Sequence, Sized
from typing import Final

from certbroker.errors import FieldViolation, InvalidArgument

#: Largest uploaded certificate or key (``x509.intake.MAX_INPUT_BYTES`` is this).
#: A leaf with a few intermediates is 5 to 10 KiB of PEM.
MAX_UPLOAD_FIELD_BYTES: Final = 64 * 1024

#: Largest request gRPC accepts: UploadCustom carries two fields of at most
#: ``MAX_UPLOAD_FIELD_BYTES`` each; the rest is headroom for the domain, the app
#: and protobuf framing, so a somewhat oversized upload field still reaches the
#: intake check and gets its precise ``INPUT_TOO_LARGE`` violation.
MAX_RECEIVE_MESSAGE_BYTES: Final = 2 * MAX_UPLOAD_FIELD_BYTES + 128 * 1024  # 256 KiB

#: Largest reply the broker sends: gRPC clients refuse more than 4 MiB by default,
#: so a bigger reply could never be read anyway. ListDomains pages stop well below
#: it (:data:`MAX_PAGE_BYTES`).
MAX_SEND_MESSAGE_BYTES: Final = 4 * 1024 * 1024

#: A ListDomains page holds at most this many encoded bytes (a domain with two
#: certificates and their chains is ~10 KiB, so 1,000 of them would not fit a reply).
MAX_PAGE_BYTES: Final = 2 * 1024 * 1024

#: WatchStatus ``apps`` / ``domains`` entries: a router filtering more names than
#: this should watch everything and filter locally.
MAX_FILTER_ENTRIES: Final = 1000

#: Characters of non-ASCII WatchStatus filter names, summed over the request. Such a
#: name costs ~2.5 µs per character of IDNA work (an ASCII one ~0.06 µs), and the
#: broker only ever returns A-labels (``xn--``), which a router filters on.
MAX_FILTER_IDN_CHARACTERS: Final = 1024

#: A page token this server issues encodes one domain name (at most 253 characters),
#: so anything longer is not one of ours; refused before base64 decoding.
MAX_PAGE_TOKEN_LENGTH: Final = 512


def server_options() -> list[tuple[str, int]]:
    """The gRPC server options that bound message sizes (for every listener the broker opens)."""
    return [
        ("grpc.max_receive_message_length", MAX_RECEIVE_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_SEND_MESSAGE_BYTES),
    ]


def check_length(value: str, field: str, limit: int, *, reason: str) -> None:
    """Refuse a string longer than ``limit`` characters, without echoing it."""
    if len(value) > limit:
        raise InvalidArgument.one(
            field, f"is {len(value)} characters; the limit is {limit}", reason=reason
        )


def check_count(values: Sized, field: str, limit: int, *, reason: str) -> None:
    """Refuse a repeated field with more than ``limit`` entries, before looking at any."""
    if len(values) > limit:
        raise InvalidArgument.one(
            field, f"has {len(values)} entries; the limit is {limit}", reason=reason
        )


def check_watch_filters(apps: Sequence[str], domains: Sequence[str], max_app: int) -> None:
    """WatchStatus ``apps`` and ``domains``: counts, then sizes, before any name is parsed."""
    check_count(apps, "apps", MAX_FILTER_ENTRIES, reason="FILTER_TOO_LARGE")
    check_count(domains, "domains", MAX_FILTER_ENTRIES, reason="FILTER_TOO_LARGE")
    violations = [
        FieldViolation(f"apps[{index}]", f"is {len(app)} characters; the limit is {max_app}")
        for index, app in enumerate(apps)
        if len(app) > max_app
    ]
    unicode = sum(len(name) for name in domains if not name.isascii())
    if unicode > MAX_FILTER_IDN_CHARACTERS:
        violations.append(
            FieldViolation(
                "domains",
                f"non-ASCII names add up to {unicode} characters; the limit is "
                f"{MAX_FILTER_IDN_CHARACTERS} per request. Send the xn-- forms the broker "
                "returns",
            )
        )
    if violations:
        raise InvalidArgument(violations, reason="FILTER_TOO_LARGE")


def listed(items: Sequence[str], limit: int = 5, separator: str = ", ") -> str:
    """``a, b, c`` or ``a, b, c and 1,197 more``: a list inside a message, bounded.

    Used where a refusal names what a certificate holds (its SANs), which is the
    uploader's data and may be thousands of entries.
    """
    shown = separator.join(items[:limit])
    left = len(items) - limit
    return f"{shown} and {left:,} more" if left > 0 else shown
