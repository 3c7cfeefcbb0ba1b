"""The DNS-01 lab's helpers: a broker wired to BIND and Pebble, fresh names, delegations.

The ``bind`` and ``pebble`` fixtures (conftest) start the servers; see
test_wildcard.py's docstring for how they fit together.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

from certbroker import delegation
from certbroker.config import Settings
from tests.broker import BrokerHandle, broker_settings, label_key
from tests.infra.bind import Bind, BindKey
from tests.infra.pebble import Pebble

#: Fake clocks start this far ahead of the real one: Pebble's certificates begin
#: at its real "now", which must not be in the fake clock's future.
AHEAD = timedelta(seconds=5)


def base_name() -> str:
    return f"w{uuid.uuid4().hex[:10]}.example.test"


def dns01_settings(tmp: Path, bind: Bind, pebble: Pebble, key: BindKey | None = None) -> Settings:
    key_file = Bind.write_key_file(tmp / "tsig.key", key or bind.broker_key)
    return broker_settings(
        tmp,
        acme_directory=pebble.directory_url,
        acme_ca_bundle=pebble.ca_bundle_path,
        dns_servers=(("127.0.0.1", bind.port),),
        platform_targets=("127.0.0.1",),
        dns01_zone=bind.challenge_zone,
        dns01_server=("127.0.0.1", bind.port),
        dns01_tsig_key=str(key_file),
    )


async def delegate(broker: BrokerHandle, bind: Bind, name: str, app: str = "shop") -> str:
    """The customer creates the record ``app``'s request for ``name`` will ask for."""
    label = (await label_key(broker)).label(app, name)
    target = delegation.target(label, bind.challenge_zone)
    bind.set_cname(delegation.challenge_name(name), target)
    return target
