"""Dns01Publisher against a real BIND: platform names written in place, labels by delegation.

One ``named`` holds the broker's delegation zone and a platform zone
(``osc-fr1.example.test``); the broker's key may write TXT in both.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from certbroker.acme.dns01 import UPDATE_REFUSED, Dns01Error, Dns01Publisher, Dns01Updater, TsigKey
from certbroker.delegation import LabelKey
from tests.infra.bind import Bind

PLATFORM_ZONE = "osc-fr1.example.test"
CHALLENGE = f"_acme-challenge.{PLATFORM_ZONE}"
LABEL = LabelKey(bytes(32)).label("shop", "*.w.example.test")


@pytest.fixture(scope="module")
def bind() -> Iterator[Bind]:
    with Bind.running(platform_zones=(PLATFORM_ZONE,)) as server:
        yield server


def updater(bind: Bind, zone: str) -> Dns01Updater:
    key = TsigKey.parse(bind.broker_key.bind_text())
    return Dns01Updater(zone, ("127.0.0.1", bind.port), key, visible_timeout=5)


def publisher(bind: Bind, *, delegation: bool = True) -> Dns01Publisher:
    delegated = updater(bind, bind.challenge_zone) if delegation else None
    return Dns01Publisher(delegated, {CHALLENGE: updater(bind, PLATFORM_ZONE)})


async def test_a_platform_challenge_name_is_written_where_the_ca_looks(bind: Bind) -> None:
    dns01 = publisher(bind)
    await dns01.check_access(CHALLENGE)
    await dns01.publish(CHALLENGE, "value-1")
    await dns01.publish(CHALLENGE, "value-2")  # values are added, never replaced
    assert sorted(bind.query(CHALLENGE, "TXT")) == ['"value-1"', '"value-2"']
    assert bind.query(f"{LABEL}.{bind.challenge_zone}", "TXT") == []  # nothing by delegation
    await dns01.unpublish(CHALLENGE, "value-1")
    assert bind.query(CHALLENGE, "TXT") == ['"value-2"']
    await dns01.unpublish(CHALLENGE, "value-2")
    assert bind.query(CHALLENGE, "TXT") == []


async def test_a_delegation_label_still_goes_to_the_delegation_zone(bind: Bind) -> None:
    dns01 = publisher(bind)
    assert dns01.zone == bind.challenge_zone and dns01.delegates
    target = f"{LABEL}.{bind.challenge_zone}"
    await dns01.publish(LABEL, "delegated")
    assert bind.query(target, "TXT") == ['"delegated"']
    assert bind.query(CHALLENGE, "TXT") == []
    await dns01.unpublish(LABEL, "delegated")


async def test_without_a_delegation_zone_only_platform_names_are_written(bind: Bind) -> None:
    dns01 = publisher(bind, delegation=False)
    assert dns01.zone == "" and not dns01.delegates
    await dns01.check_access(CHALLENGE)
    with pytest.raises(Dns01Error) as caught:
        await dns01.publish(LABEL, "nowhere")
    assert caught.value.reason == UPDATE_REFUSED
    assert "CERTBROKER_DNS01_ZONE" in caught.value.detail


async def test_no_other_name_of_the_platform_zone_can_be_reached(bind: Bind) -> None:
    """Only registered challenge names route to the platform zone; anything else is a label,
    and a name with dots is not one (the delegation updater refuses it before any update)."""
    dns01 = publisher(bind)
    for name in (f"_acme-challenge.other.{PLATFORM_ZONE}", f"www.{PLATFORM_ZONE}"):
        with pytest.raises(ValueError, match="not a delegation label"):
            await dns01.publish(name, "x")
        assert bind.query(name, "TXT") == []
    with pytest.raises(ValueError, match="not in the zone"):
        await updater(bind, PLATFORM_ZONE).publish_at("_acme-challenge.example.test", "x")
