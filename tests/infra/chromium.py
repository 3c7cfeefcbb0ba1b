"""Headless Chromium (Debian's ``chromium``) loading a page as a visitor's browser would.

Trust comes from an NSS database in a temporary HOME (``$HOME/.pki/nssdb``,
made with ``certutil`` from ``libnss3-tools``), so a test decides exactly
which roots the browser trusts; names are pinned to loopback ports with
``--host-resolver-rules``, so ``https://shop.example.test/`` reaches the proxy
under test with no DNS and no port in the URL. Each load is its own browser
process with a fresh profile (no cached connection or certificate decision).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

BINARY = shutil.which("chromium") or "/usr/bin/chromium"
CERTUTIL = shutil.which("certutil") or "/usr/bin/certutil"
_NET_ERROR = re.compile(r"(ERR_[A-Z_]+)|net_error (-\d+)")


def make_home(home: Path, roots: dict[str, bytes]) -> Path:
    """A HOME whose NSS database trusts exactly ``roots`` (nickname -> PEM) for TLS servers."""
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    database = f"sql:{nssdb}"
    subprocess.run(
        [CERTUTIL, "-N", "-d", database, "--empty-password"], check=True, capture_output=True
    )
    for nickname, pem in roots.items():
        path = home / f"{nickname}.pem"
        path.write_bytes(pem)
        subprocess.run(
            [CERTUTIL, "-A", "-d", database, "-n", nickname, "-t", "C,,", "-i", str(path)],
            check=True,
            capture_output=True,
        )
    return home


@dataclass(frozen=True)
class Load:
    """What one headless load produced: the DOM (empty if the page failed) and the log."""

    dom: str
    log: str
    returncode: int | None

    def net_errors(self) -> list[str]:
        """``ERR_CERT_AUTHORITY_INVALID`` and the like, as Chromium logged them."""
        return [a or b for a, b in _NET_ERROR.findall(self.log)]


async def load(
    url: str, *, home: Path, host: str, port: int, profile: Path, timeout: float = 60.0
) -> Load:
    """Load ``url`` with ``host:443`` mapped to ``127.0.0.1:port``; the DOM Chromium ended with."""
    env = dict(os.environ, HOME=str(home))
    proc = await asyncio.create_subprocess_exec(
        BINARY, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-extensions", f"--user-data-dir={profile}",
        f"--host-resolver-rules=MAP {host}:443 127.0.0.1:{port}",
        "--dump-dom", url,
        env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        # The browser's own session: its renderer and zygote go with it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        raise
    return Load(out.decode(errors="replace"), err.decode(errors="replace"), proc.returncode)
