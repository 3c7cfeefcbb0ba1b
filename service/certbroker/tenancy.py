"""Tenants: what an app name may be, who may change a domain, which names share an owner.

The broker serves many apps (tenants) of one platform. Every mutation names
the app it acts for and is checked against the domain's owner in the same
transaction as its write (``certbroker.app``); a refusal never names the other
app, because a platform API passes errors through to its own users.

App names
    ``APP_PATTERN``: lowercase letters, digits and hyphens, starting with a
    letter or digit, at most 63 characters (a DNS label's alphabet and length,
    so an app name fits in a label, a metric tag or a path without escaping).
    Anything else is ``INVALID_ARGUMENT`` on the field ``app``.

One family, one owner
    A name can be claimed through more than one row: ``x.b`` itself, the
    wildcard ``*.b`` whose certificate is valid for ``x.b``, and ``*.x.b``
    whose DNS-01 validation happens at ``_acme-challenge.x.b``, the very name
    that validates ``x.b``. Two rows *overlap* when

    1. they share a DNS-01 challenge name: ``*.b`` and ``b`` both validate at
       ``_acme-challenge.b`` (whatever ``include_apex`` and the challenge type
       say: the customer can point that one CNAME at one app only, and the
       owner of a name's DNS owns both); or
    2. one's certificate would be valid for a name the other's certificate
       covers: ``*.b`` covers ``x.b`` (exactly one label below, RFC 6125
       §6.4.3) and, with ``include_apex``, ``b``; so ``*.b`` overlaps every
       ``x.b``, and every ``*.x.b`` with ``include_apex`` (whose apex is
       ``x.b``).

    A row may only be added, or grow (``include_apex`` turned on), when no
    row of *another* app overlaps it. So:

    - alice owns ``w.example``: mallory may not add ``*.w.example``, with or
      without its apex (rule 1: one ``_acme-challenge.w.example``);
    - alice owns ``x.w.example``: mallory may not add ``*.w.example`` (rule
      2: its certificate would be valid for alice's name);
    - alice owns ``*.w.example`` (apex or not): mallory may add neither
      ``w.example`` (rule 1) nor ``x.w.example`` (rule 2: a router would
      serve mallory's certificate for, and route to mallory's app, a name
      inside the customer's wildcard);
    - ``a.x.w.example`` and ``*.x.w.example`` without its apex are outside
      ``*.w.example``'s certificate and challenge name, so they are free.

    Rows that already overlapped before this rule existed are left as they
    are; each keeps its owner and only that owner may change it.

The platform
    The platform's own domains (``CERTBROKER_PLATFORM_DOMAINS``) belong to
    ``PLATFORM_APP``, which no caller can name; ``certbroker.platform`` refuses
    every app mutation of them and every new name under them.

Empty app
    Remove, UploadCustom and DeleteCustom accept an empty app only from the
    roles allowed to act across tenants (``admin``, and the plaintext loopback
    development mode): the operator cleaning up for everyone, and callers
    older than the field. IssueCertificate always needs the app (it becomes
    the owner).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from certbroker.delegation import base_name
from certbroker.errors import FailedPrecondition, InvalidArgument
from certbroker.model import Domain

MAX_APP_LENGTH: Final = 63
APP_PATTERN: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
APP_RULE: Final = (
    "must be 1-63 lowercase letters, digits and hyphens, starting with a letter or digit"
)
OWNED_BY_OTHER_APP: Final = "DOMAIN_OWNED_BY_OTHER_APP"
#: The owner of the platform's own domains (``certbroker.platform``). The underscore puts
#: it outside ``APP_PATTERN``: ``check_app`` refuses it, so no caller can act as it.
PLATFORM_APP: Final = "_platform"


def check_app(app: str, field: str = "app") -> str:
    """``app`` if it is a valid app name; ``InvalidArgument`` on ``field`` otherwise.

    The value is never echoed: it may be megabytes long, or meant for someone else.
    """
    if not app:
        raise InvalidArgument.one(field, "must not be empty", reason="APP_INVALID")
    if len(app) > MAX_APP_LENGTH or not APP_PATTERN.fullmatch(app):
        raise InvalidArgument.one(field, APP_RULE, reason="APP_INVALID")
    return app


def acting_app(app: str, across_tenants: bool) -> str | None:
    """The app a mutation of an existing domain acts for; ``None``: any app (an operator).

    ``across_tenants`` is whether the caller's role may act for every app.
    """
    if not app:
        if across_tenants:
            return None
        raise InvalidArgument.one(
            "app",
            "must name the app that owns the domain (only the admin role may leave it empty)",
            reason="APP_INVALID",
        )
    return check_app(app)


def check_owner(domain: Domain, app: str | None) -> None:
    """Raise unless ``app`` owns ``domain`` (``None``: an operator, who may change any)."""
    if app is not None and domain.app != app:
        raise FailedPrecondition(
            f"domain {domain.name} belongs to another app", reason=OWNED_BY_OTHER_APP
        )


@dataclass(frozen=True)
class Claim:
    """What a row claims: its name and, for a wildcard, whether its apex is in the certificate."""

    name: str
    include_apex: bool = False

    @classmethod
    def of(cls, domain: Domain) -> Claim:
        return cls(domain.name, domain.include_apex and domain.is_wildcard)

    @property
    def certificate_names(self) -> tuple[str, ...]:
        if self.include_apex and self.name.startswith("*."):
            return (self.name, self.name[2:])
        return (self.name,)


def _parent(name: str) -> str | None:
    return name.split(".", 1)[1] if "." in name else None


def _covers(pattern: str, name: str) -> bool:
    """Is a certificate for ``pattern`` valid for ``name``? (A wildcard: one label only.)"""
    if pattern == name:
        return True
    return pattern.startswith("*.") and not name.startswith("*.") and _parent(name) == pattern[2:]


def overlap(a: Claim, b: Claim) -> bool:
    """The module's rules 1 and 2: must ``a`` and ``b`` belong to one app?"""
    if base_name(a.name) == base_name(b.name):
        return True
    return any(
        _covers(p, q) or _covers(q, p) for p in a.certificate_names for q in b.certificate_names
    )


