"""The service's own error tree.

Use cases raise these; one mapper in ``certbroker.api.errors`` turns them into
``google.rpc.Status`` with details. Callers branch on the class and ``reason``,
never on message text.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request: which field and what exactly is wrong."""

    field: str
    description: str


class BrokerError(Exception):
    """Base of every error a caller may see. ``reason`` is stable, UPPER_SNAKE_CASE."""

    reason: str = "BROKER_ERROR"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason


#: The message of an ``InvalidArgument`` names this many violations at most; the
#: full list travels as details (bounded again by the mapper in ``api.errors``).
MESSAGE_VIOLATIONS = 10


class InvalidArgument(BrokerError):
    reason = "INVALID_ARGUMENT"

    def __init__(self, violations: list[FieldViolation], *, reason: str | None = None) -> None:
        message = "; ".join(f"{v.field}: {v.description}" for v in violations[:MESSAGE_VIOLATIONS])
        if len(violations) > MESSAGE_VIOLATIONS:
            message += f"; and {len(violations) - MESSAGE_VIOLATIONS:,} more"
        super().__init__(message, reason=reason)
        self.violations = violations

    @classmethod
    def one(cls, field: str, description: str, *, reason: str | None = None) -> InvalidArgument:
        return cls([FieldViolation(field, description)], reason=reason)


class NotFound(BrokerError):
    reason = "NOT_FOUND"


class FailedPrecondition(BrokerError):
    reason = "FAILED_PRECONDITION"


class ResourceExhausted(BrokerError):
    reason = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, *, retry_after: timedelta, reason: str | None = None) -> None:
        super().__init__(message, reason=reason)
        self.retry_after = retry_after


class Unauthenticated(BrokerError):
    reason = "UNAUTHENTICATED"


class PermissionDenied(BrokerError):
    reason = "PERMISSION_DENIED"


class OutOfRange(BrokerError):
    reason = "OUT_OF_RANGE"


class Unavailable(BrokerError):
    """Try again later; ``retry_after`` (sent as ``RetryInfo``) says when, where we know."""

    reason = "UNAVAILABLE"

    def __init__(
        self, message: str, *, reason: str | None = None, retry_after: timedelta | None = None
    ) -> None:
        super().__init__(message, reason=reason)
        self.retry_after = retry_after


class StoreUnavailable(Unavailable):
    """The database cannot take the read or write now (locked, disk full, I/O error).

    Raised by the store backend in place of its driver's error, so callers (the
    scheduler's backoff, the API's UNAVAILABLE) need not know the backend.
    """

    reason = "STORE_UNAVAILABLE"
