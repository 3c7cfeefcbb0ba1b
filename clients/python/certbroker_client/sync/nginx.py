"""nginx fed through files it loads per handshake: certificates change without a reload.

Since 1.15.9 nginx accepts variables in ``ssl_certificate``: with
``ssl_certificate /run/certbroker/nginx/$certbroker_name.pem`` it opens that
file at each handshake, by SNI. The agent keeps the directory equal to what the
broker serves, one ``<name>.pem`` (chain then key) per name:

- each file is written atomically: a temporary file in the same directory
  (0600, or 0640 with ``group``), written, fsynced, renamed over the old one,
  then the directory fsynced. A handshake opens either the old file or the new
  one, never a half-written one.
- removed names lose their file; at start (and every ``resync_interval``) the
  directory is reconciled with the broker's snapshot, leftover temporary files
  of a killed agent included.

The directory holds private keys: mount it on tmpfs (RAM only, gone at
reboot, which the snapshot at start repairs) so keys never reach a disk.

Wildcards. ``$ssl_server_name`` is the name the client asked for, so a file
cannot be found for ``a.example.com`` when only ``*.example.com`` exists. The
agent writes the wildcard's certificate as ``_wildcard.example.com.pem`` and,
with ``map_file``, an nginx ``map`` fragment routing one-label names under a
wildcard to it (and names with their own certificate under that wildcard to
themselves, since an exact name wins). The fragment changes only when a
wildcard is added or removed, or a name with its own certificate appears
under one; nginx reads it at (re)load, so the agent then runs
``reload_command`` (e.g. ``nginx -s reload``) if given, or logs that a reload
is needed. Every other change needs no reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
import re
import secrets
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

from certbroker_client.sync.follow import (
    Material,
    TargetUnavailable,
    file_stem,
    name_of_stem,
)

__all__ = ["NginxTarget", "render_map", "write_atomic"]

log = logging.getLogger("certbroker.sync.nginx")

SUFFIX: Final = ".pem"
TEMP_PREFIX: Final = ".certbroker-tmp-"


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600, gid: int | None = None) -> None:
    """Replace ``path`` with ``data`` so that a reader sees the old or the new content, whole.

    The temporary file is created with its final permissions (never briefly
    readable by others), fsynced before the rename, and the directory fsynced
    after it, so a crash leaves the old file or the new one, not an empty one.
    """
    folder = path.parent
    temp = folder / f"{TEMP_PREFIX}{path.name}.{secrets.token_hex(4)}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            if gid is not None:
                os.fchown(fd, -1, gid)
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    fsync_dir(folder)


def fsync_dir(folder: Path) -> None:
    """Make a rename or unlink in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def render_map(names: Sequence[str]) -> str:
    """The ``map`` lines sending SNI names to wildcard certificates (see the module docstring).

    For each ``*.p``: a regex for exactly one label under ``p`` (as a browser
    matches a wildcard), mapped to ``_wildcard.p``. For each exact name under
    such a ``p``: itself, because in an nginx ``map`` exact strings win over
    regexes. Other names need no line: the operator's catch-all maps them to
    themselves.
    """
    wildcards = sorted(name[2:] for name in names if name.startswith("*."))
    if not wildcards:
        return ""  # as the operator creates it: no reload for platforms without wildcards
    parents = set(wildcards)
    lines = ["# written by certbroker sync nginx: do not edit"]
    for parent in wildcards:
        pattern = "^[a-z0-9-]+\\." + re.escape(parent).replace("\\-", "-") + "$"
        lines.append(f'"~{pattern}" {file_stem("*." + parent)};')
    for name in sorted(names):
        if not name.startswith("*.") and name.partition(".")[2] in parents:
            lines.append(f"{name} {name};")
    return "\n".join(lines) + "\n"


