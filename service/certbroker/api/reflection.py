"""Server reflection, both ``grpc.reflection.v1`` and ``v1alpha``, and the error-detail types.

Why v1 by hand: grpcio-reflection 1.85 ships only ``v1alpha``, while current
clients (``buf curl``, newer grpcurl) ask for ``v1`` first. The two protocols
are wire-identical (v1 is v1alpha with a new package name), so ``v1`` is a
generic handler that runs the v1alpha servicer with the v1alpha
(de)serialisers. So that a client that asks reflection *about* reflection
finds ``grpc.reflection.v1`` too, its file descriptor (v1alpha's, renamed) is
added to the descriptor pool once.

Why the error details: the broker's errors carry ``google.rpc.ErrorInfo``,
``BadRequest`` and ``RetryInfo`` in ``google.protobuf.Any`` values. A
generic client decodes an ``Any`` by asking reflection for the file
containing its type (``file_containing_symbol``); importing
``error_details_pb2`` here puts ``google/rpc/error_details.proto`` in the
pool it answers from, whoever else imports it.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.rpc import error_details_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2

V1_SERVICE = "grpc.reflection.v1.ServerReflection"
_V1_FILE = "grpc/reflection/v1/reflection.proto"
_V1ALPHA_PACKAGE = "grpc.reflection.v1alpha"
_V1_PACKAGE = "grpc.reflection.v1"
#: Files a client may need to decode the broker's error details.
ERROR_DETAIL_FILES = (error_details_pb2.DESCRIPTOR.name,)


def _v1_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """v1alpha's reflection.proto under v1's file and package names."""
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name = _V1_FILE
    proto.package = _V1_PACKAGE
    old, new = f".{_V1ALPHA_PACKAGE}.", f".{_V1_PACKAGE}."
    for message in proto.message_type:
        for field in message.field:
            if field.type_name:  # assigning "" would mark it present on a scalar field
                field.type_name = field.type_name.replace(old, new)
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(old, new)
            method.output_type = method.output_type.replace(old, new)
    return proto


def _register_v1(pool: descriptor_pool.DescriptorPool) -> None:
    try:
        pool.FindFileByName(_V1_FILE)
    except KeyError:
        pool.Add(_v1_descriptor())


def enable(server: grpc.aio.Server, service_names: Iterable[str]) -> None:
    """Serve reflection (v1 and v1alpha) listing ``service_names`` and both reflections."""
    pool = descriptor_pool.Default()
    _register_v1(pool)
    names = [*service_names, reflection.SERVICE_NAME, V1_SERVICE]
    servicer = reflection.aio.ReflectionServicer(names, pool=pool)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                reflection.SERVICE_NAME, {"ServerReflectionInfo": handler}
            ),
            grpc.method_handlers_generic_handler(V1_SERVICE, {"ServerReflectionInfo": handler}),
        ]
    )
