"""``make run`` talks to Let's Encrypt staging unless told otherwise, and says so."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"


def _make_run(**extra: str) -> list[str]:
    """What ``make run``'s recipe prints and the environment it gives the broker."""
    # Under ``make test`` the parent make's MAKEFLAGS/MAKELEVEL would make the
    # child print "make[1]: Entering directory" lines into the recipe we run.
    inherited = ("CERTBROKER_", "MAKE", "MFLAGS")
    env = {k: v for k, v in os.environ.items() if not k.startswith(inherited)}
    env.update(extra)

    def sh(argv: list[str]) -> str:
        done = subprocess.run(
            argv, cwd=ROOT, env=env, capture_output=True, text=True, check=True, timeout=30
        )
        return done.stdout

    # -n: print the recipe, run nothing; -o python-deps: install nothing either
    recipe = sh(["make", "--no-print-directory", "-n", "-o", "python-deps", "run"])
    return sh(["bash", "-c", recipe.replace(".venv/bin/certbroker serve", "env")]).splitlines()


def test_make_run_defaults_to_staging_and_says_so() -> None:
    lines = _make_run()
    assert any(
        line.startswith(f"make run: using Let's Encrypt STAGING ({STAGING})") for line in lines
    )
    assert f"CERTBROKER_ACME_DIRECTORY={STAGING}" in lines


def test_make_run_keeps_a_directory_given() -> None:
    lines = _make_run(CERTBROKER_ACME_DIRECTORY="https://ca.internal/directory")
    assert not any("STAGING" in line for line in lines)
    assert "CERTBROKER_ACME_DIRECTORY=https://ca.internal/directory" in lines
