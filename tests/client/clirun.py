"""Running the ``certbroker`` CLI as a subprocess, the way a person or a script does.

Shared by the CLI tests: the installed script (or ``python -m`` where it is
not installed), a clean environment without the caller's ``CERTBROKER_*`` and
``GRPC_*`` variables, and a reader for the lines of a command still running.
"""

from __future__ import annotations

import asyncio
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

_SCRIPT = Path(sys.executable).parent / "certbroker"
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "certbroker_client.cli"]


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CERTBROKER_") and k not in ("GRPC_VERBOSITY", "GRPC_TRACE")
    }
    base.update(extra or {})
    return base


def run(
    *args: str, addr: str | None = None, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """``certbroker [--addr ADDR] ARGS...``; ``--addr`` first, as a global option."""
    argv = [*CLI, *(["--addr", addr] if addr else []), *args]
    return subprocess.run(argv, capture_output=True, text=True, env=cli_env(env), timeout=timeout)


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


async def run_async(*args: str, timeout: float = 60) -> Result:
    """The CLI from a test whose event loop runs an in-process broker (must not block it)."""
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(),
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


def assert_clean_error(
    result: subprocess.CompletedProcess[str] | Result, code: int, head: str
) -> None:
    assert result.returncode == code, result
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert result.stderr.splitlines()[0].startswith(head), result.stderr


class Lines:
    """Lines of a running process's stdout, read on a thread so waits have deadlines."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self._queue: queue.Queue[str] = queue.Queue()
        assert proc.stdout is not None
        stream = proc.stdout

        def pump() -> None:
            for line in stream:
                self._queue.put(line)

        threading.Thread(target=pump, daemon=True).start()

    def until(self, predicate: Callable[[str], bool], timeout: float = 15) -> list[str]:
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            seen.append(line.rstrip("\n"))
            if predicate(seen[-1]):
                return seen
        raise AssertionError(f"no matching line within {timeout}s; saw {seen}")
