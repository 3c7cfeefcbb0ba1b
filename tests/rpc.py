"""Reading the broker's rich errors in tests, through the client library's own decoder."""

from __future__ import annotations

import grpc

from certbroker_client.client import BrokerError


def details(error: grpc.RpcError) -> tuple[str, list[tuple[str, str]]]:
    """(ErrorInfo reason, [(field, description)] of the BadRequest) of a failed call."""
    decoded = BrokerError.from_rpc_error(error)
    return decoded.reason, [(v.field, v.description) for v in decoded.violations]


def reason(error: grpc.RpcError) -> str:
    return details(error)[0]
