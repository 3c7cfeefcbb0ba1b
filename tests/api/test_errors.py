"""The one error mapper bounds every reply: clients refuse trailers over 8 KiB."""

from __future__ import annotations

import base64
from datetime import timedelta

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from certbroker.api.errors import (
    MAX_DESCRIPTION_BYTES,
    MAX_FIELD_BYTES,
    MAX_MESSAGE_BYTES,
    MAX_VIOLATION_BYTES,
    MAX_VIOLATIONS,
    bounded_violations,
    clip,
    to_status,
)
from certbroker.errors import BrokerError, FieldViolation, InvalidArgument, ResourceExhausted

CLIENT_TRAILER_LIMIT = 8 * 1024  # grpc.max_metadata_size, the default of every gRPC client


def _percent_encoded_length(text: str) -> int:
    """``grpc-message`` as sent: bytes outside printable ASCII, and '%', take three."""
    return sum(1 if 0x20 <= b <= 0x7E and b != 0x25 else 3 for b in text.encode())


def trailer_bytes(status: grpc.Status) -> int:
    """What gRPC counts against the metadata limit (name + value + 32 per entry)."""
    entries = [
        ("grpc-status", "3"),
        ("grpc-message", "x" * _percent_encoded_length(status.details)),
    ]
    for key, value in status.trailing_metadata:
        raw = value if isinstance(value, bytes) else value.encode()
        entries.append((key, base64.b64encode(raw).decode()))
    return sum(len(k) + len(v) + 32 for k, v in entries)


def _decoded(status: grpc.Status) -> tuple[status_pb2.Status, list[FieldViolation]]:
    proto = status_pb2.Status.FromString(dict(status.trailing_metadata)["grpc-status-details-bin"])
    violations: list[FieldViolation] = []
    for detail in proto.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            violations = [FieldViolation(v.field, v.description) for v in bad.field_violations]
    return proto, violations


def test_clip_keeps_short_text_and_counts_what_it_cut() -> None:
    assert clip("short", 512) == "short"
    clipped = clip("a" * 10_000, 512)
    assert len(clipped.encode()) <= 512
    assert clipped.endswith(f"... ({10_000 - clipped.index('.'):,} more characters)")


def test_clip_never_splits_a_character() -> None:
    clipped = clip("€" * 1000, 100)  # three bytes each
    assert len(clipped.encode()) <= 100
    kept = clipped.split("...")[0]
    assert set(kept) == {"€"}
    assert clipped.endswith(f"({1000 - len(kept)} more characters)")


def test_violations_are_capped_with_a_last_one_counting_the_rest() -> None:
    violations = [FieldViolation(f"domains[{i}]", "has an empty label") for i in range(1000)]
    shown = bounded_violations(violations)
    assert len(shown) == MAX_VIOLATIONS + 1
    assert shown[:MAX_VIOLATIONS] == violations[:MAX_VIOLATIONS]
    assert shown[-1] == FieldViolation(f"domains[{MAX_VIOLATIONS}]", "... and 990 more not listed")


def test_violations_stop_at_the_byte_budget() -> None:
    violations = [FieldViolation("certificate", "d" * 5000) for _ in range(MAX_VIOLATIONS)]
    shown = bounded_violations(violations)
    listed = shown[:-1]
    assert all(len(v.description.encode()) <= MAX_DESCRIPTION_BYTES for v in listed)
    assert sum(len(v.field) + len(v.description.encode()) for v in listed) <= MAX_VIOLATION_BYTES
    assert 1 < len(listed) < MAX_VIOLATIONS  # the byte budget, not the count, stopped it
    assert shown[-1].description == f"... and {MAX_VIOLATIONS - len(listed)} more not listed"


def test_few_short_violations_pass_unchanged() -> None:
    violations = [FieldViolation("domain", "must not be empty")]
    assert bounded_violations(violations) == violations


@pytest.mark.parametrize("char", ["a", "é", "€", "\x00", "%"])
def test_worst_case_reply_fits_the_client_trailer_limit(char: str) -> None:
    violations = [FieldViolation(char * 1000, char * 5000) for _ in range(1000)]
    error = InvalidArgument(violations, reason="DOMAIN_INVALID")
    error.message = char * 100_000  # whatever a use case put there
    status = to_status(error)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT
    assert len(status.details.encode()) <= MAX_MESSAGE_BYTES
    proto, shown = _decoded(status)
    assert proto.message == status.details
    assert all(len(v.field.encode()) <= MAX_FIELD_BYTES for v in shown)
    assert shown[-1].description.endswith("more not listed")
    assert trailer_bytes(status) < CLIENT_TRAILER_LIMIT - 1024  # a margin for the transport


def test_other_errors_keep_their_details_and_clip_the_message() -> None:
    error = ResourceExhausted("m" * 10_000, retry_after=timedelta(seconds=5), reason="QUOTA")
    status = to_status(error)
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(status.details.encode()) <= MAX_MESSAGE_BYTES
    assert status.details.endswith("more characters)")
    proto, _ = _decoded(status)
    retry = error_details_pb2.RetryInfo()
    assert any(detail.Unpack(retry) for detail in proto.details)
    assert retry.retry_delay.seconds == 5
    assert to_status(BrokerError("short")).details == "short"