def neighbours(claim: Claim) -> tuple[tuple[str, ...], str | None]:
    """Where rows overlapping ``claim`` can be: names to look up, and a wildcard's base.

    A superset (``overlap`` decides). For ``x.b``: ``x.b``, ``*.x.b`` and ``*.b``.
    For ``*.b`` (apex or not): ``b``, ``*.b``, ``*.<parent of b>`` (covers the apex),
    and ``b`` as the second value: the rows a certificate for ``*.b`` is valid for,
    ``y.b`` and ``*.y.b`` with its apex, whatever ``y`` is. The store finds those by
    the parent of the exact name each row's certificate holds (``Transaction.family_rows``):
    every case is an exact lookup, none a search, since the check holds the write lock.
    Nothing else can overlap: an exact name's certificate covers only itself, a
    wildcard's covers nothing two labels down, and ``*.y.b`` without its apex holds
    no name ``*.b`` covers and validates at ``_acme-challenge.y.b``.
    """
    base = base_name(claim.name)
    names = [base, f"*.{base}"]
    parent = _parent(base)
    if parent is not None:
        names.append(f"*.{parent}")
    below = base if claim.name.startswith("*.") else None
    return tuple(names), below


def check_family(claim: Claim, app: str, rows: Iterable[Domain]) -> None:
    """Raise ``FailedPrecondition`` if a row of another app among ``rows`` overlaps ``claim``.

    The message names the conflicting domain, not its app.
    """
    for row in rows:
        if row.app != app and overlap(claim, Claim.of(row)):
            if row.name == claim.name:
                check_owner(row, app)
            raise FailedPrecondition(
                f"{claim.name} cannot be added: {row.name} belongs to another app, and a "
                "wildcard, its apex and the names directly under it must belong to one app",
                reason=OWNED_BY_OTHER_APP,
            )
