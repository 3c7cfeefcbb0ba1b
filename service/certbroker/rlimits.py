"""The process's open-file limit, raised at start as far as the hard limit allows.

Every gRPC client, HTTP-01 connection, DNS query and database file is a file
descriptor. With the common default soft limit of 1,024, a few hundred idle
HTTP-01 connections once made new gRPC clients time out. The hard limit is the
operator's ceiling (systemd ``LimitNOFILE=``, ``docker run --ulimit``); raising
the soft limit up to it needs no privilege.
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger(__name__)

# Used when the hard limit is "unlimited": Linux refuses more than fs.nr_open
# (1,048,576 by default) and macOS less, so a failure below keeps the old limit.
UNLIMITED_TARGET = 1_048_576


def raise_open_files_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = UNLIMITED_TARGET if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= target:
        return UNLIMITED_TARGET if soft == resource.RLIM_INFINITY else soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as error:
        log.warning(
            "open-file limit stays at %d (could not raise it to %d: %s)", soft, target, error
        )
        return soft
    log.info("raised the open-file soft limit from %d to %d", soft, target)
    return target
