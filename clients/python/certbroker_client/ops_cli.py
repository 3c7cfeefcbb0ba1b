"""``certbroker backup|rotate-kek|generate-kek``: operator verbs on the broker's files.

They act on the database and KEK files directly (no gRPC), so they need the
server package; it is imported lazily, like ``serve``, so the client alone
still installs and runs. Exit codes: 0 done, 1 refused or failed (one line on
stderr saying why and what to do), 2 the server package is missing.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any, TextIO

__all__ = ["OPS_COMMANDS", "add_ops_parsers", "run_ops"]

OPS_COMMANDS = ("backup", "rotate-kek", "generate-kek")


def add_ops_parsers(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "backup",
        help="copy the live database to PATH (safe while brokers serve)",
        description=(
            "Copy the broker's database to PATH, mode 0600, as one consistent snapshot, safe "
            "while brokers serve: SQLite's online backup, or for PostgreSQL pg_dump "
            "--format=custom (checked with pg_restore --list). The KEK file is not included: "
            "back it up separately (the ids it needs are printed)."
        ),
    )
    p.add_argument("path", metavar="PATH")
    p.add_argument("--db", help="database (default: CERTBROKER_DB, else the broker's default)")
    p.add_argument("--force", action="store_true", help="overwrite PATH if it exists")
    p.add_argument(
        "--pg-dump", metavar="PATH", help="the pg_dump to run (PostgreSQL; default: on PATH)"
    )

    p = subparsers.add_parser(
        "rotate-kek",
        help="re-seal every stored key under a new key-encryption key (brokers stopped)",
        description=(
            "Re-seal every private key and secret under the KEK in --new-kek. Stop the broker "
            "(on PostgreSQL: every broker) first. Interrupted? Run the same command again; it "
            "finishes where it stopped (PostgreSQL: one transaction, nothing to finish)."
        ),
    )
    p.add_argument("--new-kek", required=True, metavar="FILE", help="the new KEK file")
    p.add_argument(
        "--kek", metavar="FILE", help="the current KEK file (default: CERTBROKER_KEK_FILE)"
    )
    p.add_argument("--db", help="database (default: CERTBROKER_DB, else the broker's default)")
    p.add_argument("--batch-size", type=int, default=200, help="rows per transaction (SQLite only)")

    p = subparsers.add_parser(
        "generate-kek",
        help="write a new random key-encryption key to FILE (mode 0600)",
        description="Write 32 random bytes, base64-encoded, to FILE (never overwrites).",
    )
    p.add_argument("path", metavar="FILE")


def run_ops(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        commands = importlib.import_module("certbroker.ops.commands")
        errors = importlib.import_module("certbroker.ops")
        sealing = importlib.import_module("certbroker.x509.sealing")
    except ImportError as error:
        print(f"error: the broker is not installed here: {error}", file=err, flush=True)
        return 2
    try:
        if args.command == "backup":
            lines = commands.backup_command(
                commands.database_path(args.db), args.path, force=args.force, pg_dump=args.pg_dump
            )
        elif args.command == "generate-kek":
            lines = commands.generate_kek_command(args.path)
        else:
            lines = commands.rotate_kek_command(
                commands.database_path(args.db),
                commands.kek_path(args.kek),
                args.new_kek,
                batch_size=args.batch_size,
            )
    except (errors.OpsError, sealing.KekError) as error:
        print(f"error: {error}", file=err, flush=True)
        return 1
    for line in lines:
        print(line, file=out, flush=True)
    return 0