class NginxTarget:
    """A :class:`~certbroker_client.sync.follow.SyncTarget` over a directory nginx reads.

    The directory is the agent's: every ``*.pem`` in it that is named after a
    domain (or ``_wildcard.``) and not served is removed. Keep the default
    certificate elsewhere.
    """

    kind = "nginx"

    def __init__(
        self,
        directory: Path,
        *,
        group: str | None = None,
        map_file: Path | None = None,
        reload_command: str | None = None,
    ) -> None:
        """``group``: files 0640 with this group (nginx's workers), else 0600 for this user."""
        self.directory = directory
        self._gid = grp.getgrnam(group).gr_gid if group else None
        self._mode = 0o640 if group else 0o600
        self.map_file = map_file
        self._reload = shlex.split(reload_command) if reload_command else None
        # name -> (digest, stat identity) of what this agent wrote: lets a
        # periodic reconcile skip files nobody touched without reading them.
        self._written: dict[str, tuple[str, tuple[int, int, int]]] = {}
        self._map_text: str | None = None
        self._warned_wildcard = False
        self.reloads = 0

    def path_of(self, name: str) -> Path:
        return self.directory / f"{file_stem(name)}{SUFFIX}"

    def _check_directory(self) -> None:
        if not self.directory.is_dir():
            raise TargetUnavailable(f"{self.directory} is not a directory")

    def _write(self, material: Material) -> None:
        path = self.path_of(material.name)
        try:
            write_atomic(path, material.bundle.encode(), mode=self._mode, gid=self._gid)
            info = path.stat()
        except OSError as error:
            raise TargetUnavailable(f"cannot write {path}: {error.strerror or error}") from None
        self._written[material.name] = (material.digest, _identity(info))

    def _unlink(self, path: Path) -> None:
        try:
            path.unlink(missing_ok=True)
            fsync_dir(path.parent)
        except OSError as error:
            raise TargetUnavailable(f"cannot remove {path}: {error.strerror or error}") from None

    async def apply(self, material: Material) -> None:
        self._check_directory()
        await asyncio.to_thread(self._write, material)
        await self._update_map()

    async def remove(self, name: str) -> None:
        self._check_directory()
        await asyncio.to_thread(self._unlink, self.path_of(name))
        self._written.pop(name, None)
        await self._update_map()

    async def drifted(self) -> bool:
        return False  # files do not vanish on an nginx reload; resync_interval covers the rest

    async def reconcile(self, desired: Mapping[str, Material]) -> None:
        self._check_directory()
        added, updated, removed = await asyncio.to_thread(self._reconcile_files, desired)
        await self._update_map()
        if added or updated or removed:
            log.info(
                "nginx directory %s reconciled with %d names: %d added, %d updated, %d removed",
                self.directory,
                len(desired),
                added,
                updated,
                removed,
            )

    def _reconcile_files(self, desired: Mapping[str, Material]) -> tuple[int, int, int]:
        present: dict[str, Path] = {}
        removed = 0
        try:
            listing = list(self.directory.iterdir())
        except OSError as error:
            raise TargetUnavailable(f"cannot list {self.directory}: {error}") from None
        for path in listing:
            if path.name.startswith(TEMP_PREFIX):
                self._unlink(path)  # left by an agent killed mid-write
                continue
            if not path.name.endswith(SUFFIX):
                continue
            name = name_of_stem(path.name[: -len(SUFFIX)])
            if name is None:
                continue  # not a name of ours: leave it
            if name in desired:
                present[name] = path
            else:
                self._unlink(path)
                self._written.pop(name, None)
                removed += 1
        added = updated = 0
        for name, material in desired.items():
            found = present.get(name)
            if found is None:
                self._write(material)
                added += 1
            elif not self._unchanged(found, material):
                self._write(material)
                updated += 1
        return added, updated, removed

    def _unchanged(self, path: Path, material: Material) -> bool:
        """True if ``path`` holds ``material`` with the right permissions (read only if unsure)."""
        try:
            info = path.stat()
        except OSError:
            return False
        if (info.st_mode & 0o777) != self._mode or (
            self._gid is not None and info.st_gid != self._gid
        ):
            return False
        written = self._written.get(material.name)
        if written is not None and written == (material.digest, _identity(info)):
            return True
        try:
            same = path.read_bytes() == material.bundle.encode()
        except OSError:
            return False
        if same:
            self._written[material.name] = (material.digest, _identity(info))
        return same

    async def _update_map(self) -> None:
        names = list(self._written)
        if self.map_file is None:
            if not self._warned_wildcard and any(n.startswith("*.") for n in names):
                self._warned_wildcard = True
                log.warning(
                    "serving a wildcard certificate needs the nginx map fragment: "
                    "give --map-file (see the README); until then it is written but unused"
                )
            return
        text = render_map(names)
        if text == self._map_text:
            return
        first = self._map_text is None
        try:
            current = self.map_file.read_text() if first else None
        except OSError:
            current = None
        self._map_text = text
        if current == text:
            return  # already right (an earlier run wrote it): nothing to reload
        try:
            await asyncio.to_thread(write_atomic, self.map_file, text.encode(), mode=0o644)
        except OSError as error:
            self._map_text = None
            raise TargetUnavailable(f"cannot write {self.map_file}: {error}") from None
        await self._reload_nginx()

    async def _reload_nginx(self) -> None:
        if self._reload is None:
            log.warning("%s changed: reload nginx to use it (no --reload-command)", self.map_file)
            return
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._reload,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            output, _ = await asyncio.wait_for(proc.communicate(), 30)
        except (OSError, TimeoutError) as error:
            log.error("reload command %s failed: %s", shlex.join(self._reload), error)
            return
        self.reloads += 1
        if proc.returncode != 0:
            log.error(
                "reload command %s exited %s: %s",
                shlex.join(self._reload),
                proc.returncode,
                output.decode(errors="replace").strip()[:500],
            )
        else:
            log.info("%s changed: nginx reloaded", self.map_file)


def _identity(info: os.stat_result) -> tuple[int, int, int]:
    return (info.st_ino, info.st_size, info.st_mtime_ns)
