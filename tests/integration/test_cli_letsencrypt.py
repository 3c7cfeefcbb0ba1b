"""The ``certbroker`` CLI waiting on Let's Encrypt for real: Pebble, challtestsrv, a broker.

``domains-add --wait`` follows WatchStatus from Pending DNS to In use;
``domains-renew`` on a failing domain asks for the next attempt now, and a
second one within the broker's forced-retry interval is refused with the
wait printed ("try again in 10 min"). The broker runs in-process (this
test's event loop); the CLI is a subprocess, as a person runs it.
"""

from __future__ import annotations

from pathlib import Path

from tests.broker import started_broker
from tests.client.clirun import assert_clean_error, run_async
from tests.infra.pebble import Pebble
from tests.integration.lab import Lab, unique_domain


async def test_add_wait_reaches_in_use_then_renew_says_not_due(lab: Lab, tmp_path: Path) -> None:
    name = unique_domain()
    async with started_broker(lab.settings(tmp_path)) as broker:
        addr = broker.address
        added = await run_async("--addr", addr, "--app", "shop", "domains-add", name, "--wait",
                                "--timeout", "60")  # fmt: skip
        assert added.returncode == 0, added
        lines = added.stdout.splitlines()
        assert lines[0].startswith(f"+0:00 {name}: Pending DNS")
        assert lines[-1] == "In use: a Let's Encrypt certificate serves, expires in 89 days"

        renew = await run_async("--addr", addr, "domains-renew", name)
        assert_clean_error(renew, 1, f"error: {name} is not due: its Let's Encrypt certificate")
        assert "expires in 89 days and is renewed automatically in 59 days" in renew.stderr

        table = await run_async("--addr", addr, "domains", "--app", "shop")
        row = next(line for line in table.stdout.splitlines() if line.startswith(name))
        assert "In use" in row and "in 89 days" in row


async def test_renew_of_a_failing_domain_then_refused_with_the_wait(
    lab: Lab, failing_ca: Pebble, tmp_path: Path
) -> None:
    """A CA whose validations fail (nothing answers its HTTP-01 port): a retryable failure,
    backing off. (A CAA record that forbids the CA is Action required instead: no failure.)"""
    name = unique_domain()
    settings = lab.settings(
        tmp_path, acme_directory=failing_ca.directory_url, acme_ca_bundle=failing_ca.ca_bundle_path
    )
    async with started_broker(settings) as broker:
        addr = broker.address
        added = await run_async("--addr", addr, "--app", "shop", "domains-add", name,
                                "--wait", "--timeout", "3")  # fmt: skip
        assert added.returncode == 124, added  # the CA keeps failing: it cannot settle
        assert "attempt 1 failed: ACME_" in added.stdout, added.stdout
        assert "; next try in " in added.stdout

        forced = await run_async("--addr", addr, "domains-renew", name, "--wait",
                                 "--timeout", "3")  # fmt: skip
        assert forced.returncode == 124, forced
        assert "attempt 2 failed: ACME_" in forced.stdout, forced.stdout

        again = await run_async("--addr", addr, "domains-renew", name)
        assert_clean_error(again, 1, "error: RESOURCE_EXHAUSTED (RETRY_TOO_SOON): ")
        assert again.stderr.splitlines()[-1] == "  try again in 10 min"
