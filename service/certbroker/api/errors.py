"""The one error mapper: the service's errors → ``google.rpc.Status`` with details.

Servicer methods never build errors by hand; an interceptor-style wrapper
catches ``BrokerError`` and anything unexpected (logged, answered INTERNAL
without internals), so no traceback or key material reaches a caller.

Every status is also bounded here. gRPC sends it in trailers: ``grpc-message``
(percent-encoded, so a non-ASCII byte takes three) and ``grpc-status-details-bin``
(base64 of the message again plus the details). Clients refuse trailers over
8 KiB by default and report ``RESOURCE_EXHAUSTED`` instead of our error, so the
budgets below keep the worst case near 5.5 KiB: the message at most
``MAX_MESSAGE_BYTES``, at most ``MAX_VIOLATIONS`` field violations totalling
``MAX_VIOLATION_BYTES``, each field and description clipped, and a last
violation saying how many were left out.
"""

from __future__ import annotations

import logging

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from certbroker.errors import (
    BrokerError,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)

log = logging.getLogger(__name__)
DOMAIN = "certbroker.v1"
MAX_MESSAGE_BYTES = 512
MAX_VIOLATIONS = 10
MAX_FIELD_BYTES = 128
MAX_DESCRIPTION_BYTES = 512
MAX_VIOLATION_BYTES = 2048
_CODES: tuple[tuple[type[BrokerError], int], ...] = (
    (InvalidArgument, code_pb2.INVALID_ARGUMENT),
    (NotFound, code_pb2.NOT_FOUND),
    (FailedPrecondition, code_pb2.FAILED_PRECONDITION),
    (ResourceExhausted, code_pb2.RESOURCE_EXHAUSTED),
    (Unauthenticated, code_pb2.UNAUTHENTICATED),
    (PermissionDenied, code_pb2.PERMISSION_DENIED),
    (OutOfRange, code_pb2.OUT_OF_RANGE),
    (Unavailable, code_pb2.UNAVAILABLE),
)


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def clip(text: str, limit: int) -> str:
    """``text`` if its UTF-8 fits ``limit`` bytes, else its start and how much was cut."""
    data = text.encode()
    if len(data) <= limit:
        return text
    kept = data[: max(limit - 40, 0)].decode(errors="ignore")
    return f"{kept}... ({len(text) - len(kept):,} more characters)"


def bounded_violations(violations: list[FieldViolation]) -> list[FieldViolation]:
    """The violations a reply can carry, then one saying how many more there were."""
    shown: list[FieldViolation] = []
    used = 0
    for violation in violations:
        if len(shown) == MAX_VIOLATIONS:
            break
        field = clip(violation.field, MAX_FIELD_BYTES)
        description = clip(violation.description, MAX_DESCRIPTION_BYTES)
        size = len(field.encode()) + len(description.encode())
        if shown and used + size > MAX_VIOLATION_BYTES:
            break
        shown.append(FieldViolation(field, description))
        used += size
    left = len(violations) - len(shown)
    if left:
        first_left = clip(violations[len(shown)].field, MAX_FIELD_BYTES)
        shown.append(FieldViolation(first_left, f"... and {left:,} more not listed"))
    return shown


def to_status(error: BrokerError) -> grpc.Status:
    code = next((c for cls, c in _CODES if isinstance(error, cls)), code_pb2.INTERNAL)
    details = [_pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN))]
    if isinstance(error, InvalidArgument):
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=v.field, description=v.description
                        )
                        for v in bounded_violations(error.violations)
                    ]
                )
            )
        )
    retry_after = error.retry_after if isinstance(error, ResourceExhausted | Unavailable) else None
    if retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromTimedelta(retry_after)
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    return rpc_status.to_status(
        status_pb2.Status(
            code=code, message=clip(error.message, MAX_MESSAGE_BYTES), details=details
        )
    )


def internal() -> grpc.Status:
    return rpc_status.to_status(
        status_pb2.Status(
            code=code_pb2.INTERNAL,
            message="internal error; the broker logged the details",
            details=[_pack(error_details_pb2.ErrorInfo(reason="INTERNAL", domain=DOMAIN))],
        )
    )
