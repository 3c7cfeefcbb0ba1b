"""RFC 2136 updates with TSIG against a real BIND: publish, wait, remove; clear refusals."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from certbroker import delegation
from certbroker.acme.dns01 import (
    NOT_VISIBLE,
    UPDATE_FAILED,
    UPDATE_REFUSED,
    Dns01Error,
    Dns01Updater,
    TsigKey,
)
from certbroker.delegation import LabelKey
from tests.infra.bind import Bind, BindKey
from tests.infra.ports import free_port

SECRET = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTEyMzQ="
KEY = LabelKey(bytes(32))


# -- key files ---------------------------------------------------------------------


def test_parses_what_tsig_keygen_prints() -> None:
    text = f'key "broker-key" {{\n\talgorithm hmac-sha256;\n\tsecret "{SECRET}";\n}};\n'
    key = TsigKey.parse(text)
    assert (key.name, key.algorithm, key.secret) == ("broker-key", "hmac-sha256", SECRET)
    assert SECRET not in repr(key)


def test_parses_one_line_name_algorithm_secret() -> None:
    key = TsigKey.parse(f"broker-key.:HMAC-SHA512:{SECRET}\n")
    assert (key.name, key.algorithm, key.secret) == ("broker-key", "hmac-sha512", SECRET)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", "expected a BIND key block"),
        ("just-a-name", "expected a BIND key block"),
        (f'key "k" {{ secret "{SECRET}"; }};', "algorithm"),
        (f"k:hmac-sha999:{SECRET}", "unsupported TSIG algorithm"),
        ("k:hmac-sha256:not base64!", "bad key name or secret"),
    ],
)
def test_bad_key_files_say_what_is_wrong(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error) as caught:
        TsigKey.parse(text)
    assert SECRET not in str(caught.value)


# -- against BIND ------------------------------------------------------------------


@pytest.fixture(scope="module")
def bind() -> Iterator[Bind]:
    with Bind.running() as server:
        yield server


def updater(bind: Bind, key: BindKey | None = None, **kwargs: float) -> Dns01Updater:
    k = key or bind.broker_key
    return Dns01Updater(
        bind.challenge_zone, ("127.0.0.1", bind.port), TsigKey(k.name, k.algorithm, k.secret),
        **kwargs,
    )  # fmt: skip


async def test_publish_waits_until_served_and_unpublish_removes_only_its_value(
    bind: Bind, tmp_path: Path
) -> None:
    up = updater(bind)
    label = KEY.label("shop", "*.one.example.test")
    name = up.record_name(label)
    assert name == delegation.target(label, bind.challenge_zone)
    await up.publish(label, "value-a")
    assert bind.query(name, "TXT") == ['"value-a"']  # already there when publish returns
    await up.publish(label, "value-b")  # wildcard + apex: two values at once
    assert sorted(bind.query(name, "TXT")) == ['"value-a"', '"value-b"']
    await up.unpublish(label, "value-a")
    assert bind.query(name, "TXT") == ['"value-b"']
    await up.unpublish(label, "value-b")
    await up.unpublish(label, "value-b")  # idempotent
    assert bind.query(name, "TXT") == []


async def test_check_access_changes_nothing(bind: Bind) -> None:
    up = updater(bind)
    await up.check_access("twotwotwo")
    assert bind.query(up.record_name("twotwotwo"), "TXT") == []


def test_only_a_single_label_names_a_record() -> None:
    """A value is never written outside ``<label>.<zone>`` (e.g. at a domain's name)."""
    up = Dns01Updater("acme.broker.test", ("127.0.0.1", 53), TsigKey("k", "hmac-sha256", SECRET))
    for bad in ("one.example.test", "*.one", "", "a b"):
        with pytest.raises(ValueError, match="not a delegation label"):
            up.record_name(bad)


@pytest.mark.parametrize(
    ("key", "says"),
    [
        (BindKey("broker-key", "hmac-sha256", SECRET), "BADSIG"),
        (BindKey("stranger-key", "hmac-sha256", SECRET), "BADKEY"),
    ],
)
async def test_a_wrong_key_is_refused_before_anything_changes(
    bind: Bind, key: BindKey, says: str
) -> None:
    up = updater(bind, key)
    with pytest.raises(Dns01Error) as caught:
        await up.check_access("three")
    assert caught.value.reason == UPDATE_REFUSED
    assert not caught.value.retryable
    assert says in caught.value.detail and key.name in caught.value.detail
    assert key.secret not in caught.value.detail


async def test_a_key_without_rights_in_the_zone_is_refused(bind: Bind) -> None:
    # the customer key exists on the server but may not update the broker's zone
    up = updater(bind, bind.customer_key)
    with pytest.raises(Dns01Error) as caught:
        await up.publish("four", "v")
    assert caught.value.reason == UPDATE_REFUSED
    assert "REFUSED" in caught.value.detail


async def test_a_dead_server_is_a_retryable_failure() -> None:
    key = TsigKey("k", "hmac-sha256", SECRET)
    up = Dns01Updater("acme.broker.test", ("127.0.0.1", free_port()), key, timeout=0.5)
    with pytest.raises(Dns01Error) as caught:
        await up.check_access("five")
    assert caught.value.reason == UPDATE_FAILED
    assert caught.value.retryable


async def test_a_value_that_never_shows_is_not_visible(bind: Bind) -> None:
    """The update lands but the server never answers it (a lagging server, simulated)."""
    up = updater(bind, visible_timeout=0.3, poll_interval=0.05)
    real_values = up.values

    async def nothing(name: str) -> tuple[str, ...]:
        await real_values(name)
        return ()

    up.values = nothing  # type: ignore[method-assign]
    with pytest.raises(Dns01Error) as caught:
        await up.publish("six", "v")
    assert caught.value.reason == NOT_VISIBLE
    assert caught.value.retryable
    await up.unpublish("six", "v")
