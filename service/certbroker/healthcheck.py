"""``python -m certbroker.healthcheck``: exit 0 when the broker's health listener says SERVING.

The container's HEALTHCHECK runs it. It asks ``grpc.health.v1`` over plaintext
on the health-only listener (``CERTBROKER_HEALTH_LISTEN``, read like the
broker reads it), so it works the same on an mTLS broker, whose main port a
plaintext probe cannot reach.
"""

from __future__ import annotations

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from certbroker.config import ConfigError, parse_hostport

DEFAULT = "127.0.0.1:50052"
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1"}  # noqa: S104 - probe the loopback side


def main() -> int:
    raw = (os.environ.get("CERTBROKER_HEALTH_LISTEN") or "").strip() or DEFAULT
    if raw == "off":
        print("healthcheck: CERTBROKER_HEALTH_LISTEN=off, nothing to ask", file=sys.stderr)
        return 1
    try:
        host, port = parse_hostport("CERTBROKER_HEALTH_LISTEN", raw)
    except ConfigError as error:
        print(f"healthcheck: {error}", file=sys.stderr)
        return 1
    host = _WILDCARDS.get(host, host)
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=2
            )
        except grpc.RpcError as error:
            print(f"healthcheck: {target}: {error.code().name}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        print(f"healthcheck: {target}: {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
