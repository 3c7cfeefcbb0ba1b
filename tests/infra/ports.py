"""Free loopback ports for test servers.

The kernel picks the port (bind to 0), so two tests never pick the same one by
luck. There is a small window between closing our probe socket and the server
binding it; callers that start a subprocess retry with a fresh port if the
server exits at start-up (see ``ChallTestSrv`` and ``Pebble``).
"""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1", *, udp_too: bool = False) -> int:
    """Return a TCP port on ``host`` that is free right now.

    With ``udp_too`` the same number is also free for UDP (a DNS server binds
    both); we try a few kernel-chosen ports until one is free on both.
    """
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = int(tcp.getsockname()[1])
            if not udp_too:
                return port
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port found")


def wait_tcp(host: str, port: int, *, timeout: float = 0.2) -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
