"""``certbroker migrate-db --from sqlite:PATH --to postgresql://…``: SQLite to PostgreSQL.

A self-contained verb, hooked into the ``certbroker`` CLI through
:func:`add_migrate_parser` and :func:`run_migrate`. The work is the server's
(``certbroker.store.migrate_db``), imported only when the verb runs: the client
installs without the server. Exit codes: 0 copied and verified, 1 refused or
failed (nothing written), 2 bad usage or the server is not installed here.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from typing import Any, TextIO

__all__ = ["add_migrate_parser", "run_migrate"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def add_migrate_parser(subparsers: Any) -> None:
    """Add the ``migrate-db`` verb to the ``certbroker`` CLI's sub-parsers."""
    text = (
        "copy a stopped single-node broker's SQLite database into a new, empty PostgreSQL "
        "database: domains, certificates and sealed keys (keep the same KEK file), orders, "
        "events with their revisions, the ACME account and quota history; nothing is re-issued"
    )
    p = subparsers.add_parser("migrate-db", help="move a SQLite installation to PostgreSQL",
                              description=text)  # fmt: skip
    p.add_argument("--from", dest="source", required=True, metavar="sqlite:PATH")
    p.add_argument("--to", dest="target", required=True, metavar="postgresql://…")


def run_migrate(
    args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    try:
        module = importlib.import_module("certbroker.store.migrate_db")
    except ImportError as error:
        print(f"error: the broker is not installed here: {error}", file=err)
        return EXIT_USAGE
    try:
        summary = asyncio.run(module.migrate_db(args.source, args.target))
    except (module.MigrationError, ValueError) as error:
        print(f"error: {error}", file=err)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("error: interrupted; nothing was committed", file=err)
        return EXIT_FAILED
    except Exception as error:  # one line, never a traceback; the copy rolled back
        print(f"error: {type(error).__name__}: {' '.join(str(error).split())}", file=err)
        return EXIT_FAILED
    for line in summary.lines():
        print(line, file=out)
    return EXIT_OK
