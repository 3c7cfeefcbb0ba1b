"""ACME failures as one exception type with a stable reason and a retry verdict.

Classification looks only at the RFC 8555 problem type
(``urn:ietf:params:acme:error:*``), the HTTP status, and the Python exception
type, never at message text: CAs word their ``detail`` freely, and a branch on
it would break silently.

``retryable`` answers one question for the scheduler: *may the same request
succeed later without anybody changing anything?* Retryable problems go to
backoff (honouring ``retry_after`` when the CA sent one); terminal ones need a
person (DNS records, CAA, the request itself) and map to ACTION_REQUIRED.

=================================  ===========================  =========
problem type / exception           reason                       retryable
=================================  ===========================  =========
rateLimited                        ACME_RATE_LIMITED            yes (Retry-After)
badNonce (after inner retries)     ACME_BAD_NONCE               yes
serverInternal, HTTP 5xx           ACME_SERVER_INTERNAL         yes
orderNotReady                      ACME_ORDER_NOT_READY         yes
connection                         ACME_CONNECTION              yes
dns, unknownHost, dnssec           ACME_DNS                     yes
unauthorized                       ACME_UNAUTHORIZED            yes
incorrectResponse                  ACME_INCORRECT_RESPONSE      yes
tls                                ACME_TLS                     yes
order invalid/expired/404          ACME_ORDER_INVALID           yes (start over)
requests ConnectionError etc.      ACME_NETWORK                 yes
timeouts (HTTP or polling)         ACME_TIMEOUT                 yes
unparseable/unexpected response    ACME_PROTOCOL                yes
caa                                ACME_CAA                     no
rejectedIdentifier,                ACME_REJECTED_IDENTIFIER     no
  unsupportedIdentifier
badCSR                             ACME_BAD_CSR                 no
malformed, other HTTP 4xx          ACME_MALFORMED               no
accountDoesNotExist                ACME_ACCOUNT_DOES_NOT_EXIST  no
badPublicKey, badSignatureAlg.     ACME_ACCOUNT_KEY             no
invalidContact, invalidEmail,      ACME_INVALID_CONTACT         no
  unsupportedContact
externalAccountRequired            ACME_EXTERNAL_ACCOUNT        no
userActionRequired                 ACME_USER_ACTION_REQUIRED    no
alreadyRevoked, badRevocationRsn.  ACME_REVOCATION              no
alreadyReplaced (RFC 9773)         ACME_ALREADY_REPLACED        no (ordered again
                                                                without replaces)
no supported challenge offered     ACME_NO_SUPPORTED_CHALLENGE  no
anything else                      ACME_UNKNOWN                 no
DNS-01 needed, no zone configured  DNS01_NOT_CONFIGURED         no
=================================  ===========================  =========

The DNS-01 updater's own failures (``DNS01_UPDATE_REFUSED``,
``DNS01_UPDATE_FAILED``, ``DNS01_NOT_VISIBLE``) are ``AcmeProblem`` too; their
table is in ``certbroker.acme.dns01``.

Why the validation failures (connection, dns, unauthorized,
incorrectResponse, tls) are retryable: they usually mean "the name does not
point at us yet" or a transient network fault, which the broker's own DNS
check and backoff are there for; Let's Encrypt's failed-validation limit (5 per
name per hour) makes the backoff necessary, not a terminal verdict. CAA is
terminal because the CA will refuse until the record changes.

The lifecycle reads the verdict (``certbroker.lifecycle``): a terminal problem
after the broker's own checks passed becomes ACTION_REQUIRED with the fix, and
``unauthorized``/``incorrectResponse`` repeated while DNS points at the
platform are treated as terminal too (the CA reaches something that is not us).

``rate_limit_scope`` says which of the CA's limits a ``rateLimited`` problem
names, from the rate-limit documentation link Let's Encrypt puts in the
problem (a stable anchor per limit, unlike the wording around it); an unknown
or missing link counts as account-wide, the cautious reading.

``compound`` problems are classified by their subproblems: if any is terminal
the whole is terminal (and takes that subproblem's reason), else the first.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from datetime import timedelta
from email.utils import parsedate_to_datetime
from typing import Final

import requests
from josepy import errors as jose_errors

from acme import errors as acme_errors
from acme import messages

ERROR_PREFIX: Final = "urn:ietf:params:acme:error:"


@dataclass(frozen=True)
class _Verdict:
    reason: str
    retryable: bool


_RETRY = True
_TERMINAL = False

#: problem code (the URN's last part) -> verdict. The table in the module docstring.
PROBLEM_TABLE: Final[dict[str, _Verdict]] = {
    "rateLimited": _Verdict("ACME_RATE_LIMITED", _RETRY),
    "badNonce": _Verdict("ACME_BAD_NONCE", _RETRY),
    "serverInternal": _Verdict("ACME_SERVER_INTERNAL", _RETRY),
    "orderNotReady": _Verdict("ACME_ORDER_NOT_READY", _RETRY),
    "connection": _Verdict("ACME_CONNECTION", _RETRY),
    "dns": _Verdict("ACME_DNS", _RETRY),
    "unknownHost": _Verdict("ACME_DNS", _RETRY),
    "dnssec": _Verdict("ACME_DNS", _RETRY),
    "unauthorized": _Verdict("ACME_UNAUTHORIZED", _RETRY),
    "incorrectResponse": _Verdict("ACME_INCORRECT_RESPONSE", _RETRY),
    "tls": _Verdict("ACME_TLS", _RETRY),
    "caa": _Verdict("ACME_CAA", _TERMINAL),
    "rejectedIdentifier": _Verdict("ACME_REJECTED_IDENTIFIER", _TERMINAL),
    "unsupportedIdentifier": _Verdict("ACME_REJECTED_IDENTIFIER", _TERMINAL),
    "badCSR": _Verdict("ACME_BAD_CSR", _TERMINAL),
    "malformed": _Verdict("ACME_MALFORMED", _TERMINAL),
    "accountDoesNotExist": _Verdict("ACME_ACCOUNT_DOES_NOT_EXIST", _TERMINAL),
    "badPublicKey": _Verdict("ACME_ACCOUNT_KEY", _TERMINAL),
    "badSignatureAlgorithm": _Verdict("ACME_ACCOUNT_KEY", _TERMINAL),
    "invalidContact": _Verdict("ACME_INVALID_CONTACT", _TERMINAL),
    "invalidEmail": _Verdict("ACME_INVALID_CONTACT", _TERMINAL),
    "unsupportedContact": _Verdict("ACME_INVALID_CONTACT", _TERMINAL),
    "externalAccountRequired": _Verdict("ACME_EXTERNAL_ACCOUNT", _TERMINAL),
    "userActionRequired": _Verdict("ACME_USER_ACTION_REQUIRED", _TERMINAL),
    "alreadyRevoked": _Verdict("ACME_REVOCATION", _TERMINAL),
    "badRevocationReason": _Verdict("ACME_REVOCATION", _TERMINAL),
    "alreadyReplaced": _Verdict("ACME_ALREADY_REPLACED", _TERMINAL),
}

_UNKNOWN = _Verdict("ACME_UNKNOWN", _TERMINAL)
_SERVER = PROBLEM_TABLE["serverInternal"]


class AcmeProblem(Exception):
    """An ACME step failed. Branch on ``reason`` and ``retryable``, never on ``detail``."""

    def __init__(
        self,
        reason: str,
        detail: str,
        *,
        retryable: bool,
        type_urn: str = "",
        retry_after: timedelta | None = None,
        identifier: str = "",
        failed_authorizations: int = 0,
    ) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.retryable = retryable
        self.type_urn = type_urn
        self.retry_after = retry_after
        self.identifier = identifier
        # How many authorizations of the failed order the CA marked invalid (the
        # order state machine fills it in): Let's Encrypt limits those per name.
        self.failed_authorizations = failed_authorizations
        # Set by ``classify`` (request-level failures only, never a challenge's verdict):
        # the CA itself is unreachable or failing (network, timeout, 5xx, serverInternal);
        # the account is gone (accountDoesNotExist); the signed request was refused
        # (``unauthorized``: a deactivated account, but at Let's Encrypt just as well an
        # order or authorization of another account, or a name it may not have, so only
        # a look at the account itself tells: ``Issuer.account_status``); the requested
        # URL is unknown (404).
        self.ca_unavailable = False
        self.account_gone = False
        self.unauthorized = False
        self.not_found = False

    def __repr__(self) -> str:
        return (
            f"AcmeProblem(reason={self.reason!r}, retryable={self.retryable}, "
            f"type_urn={self.type_urn!r}, retry_after={self.retry_after!r}, "
            f"detail={self.detail!r})"
        )


class HttpStatusError(acme_errors.ClientError):
    """A non-2xx answer without a problem document (e.g. a proxy's 502 HTML page).

    Raised by the issuer's network layer so it can be classified by status
    rather than by acme's generic ``ClientError(response)``.
    """

    def __init__(self, status: int, retry_after: str | None) -> None:
        super().__init__(f"HTTP {status} without a problem document")
        self.status = status
        self.retry_after = retry_after


def parse_retry_after(value: str | None, *, now: dt.datetime | None = None) -> timedelta | None:
    """``Retry-After`` (delta-seconds or HTTP-date) as a non-negative timedelta.

    ``now`` is only used for the HTTP-date form; it defaults to the current UTC
    time because a wall-clock header can only be compared to the wall clock.
    """
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.isdigit():
        return timedelta(seconds=int(value))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    current = now or dt.datetime.now(dt.UTC)
    return max(timedelta(0), when - current)


def _code_of(typ: str | None) -> str:
    if typ and typ.startswith(ERROR_PREFIX):
        return typ[len(ERROR_PREFIX) :]
    return ""


def _verdict_for(error: messages.Error, http_status: int | None) -> _Verdict:
    code = _code_of(error.typ)
    if code in PROBLEM_TABLE:
        return PROBLEM_TABLE[code]
    if http_status is not None and http_status >= 500:
        return _SERVER
    if http_status == 429:
        return PROBLEM_TABLE["rateLimited"]
    return _UNKNOWN


def _primary(error: messages.Error) -> messages.Error:
    """For ``compound`` problems, the subproblem that decides the verdict."""
    subs: tuple[messages.Error, ...] = tuple(error.subproblems or ())
    if _code_of(error.typ) != "compound" or not subs:
        return error
    for sub in subs:
        if not _verdict_for(sub, None).retryable:
            return sub
    return subs[0]


def from_acme_error(
    error: messages.Error,
    *,
    http_status: int | None = None,
    retry_after: str | None = None,
) -> AcmeProblem:
    """An RFC 8555 problem document as an ``AcmeProblem``.

    ``http_status``/``retry_after`` default to what the issuer's network layer
    attached to the error (attributes ``http_status`` and ``retry_after_header``).
    """
    status = http_status if http_status is not None else getattr(error, "http_status", None)
    header = retry_after if retry_after is not None else getattr(error, "retry_after_header", None)
    primary = _primary(error)
    verdict = _verdict_for(primary, status)
    ident = ""
    if primary.identifier is not None:
        ident = str(primary.identifier.value)
    elif error.identifier is not None:
        ident = str(error.identifier.value)
    return AcmeProblem(
        verdict.reason,
        str(primary.detail or error.detail or primary.title or ""),
        retryable=verdict.retryable,
        type_urn=str(primary.typ or ""),
        retry_after=parse_retry_after(header),
        identifier=ident,
    )


def classify(exc: BaseException) -> AcmeProblem:
    """Any exception an ACME *request* can raise, as an ``AcmeProblem`` (by type only),
    with the request-level marks (``ca_unavailable``, ``account_gone``, ``unauthorized``,
    ``not_found``)."""
    problem = _classify(exc)
    if isinstance(exc, AcmeProblem):
        return problem
    status = getattr(exc, "http_status", None)
    if isinstance(exc, HttpStatusError):
        status = exc.status
    code = _code_of(exc.typ) if isinstance(exc, messages.Error) else ""
    problem.ca_unavailable = problem.reason in _CA_DOWN_REASONS or (
        status is not None and status >= 500
    )
    problem.account_gone = code == "accountDoesNotExist"
    problem.unauthorized = code == "unauthorized"
    problem.not_found = status == 404 and not (problem.account_gone or problem.unauthorized)
    return problem


#: Reasons of request failures that say the CA (not this request) is in trouble.
_CA_DOWN_REASONS: Final = frozenset({"ACME_NETWORK", "ACME_TIMEOUT", "ACME_SERVER_INTERNAL"})


def _classify(exc: BaseException) -> AcmeProblem:
    if isinstance(exc, AcmeProblem):
        return exc
    if isinstance(exc, messages.Error):
        return from_acme_error(exc)
    if isinstance(exc, acme_errors.IssuanceError):
        return from_acme_error(exc.error)
    if isinstance(exc, HttpStatusError):
        verdict = _verdict_for(messages.Error(), exc.status)
        if verdict is _UNKNOWN:
            verdict = PROBLEM_TABLE["malformed"]
        return AcmeProblem(
            verdict.reason,
            f"HTTP {exc.status}",
            retryable=verdict.retryable,
            retry_after=parse_retry_after(exc.retry_after),
        )
    if isinstance(exc, acme_errors.NonceError):
        return AcmeProblem("ACME_BAD_NONCE", type(exc).__name__, retryable=True)
    if isinstance(exc, requests.Timeout | acme_errors.TimeoutError | TimeoutError):
        return AcmeProblem("ACME_TIMEOUT", _describe(exc), retryable=True)
    if isinstance(exc, requests.ConnectionError | requests.exceptions.ChunkedEncodingError):
        return AcmeProblem("ACME_NETWORK", _describe(exc), retryable=True)
    if isinstance(exc, ConnectionError):
        return AcmeProblem("ACME_NETWORK", _describe(exc), retryable=True)
    if isinstance(
        exc, acme_errors.ClientError | jose_errors.DeserializationError | requests.RequestException
    ):
        return AcmeProblem("ACME_PROTOCOL", _describe(exc), retryable=True)
    return AcmeProblem(_UNKNOWN.reason, _describe(exc), retryable=_UNKNOWN.retryable)


def is_transient(exc: BaseException) -> bool:
    """Errors worth retrying *inside* one step (a few quick tries), before surfacing.

    badNonce, connection resets/refusals, timeouts and 5xx: the same request
    will very likely succeed a moment later. Everything else surfaces at once.
    """
    if isinstance(exc, messages.Error):
        status = getattr(exc, "http_status", None)
        return _code_of(exc.typ) in ("badNonce", "serverInternal") or (
            status is not None and status >= 500
        )
    if isinstance(exc, HttpStatusError):
        return exc.status >= 500
    if isinstance(exc, acme_errors.NonceError):
        return True
    return isinstance(
        exc,
        requests.ConnectionError
        | requests.Timeout
        | requests.exceptions.ChunkedEncodingError
        | ConnectionError,
    )


#: Let's Encrypt's rate-limit documentation anchors -> the limit (``LimitsLedger`` scope).
RATE_LIMIT_ANCHORS: Final[dict[str, str]] = {
    "new-orders-per-account": "orders",
    "new-certificates-per-registered-domain": "registered_domain",
    "new-certificates-per-exact-set-of-identifiers": "name_set",
    "new-certificates-per-exact-set-of-hostnames": "name_set",
    "authorization-failures-per-identifier-per-account": "failed_authorizations",
    "authorization-failures-per-hostname-per-account": "failed_authorizations",
    "new-registrations-per-ip-address": "account",
}


def rate_limit_scope(problem: AcmeProblem) -> str:
    """Which limit a rateLimited problem names: orders, registered_domain, name_set,
    failed_authorizations, or account (unknown: pause everything, the cautious reading)."""
    detail = problem.detail.lower()
    for anchor, scope in RATE_LIMIT_ANCHORS.items():
        if f"#{anchor}" in detail:
            return scope
    return "account"


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


__all__ = [
    "PROBLEM_TABLE",
    "AcmeProblem",
    "HttpStatusError",
    "classify",
    "from_acme_error",
    "is_transient",
    "parse_retry_after",
    "rate_limit_scope",
]
