"""The image's defaults, checked without a Docker engine.

Its environment (the Dockerfile's ENV) must refuse to start a plaintext
management port and say what to set; its HEALTHCHECK command, run as written,
must report a local broker's health, an mTLS broker's included.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import sys
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2

from tests.broker import broker_settings, started_broker
from tests.infra.ports import free_port
from tests.tls import MtlsFiles

ROOT = Path(__file__).resolve().parents[1]


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the final stage, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    last_from = max(i for i, ln in enumerate(lines) if ln.startswith("FROM "))
    return [tuple(ln.split(None, 1)) for ln in lines[last_from:]]  # type: ignore[misc]


def _image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction, args in _instructions():
        if instruction == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(args))
    return env


def _healthcheck_command() -> list[str]:
    (args,) = [a for i, a in _instructions() if i == "HEALTHCHECK"]
    command: list[str] = json.loads(args.split(" CMD ", 1)[1])
    assert command[0] == "python"
    return [sys.executable, *command[1:]]


async def _run(command: list[str], env: dict[str, str]) -> tuple[int, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CERTBROKER_")}
    proc = await asyncio.create_subprocess_exec(
        *command,
        env={**base, **env},
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


async def test_the_image_refuses_plaintext_on_all_interfaces_and_says_what_to_set(
    tmp_path: Path,
) -> None:
    env = _image_env()
    assert env["CERTBROKER_LISTEN"].startswith("0.0.0.0:")
    env.pop("PATH")
    env.update(CERTBROKER_DB=str(tmp_path / "db"), CERTBROKER_KEK_FILE=str(tmp_path / "kek"))
    code, out = await _run([sys.executable, "-m", "certbroker.server"], env)
    assert code == 2, out
    assert "set CERTBROKER_TLS_CERT/_KEY/_CLIENT_CA or CERTBROKER_ALLOW_PLAINTEXT=1" in out
    assert not (tmp_path / "db").exists()  # refused before anything was created


async def test_healthcheck_command_reports_a_local_broker(tmp_path: Path) -> None:
    command = _healthcheck_command()
    async with started_broker(broker_settings(tmp_path)) as broker:
        env = {"CERTBROKER_HEALTH_LISTEN": f"127.0.0.1:{broker.running.health_port}"}
        code, out = await _run(command, env)
        assert code == 0, out
        await broker.running.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        code, out = await _run(command, env)
        assert code == 1 and "NOT_SERVING" in out
    code, out = await _run(command, {"CERTBROKER_HEALTH_LISTEN": f"127.0.0.1:{free_port()}"})
    assert code == 1 and "UNAVAILABLE" in out


async def test_healthcheck_command_works_on_an_mtls_broker(tmp_path: Path) -> None:
    """The old check spoke plaintext to the main port and always failed on mTLS."""
    mtls = MtlsFiles(tmp_path / "tls")
    server = mtls.issue("broker", server=True)
    settings = broker_settings(
        tmp_path,
        tls_cert=str(server.cert),
        tls_key=str(server.key),
        tls_client_ca=str(mtls.ca),
        roles={"router-1": "router"},
    )
    async with started_broker(settings) as broker:
        env = {"CERTBROKER_HEALTH_LISTEN": f"127.0.0.1:{broker.running.health_port}"}
        code, out = await _run(_healthcheck_command(), env)
        assert code == 0, out


@pytest.mark.parametrize("listen", ["off", "nonsense"])
async def test_healthcheck_command_without_a_listener_fails(listen: str) -> None:
    code, out = await _run(_healthcheck_command(), {"CERTBROKER_HEALTH_LISTEN": listen})
    assert code == 1 and "CERTBROKER_HEALTH_LISTEN" in out
