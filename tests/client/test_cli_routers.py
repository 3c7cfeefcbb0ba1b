"""``certbroker routers`` and the routers line of ``certbroker status``, against a real broker.

The session broker runs in plaintext, where every caller is ``local`` and may
report (as a router on a developer's machine would).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from certbroker.clock import FakeClock
from certbroker_client.client import BrokerClient
from tests.broker import broker_settings, started_broker
from tests.client.conftest import RunningBroker
from tests.pki import NOW

_SCRIPT = Path(sys.executable).parent / "certbroker"
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "certbroker_client.cli"]


def run(*args: str, addr: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTBROKER_")}
    return subprocess.run(
        [*CLI, "--addr", addr, *args], capture_output=True, text=True, env=env, timeout=30
    )


async def _report(addr: str, domain: str) -> int:
    async with BrokerClient.connect(addr, timeout=10) as client:
        added = await client.issue_certificate(domain, "shop", disable_letsencrypt=True)
        await client.report_serving("cli-edge-ahead", added.revision, 7)
        await client.report_serving("cli-edge-behind", added.revision - 1, 6)
        return added.revision


def test_routers_table_json_and_status_line(broker: RunningBroker) -> None:
    domain = "www.cli-routers.example.com"
    revision = asyncio.run(_report(broker.addr, domain))

    table = run("routers", addr=broker.addr)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == [
        "ROUTER",
        "IDENTITY",
        "APPLIED",
        "LAG",
        "DOMAINS",
        "LAST",
        "SEEN",
        "STATE",
    ]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    ahead, behind = rows["cli-edge-ahead"], rows["cli-edge-behind"]
    assert (ahead[1:3], ahead[4]) == (["local", str(revision)], "7")
    assert (behind[1:3], behind[4]) == (["local", str(revision - 1)], "6")
    # Lag counts from the broker's current revision, which background work may move on.
    assert int(behind[3]) == int(ahead[3]) + 1
    assert ahead[-1] == behind[-1] == "live"

    listed = run("routers", "--json", addr=broker.addr)
    assert listed.returncode == 0, listed.stderr
    routers = {r["routerId"]: r for r in json.loads(listed.stdout)["routers"]}
    behind_lag, ahead_lag = (
        routers["cli-edge-behind"]["lag"],
        routers["cli-edge-ahead"].get("lag", "0"),
    )
    assert int(behind_lag) == int(ahead_lag) + 1  # int64 is a string in proto JSON
    assert routers["cli-edge-ahead"]["live"] is True

    status = run("status", domain, addr=broker.addr)
    assert status.returncode == 0, status.stderr
    assert "Routers:         1 of 2 serve this revision" in status.stdout


async def test_routers_follows_every_page(tmp_path: Path) -> None:
    """More routers than one ListRouters page (1000): the CLI lists them all, once each.

    Its own in-process broker, so the session broker's router counts stay as other tests expect.
    """
    ids = sorted(f"page-edge-{n:04d}" for n in range(1005))
    async with (
        started_broker(broker_settings(tmp_path), FakeClock(NOW)) as broker,
        BrokerClient.connect(broker.address, timeout=30) as client,
    ):
        for start in range(0, len(ids), 250):
            await asyncio.gather(
                *(client.report_serving(i, 0, 0) for i in ids[start : start + 250])
            )
        env = {k: v for k, v in os.environ.items() if not k.startswith("CERTBROKER_")}
        for extra in ([], ["--json"]):
            cli = await asyncio.create_subprocess_exec(
                *CLI, "--addr", broker.address, "routers", *extra,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
            )  # fmt: skip
            async with asyncio.timeout(30):
                out, err = await cli.communicate()
            assert cli.returncode == 0, err.decode()
            if extra:
                listed = [r["routerId"] for r in json.loads(out)["routers"]]
            else:
                listed = [line.split()[0] for line in out.decode().splitlines()[1:]]
            assert listed == ids
