"""The broker raises its own open-file soft limit to the hard limit, and says so."""

from __future__ import annotations

import logging
import resource
from collections.abc import Iterator

import pytest

from certbroker.rlimits import raise_open_files_limit


@pytest.fixture
def limits() -> Iterator[tuple[int, int]]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        yield soft, hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_low_soft_limit_is_raised_to_the_hard_limit(
    limits: tuple[int, int], caplog: pytest.LogCaptureFixture
) -> None:
    _, hard = limits
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip("hard limit too low to lower the soft one under it")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    caplog.set_level(logging.INFO, logger="certbroker.rlimits")
    new = raise_open_files_limit()
    assert new > 256
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (new, hard)
    assert f"from 256 to {new}" in caplog.text


def test_a_soft_limit_already_at_the_hard_limit_is_left_alone(
    limits: tuple[int, int], caplog: pytest.LogCaptureFixture
) -> None:
    _, hard = limits
    if hard == resource.RLIM_INFINITY:
        pytest.skip("an unlimited hard limit is raised to a fixed target instead")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    caplog.set_level(logging.INFO, logger="certbroker.rlimits")
    assert raise_open_files_limit() == hard
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    assert caplog.text == ""
