"""Sync agents: feed proxies that do not speak gRPC (HAProxy, nginx) the broker's certificates.

``follow`` holds the loop both share (watch, snapshot, reconcile, repair,
report); ``haproxy`` and ``nginx`` hold how a certificate reaches each proxy;
``cli`` is the ``certbroker sync`` verb.
"""

from certbroker_client.sync.follow import Material, Syncer, SyncTarget

__all__ = ["Material", "SyncTarget", "Syncer"]
