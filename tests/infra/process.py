"""What every test server process shares: stop by PID, clean up, context managers.

Pebble, challtestsrv and named differ in how they start and when they are ready;
how they stop and how fixtures hold them is the same, so it lives here once.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self


class ServerProcess:
    """Base for a server subprocess; subclasses set ``_proc`` in ``start()``."""

    _proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def log_path(self) -> Path:
        raise NotImplementedError

    def log_text(self) -> str:
        """The process's output so far ("" before start or after cleanup)."""
        try:
            return self.log_path.read_text(errors="replace")
        except (OSError, RuntimeError, AssertionError):
            return ""

    def _cleanup(self) -> None:
        """Remove what ``start()`` created on disk (temporary directories)."""

    def stop(self) -> None:
        """Stop the process by its PID (TERM, then KILL) and remove its files."""
        self._kill()
        self._cleanup()

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @classmethod
    @contextmanager
    def running(cls, **kwargs: Any) -> Iterator[Self]:
        """For fixtures: always stops the process, even when the test fails."""
        server = cls(**kwargs)
        try:
            yield server.start()
        finally:
            server.stop()
