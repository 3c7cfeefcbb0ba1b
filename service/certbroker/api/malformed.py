"""Requests that are not valid protobuf: INVALID_ARGUMENT with a field violation, no traceback.

gRPC Python parses a request with the method's deserializer before any servicer
code runs. A parse error there is logged with a full traceback at ERROR and
answered ``UNKNOWN``, so a peer sending garbage at full speed fills the log and
gets an answer that says nothing. This interceptor gives every unary-request
method a deserializer that turns a parse error into a marker, and a behaviour
that answers the marker through the one error mapper, before the servicer runs.

Methods with streamed requests (only reflection) are left as gRPC made them.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import grpc

from certbroker.api.errors import to_status
from certbroker.errors import InvalidArgument

REASON = "REQUEST_MALFORMED"


class _Malformed:
    """What the deserializer returns instead of raising: the refusal to send."""

    __slots__ = ("error",)

    def __init__(self, error: InvalidArgument) -> None:
        self.error = error


def is_malformed(request: object) -> bool:
    """``request`` is the marker a guarded deserializer returned for bytes that do not parse."""
    return isinstance(request, _Malformed)


def _safe(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None
    descriptor = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)
    what = getattr(descriptor, "full_name", "request")

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:  # DecodeError, or anything a parser raises on garbage
            return _Malformed(
                InvalidArgument.one(
                    "request",
                    f"is not a valid {what} message ({len(data)} bytes that do not parse "
                    "as protobuf)",
                    reason=REASON,
                )
            )

    return parse


def _unary(behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, _Malformed):
            await context.abort_with_status(to_status(request.error))
        return await behavior(request, context)

    return guarded


def _generator(behavior: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    async def guarded(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        if isinstance(request, _Malformed):
            await context.abort_with_status(to_status(request.error))
        async for response in behavior(request, context):
            yield response

    return guarded


def guard(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """``handler`` with a deserializer that never raises and a behaviour that refuses garbage."""
    fields = cast(Any, handler)  # grpc's handlers are namedtuples
    if fields.request_streaming:
        return handler
    name = "unary_stream" if fields.response_streaming else "unary_unary"
    behavior = getattr(fields, name)
    if inspect.isasyncgenfunction(behavior):
        wrapped: Callable[..., Any] = _generator(behavior)
    elif inspect.iscoroutinefunction(behavior):
        wrapped = _unary(behavior)
    else:
        return handler  # a synchronous behaviour: not one of ours
    replaced: grpc.RpcMethodHandler = fields._replace(
        request_deserializer=_safe(fields.request_deserializer), **{name: wrapped}
    )
    return replaced


class MalformedRequests(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Applies :func:`guard` to every method, once per method (handlers are reused)."""

    def __init__(self) -> None:
        self._guarded: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = cast(str, handler_call_details.method)
        known = self._guarded.get(method)
        if known is None or known[0] is not handler:
            known = (handler, guard(handler))
            self._guarded[method] = known
        return known[1]
