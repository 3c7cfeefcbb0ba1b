"""HAProxy fed through its runtime API: certificates change without a reload, keys stay in memory.

HAProxy (2.2 and later; Debian bookworm ships 2.6) can create, replace and
remove certificates at run time on its admin socket (``stats socket ... level
admin``). Each name the broker serves becomes an in-memory certificate store
``<prefix><name>.pem`` and one line of the crt-list the HTTPS frontend binds
with, filtered to that name by SNI:

- add: ``new ssl cert S``, ``set ssl cert S <<PEM``, ``commit ssl cert S``, then
  ``add ssl crt-list L <<"S name"``. The certificate is complete before any
  handshake can pick it.
- replace: ``set`` + ``commit`` on the same store; HAProxy swaps the context of
  every line using it at once, so a handshake sees the old or the new one.
- remove: ``del ssl crt-list L S``, then ``del ssl cert S``.

Why an explicit SNI filter on each line: without one HAProxy indexes every
name in the certificate, so a custom certificate that also lists another
customer's name would capture it. With it, exactly one line answers for a name,
and ``*.example.com`` (stored as ``<prefix>_wildcard.example.com.pem``) answers
for one-label names only, the exact name winning over the wildcard (checked
against HAProxy 2.6).

Runtime changes live in HAProxy's memory: a reload or restart starts again from
the crt-list file. The agent notices (the worker's PID changes) within
``check_interval`` and pushes everything again.

Two traps of the 2.6 CLI, handled here: only one certificate transaction can
be open at a time (a ``set`` on another name while one is open is silently
applied to the open one, so the agent aborts any transaction it finds on its
own stores before working), and a payload too large for ``tune.bufsize``
(16 KiB by default) gets an empty answer rather than an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from certbroker_client.sync.follow import (
    Material,
    MaterialRejected,
    TargetUnavailable,
    file_stem,
    name_of_stem,
)

__all__ = ["CrtListEntry", "HAProxyRuntime", "HAProxyTarget"]

log = logging.getLogger("certbroker.sync.haproxy")

DEFAULT_PREFIX: Final = "certbroker/"
_PID: Final = re.compile(r"^Pid:\s*(\d+)\s*$", re.MULTILINE)
_SHA1: Final = re.compile(r"^SHA1 FingerPrint:\s*([0-9A-Fa-f]+)\s*$", re.MULTILINE)
_SAFE_WORD: Final = re.compile(r"^[^\s<>;]+$")


class HAProxyRuntime:
    """Commands on HAProxy's admin socket, one connection each, one at a time.

    One connection per command because that is the CLI's simplest mode (it
    answers and closes), and a local UNIX socket connect costs microseconds;
    one at a time because certificate transactions are global in HAProxy.
    """

    def __init__(self, socket_path: str, *, timeout: float = 10.0) -> None:
        self.socket_path = socket_path
        self._timeout = timeout
        self._lock = asyncio.Lock()

    async def command(self, line: str, payload: str | None = None) -> str:
        """Send one command (with a ``<<`` payload if given); HAProxy's answer, stripped.

        Raises :class:`TargetUnavailable` if the socket cannot be reached or
        does not answer in time.
        """
        if "\n" in line or (payload is not None and "\n\n" in payload):
            raise ValueError("a command is one line and a payload has no empty line")
        request = line + "\n" if payload is None else f"{line} <<\n{payload.rstrip()}\n\n"
        async with self._lock:
            try:
                async with asyncio.timeout(self._timeout):
                    reader, writer = await asyncio.open_unix_connection(self.socket_path)
                    try:
                        writer.write(request.encode())
                        await writer.drain()
                        if writer.can_write_eof():
                            writer.write_eof()
                        answer = await reader.read()
                    finally:
                        writer.close()
                        with contextlib.suppress(OSError):
                            await writer.wait_closed()
            except TimeoutError:
                raise TargetUnavailable(
                    f"HAProxy admin socket {self.socket_path}: no answer in {self._timeout:g}s"
                ) from None
            except OSError as error:
                reason = error.strerror or str(error)
                raise TargetUnavailable(
                    f"HAProxy admin socket {self.socket_path}: {reason}"
                ) from None
        return answer.decode(errors="replace").strip()


@dataclass(frozen=True)
class CrtListEntry:
    """One line of ``show ssl crt-list -n``: store, its line number, options and SNI filters."""

    store: str
    options: str = ""
    filters: tuple[str, ...] = ()
    line: int | None = None


def parse_crt_list(text: str) -> list[CrtListEntry]:
    """Parse ``show ssl crt-list [-n] <list>``: ``store[:line] [opts ...] filter ...`` per line."""
    entries: list[CrtListEntry] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        store, _, rest = line.partition(" ")
        number: int | None = None
        head, colon, tail = store.rpartition(":")
        if colon and tail.isdigit():
            store, number = head, int(tail)
        options = ""
        rest = rest.strip()
        if rest.startswith("["):
            end = rest.find("]")
            options, rest = (rest, "") if end < 0 else (rest[: end + 1], rest[end + 1 :])
        entries.append(CrtListEntry(store, options, tuple(rest.split()), number))
    return entries


def parse_cert_list(text: str) -> tuple[set[str], set[str]]:
    """Parse ``show ssl cert``: (stores, stores with an open transaction)."""
    stores: set[str] = set()
    transactions: set[str] = set()
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#"):
            section = line.lstrip("# ").strip()
            continue
        if not line:
            continue
        if section == "transaction":
            transactions.add(line.lstrip("*"))
        else:
            stores.add(line)
    return stores, transactions


class HAProxyTarget:
    """A :class:`~certbroker_client.sync.follow.SyncTarget` over HAProxy's runtime API.

    It owns the stores whose names start with ``prefix`` and the crt-list lines
    using them; everything else (the default certificate the list starts with)
    is the operator's and never touched.
    """

    kind = "haproxy"

    def __init__(
        self, runtime: HAProxyRuntime, crt_list: str, prefix: str = DEFAULT_PREFIX
    ) -> None:
        if not _SAFE_WORD.match(crt_list):
            raise ValueError(f"crt-list {crt_list!r}: no spaces, '<', '>' or ';'")
        if not prefix or not _SAFE_WORD.match(prefix):
            raise ValueError(f"prefix {prefix!r}: not empty, no spaces, '<', '>' or ';'")
        self.runtime = runtime
        self.crt_list = crt_list
        self.prefix = prefix
        # What this agent knows HAProxy holds, valid while HAProxy keeps the same
        # worker (its PID): name -> digest committed (a reconcile skips unchanged
        # names), and the stores with their one filtered crt-list line.
        self._committed: dict[str, str] = {}
        self._listed: set[str] = set()
        self._pid: int | None = None

    def store_of(self, name: str) -> str:
        return f"{self.prefix}{file_stem(name)}.pem"

    def name_of(self, store: str) -> str | None:
        """The domain an owned store serves (None if the store is not this agent's)."""
        if not store.startswith(self.prefix) or not store.endswith(".pem"):
            return None
        return name_of_stem(store[len(self.prefix) : -len(".pem")])

    # -- queries ----------------------------------------------------------------------

    async def pid(self) -> int:
        answer = await self.runtime.command("show info")
        found = _PID.search(answer)
        if found is None:
            raise TargetUnavailable(f"HAProxy 'show info' has no Pid: {answer[:200]!r}")
        return int(found.group(1))

    async def crt_list_entries(self) -> list[CrtListEntry]:
        answer = await self.runtime.command(f"show ssl crt-list -n {self.crt_list}")
        if not answer.startswith("#"):
            raise TargetUnavailable(f"crt-list {self.crt_list} in HAProxy: {answer[:200]}")
        return parse_crt_list(answer)

    async def stores(self) -> tuple[set[str], set[str]]:
        return parse_cert_list(await self.runtime.command("show ssl cert"))

    async def fingerprint(self, store: str) -> str | None:
        """SHA-1 of the leaf a store holds (HAProxy's own id for it), None if unreadable."""
        found = _SHA1.search(await self.runtime.command(f"show ssl cert {store}"))
        return found.group(1).upper() if found else None

    # -- primitive changes -------------------------------------------------------------

    async def _abort(self, store: str) -> None:
        await self.runtime.command(f"abort ssl cert {store}")

    async def _load(self, store: str, material: Material) -> None:
        """``set`` + ``commit``: the store serves ``material`` (MaterialRejected if refused)."""
        answer = await self.runtime.command(f"set ssl cert {store}", material.bundle)
        if answer not in (
            f"Transaction created for certificate {store}!",
            f"Transaction updated for certificate {store}!",
        ):
            await self._abort(store)
            other = re.search(r"for certificate (\S+?)!", answer)
            if other and other.group(1) != store:
                await self._abort(other.group(1))  # another transaction took our payload
            raise MaterialRejected(
                answer
                or f"no answer to 'set ssl cert' ({len(material.bundle)} bytes of PEM: "
                "unparsable, or larger than HAProxy's tune.bufsize)"
            )
        answer = await self.runtime.command(f"commit ssl cert {store}")
        if "Success!" not in answer:
            await self._abort(store)
            raise MaterialRejected(" ".join(answer.split()) or "no answer to 'commit ssl cert'")

    async def _create(self, store: str) -> None:
        answer = await self.runtime.command(f"new ssl cert {store}")
        if not answer.startswith("New empty certificate store") and "already exists" not in answer:
            raise TargetUnavailable(f"new ssl cert {store}: {answer}")

    async def _list_add(self, store: str, name: str) -> None:
        answer = await self.runtime.command(f"add ssl crt-list {self.crt_list}", f"{store} {name}")
        if "Success!" not in answer:
            raise TargetUnavailable(f"add ssl crt-list {self.crt_list} {store}: {answer}")
        self._listed.add(store)

    async def _list_del(self, store: str, line: int | None = None) -> None:
        """Delete a store's line (by number when HAProxy holds several for it)."""
        where = store if line is None else f"{store}:{line}"
        answer = await self.runtime.command(f"del ssl crt-list {self.crt_list} {where}")
        if "deleted" not in answer and "does not exist" not in answer:
            raise TargetUnavailable(f"del ssl crt-list {self.crt_list} {where}: {answer}")
        self._listed.discard(store)

    async def _delete(self, store: str) -> None:
        answer = await self.runtime.command(f"del ssl cert {store}")
        if "deleted!" not in answer and "doesn't exist" not in answer:
            raise TargetUnavailable(f"del ssl cert {store}: {answer}")

    async def _add(self, store: str, material: Material) -> None:
        """A new name: a complete certificate first, then the crt-list line that serves it."""
        await self._create(store)
        try:
            await self._load(store, material)
        except MaterialRejected:
            with contextlib.suppress(TargetUnavailable):
                await self._delete(store)  # no empty store left behind
            raise
        await self._list_add(store, material.name)

    # -- SyncTarget ---------------------------------------------------------------------

    async def apply(self, material: Material) -> None:
        store = self.store_of(material.name)
        if store in self._listed:
            await self._load(store, material)  # in place: handshakes see old or new
        else:
            await self._add(store, material)
        self._committed[material.name] = material.digest

    async def remove(self, name: str) -> None:
        store = self.store_of(name)
        await self._list_del(store)
        await self._delete(store)
        self._committed.pop(name, None)

    async def drifted(self) -> bool:
        return await self.pid() != self._pid

    async def reconcile(self, desired: Mapping[str, Material]) -> None:
        pid = await self.pid()
        if pid != self._pid:
            self._committed.clear()  # a new worker: nothing we committed survives
            self._pid = pid
        self._listed.clear()
        stores, transactions = await self.stores()
        for store in transactions:
            if self.name_of(store) is not None:
                await self._abort(store)  # left open by an agent killed mid-change
        wanted = {self.store_of(name): material for name, material in desired.items()}
        lines: dict[str, list[CrtListEntry]] = {}
        for entry in await self.crt_list_entries():
            if self.name_of(entry.store) is not None:
                lines.setdefault(entry.store, []).append(entry)
        # Lines to drop: stores no longer wanted, and wanted ones whose line is not
        # exactly ours (no SNI filter, another filter, duplicates). Highest line
        # first, so the numbers of the lines still to delete do not move.
        drop: list[CrtListEntry] = []
        removed = 0
        for store, found in lines.items():
            material = wanted.get(store)
            if material is None:
                drop.extend(found)
                removed += 1
            elif len(found) == 1 and found[0].filters == (material.name,):
                self._listed.add(store)
            else:
                drop.extend(found)
        for entry in sorted(drop, key=lambda e: e.line or 0, reverse=True):
            await self._list_del(entry.store, entry.line if len(lines[entry.store]) > 1 else None)
        for store in sorted(stores - set(wanted)):
            if self.name_of(store) is not None:
                await self._delete(store)
        for name in set(self._committed) - set(desired):
            del self._committed[name]
        added = updated = rejected = 0
        for store, material in sorted(wanted.items()):
            try:
                if store not in stores:
                    await self._create(store)
                    await self._load(store, material)
                    added += 1
                elif self._committed.get(
                    material.name
                ) != material.digest and material.leaf_sha1 != await self.fingerprint(store):
                    await self._load(store, material)
                    updated += 1
                self._committed[material.name] = material.digest
            except MaterialRejected as error:
                rejected += 1
                log.error("haproxy refused the certificate of %s: %s", material.name, error)
                if store not in stores:
                    with contextlib.suppress(TargetUnavailable):
                        await self._delete(store)
                    continue
            if store not in self._listed:
                await self._list_add(store, material.name)
        if added or updated or removed or rejected:
            log.info(
                "haproxy reconciled with %d names: %d added, %d updated, %d removed, %d refused",
                len(desired),
                added,
                updated,
                removed,
                rejected,
            )
