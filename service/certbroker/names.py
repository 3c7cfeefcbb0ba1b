"""Domain names at the edge: normalise once, refuse what no certificate can cover.

Everything inside the broker handles the normalised form only (lowercase
A-labels, no trailing dot), so comparisons and store keys never disagree.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Container
from functools import cache

import idna
from publicsuffixlist import PublicSuffixList

from certbroker.errors import FieldViolation, InvalidArgument

MAX_NAME_LENGTH = 253
MAX_LABEL_LENGTH = 63
_LDH = re.compile(r"^[a-z0-9-]+$")


@cache
def _psl() -> PublicSuffixList:
    """Loaded once; parsing the list takes ~100 ms, so the server calls ``preload`` at start."""
    return PublicSuffixList()


def preload() -> None:
    """Parse the public suffix list now rather than inside the first request."""
    _psl()


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True


def _to_ascii(label: str) -> str:
    """One label to its A-label; plain LDH labels pass through untouched.

    An ``xn--`` label must decode to a valid U-label, and other labels with
    ``--`` in positions 3-4 are reserved (RFC 5891 4.2.3.1): the CA refuses both.
    """
    if label.isascii():
        if label[2:4] == "--":
            if not label.startswith("xn--"):
                raise idna.IDNAError("hyphens in the third and fourth positions are reserved")
            idna.decode(label)
        return label
    return idna.encode(label, uts46=True).decode("ascii")


def _check_raw_length(raw: str, field: str) -> None:
    """Refuse a name no certificate can hold before any IDNA work (microseconds, any size).

    An A-label is never shorter than its U-label (short of characters UTS46 maps
    away, like soft hyphens, which no one pastes by the hundred), so input over 253
    characters (plus a trailing dot and blanks) would only fail later, after work
    that grows with its length: a 2 MB name used to cost seconds of UTS46 mapping.
    Labels are bounded the same way, before ``_to_ascii``. Only sizes are echoed.
    """
    if len(raw) > MAX_NAME_LENGTH:
        stripped = raw.strip()  # a pasted name with surrounding blanks is still fine
        if len(stripped.removesuffix(".")) > MAX_NAME_LENGTH:
            raise InvalidArgument.one(
                field,
                f"is {len(stripped)} characters, over {MAX_NAME_LENGTH}",
                reason="DOMAIN_INVALID",
            )


def normalise_domain(raw: str, field: str = "domain", *, exempt: Container[str] = ()) -> str:
    """Return the canonical form of ``raw`` or raise ``InvalidArgument`` naming every problem.

    A name on the public suffix list (``co.uk``, ``herokuapp.com``) is refused: no
    customer owns it. ``exempt`` names (normalised) skip that refusal: the platform's
    own domains (``certbroker.platform``), which may be on the list as a platform's
    app domain should be (``*.eu.platform.sh``).
    """
    normalised = normalise_name(raw, field)
    if normalised in exempt:
        return normalised
    base = normalised.removeprefix("*.")
    if len(base.split(".")) < 2 or _psl().privatesuffix(base) is None:
        raise InvalidArgument.one(
            field,
            f"{base} is a public suffix (like co.uk); add a name under it",
            reason="DOMAIN_PUBLIC_SUFFIX",
        )
    return normalised


def normalise_name(raw: str, field: str = "domain") -> str:
    """``normalise_domain`` without the public-suffix refusal: syntax and IDNA only.

    For names the operator configures (the platform's own domains), never for a caller's.
    """
    _check_raw_length(raw, field)
    name = raw.strip().lower().removesuffix(".")
    if not name:
        raise InvalidArgument.one(field, "must not be empty", reason="DOMAIN_INVALID")
    if _is_ip(name):
        raise InvalidArgument.one(
            field,
            f"{raw!r} is an IP address; certificates here are for domain names",
            reason="DOMAIN_INVALID",
        )
    labels = name.split(".")
    violations: list[FieldViolation] = []
    ascii_labels: list[str] = []
    for position, label in enumerate(labels):
        if label == "*":
            if position != 0:
                violations.append(
                    FieldViolation(
                        field, "a wildcard must be the whole leftmost label (like *.example.com)"
                    )
                )
            ascii_labels.append(label)
            continue
        if "*" in label:
            violations.append(
                FieldViolation(
                    field, f"label {label!r}: a wildcard must be the whole leftmost label"
                )
            )
            continue
        if not label:
            violations.append(FieldViolation(field, "has an empty label (two dots in a row)"))
            continue
        if len(label) > MAX_LABEL_LENGTH:
            violations.append(
                FieldViolation(
                    field,
                    f"label {label[:20]}... is {len(label)} characters, over {MAX_LABEL_LENGTH}",
                )
            )
            continue
        try:
            ascii_label = _to_ascii(label)
        except idna.IDNAError as error:
            violations.append(FieldViolation(field, f"label {label!r} is not valid IDNA: {error}"))
            continue
        if len(ascii_label) > MAX_LABEL_LENGTH:
            violations.append(
                FieldViolation(
                    field,
                    f"label {ascii_label[:20]}... is {len(ascii_label)} characters, "
                    f"over {MAX_LABEL_LENGTH}",
                )
            )
        if not _LDH.match(ascii_label):
            violations.append(
                FieldViolation(
                    field, f"label {label!r} has characters outside letters, digits and hyphens"
                )
            )
        elif ascii_label.startswith("-") or ascii_label.endswith("-"):
            violations.append(
                FieldViolation(field, f"label {label!r} starts or ends with a hyphen")
            )
        ascii_labels.append(ascii_label)
    if violations:
        raise InvalidArgument(violations, reason="DOMAIN_INVALID")
    normalised = ".".join(ascii_labels)
    if len(normalised) > MAX_NAME_LENGTH:
        raise InvalidArgument.one(
            field,
            f"is {len(normalised)} characters, over {MAX_NAME_LENGTH}",
            reason="DOMAIN_INVALID",
        )
    return normalised


def registered_domain(name: str) -> str:
    """The registered domain a weekly CA quota counts against (www.example.co.uk: example.co.uk)."""
    base = name.removeprefix("*.")
    registered = _psl().privatesuffix(base)
    return registered if registered is not None else base
