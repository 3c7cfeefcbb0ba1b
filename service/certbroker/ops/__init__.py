"""Operator tasks run beside (or instead of) the broker: backup, KEK rotation.

They work on the database file directly, not over gRPC: a backup must work
when the broker is down, and a KEK rotation needs the broker stopped.
"""


class OpsError(Exception):
    """The task cannot be done; the message says why and what to do."""
