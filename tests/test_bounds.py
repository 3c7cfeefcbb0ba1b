"""The limits on what a caller sends: cheap checks that refuse without echoing the input."""

from __future__ import annotations

import pytest

from certbroker import bounds
from certbroker.errors import InvalidArgument
from certbroker.x509 import MAX_INPUT_BYTES


def test_receive_limit_fits_two_full_upload_fields_with_headroom() -> None:
    assert MAX_INPUT_BYTES == bounds.MAX_UPLOAD_FIELD_BYTES == 64 * 1024
    assert bounds.MAX_RECEIVE_MESSAGE_BYTES == 256 * 1024
    # Both upload fields slightly over their limit still reach the intake check.
    assert 2 * (MAX_INPUT_BYTES + 32 * 1024) < bounds.MAX_RECEIVE_MESSAGE_BYTES
    assert dict(bounds.server_options()) == {
        "grpc.max_receive_message_length": bounds.MAX_RECEIVE_MESSAGE_BYTES,
        "grpc.max_send_message_length": bounds.MAX_SEND_MESSAGE_BYTES,
    }
    assert bounds.MAX_PAGE_BYTES < bounds.MAX_SEND_MESSAGE_BYTES


def test_check_length_refuses_with_size_and_limit_not_the_value() -> None:
    bounds.check_length("x" * 10, "app", 10, reason="APP_INVALID")
    with pytest.raises(InvalidArgument) as caught:
        bounds.check_length("secret-ish" * 10_000, "app", 10, reason="APP_INVALID")
    error = caught.value
    assert error.reason == "APP_INVALID"
    assert [(v.field, v.description) for v in error.violations] == [
        ("app", "is 100000 characters; the limit is 10")
    ]
    assert "secret-ish" not in error.message


def test_check_count_refuses_before_any_entry_is_looked_at() -> None:
    bounds.check_count(["a"] * 3, "domains", 3, reason="FILTER_TOO_LARGE")
    with pytest.raises(InvalidArgument) as caught:
        bounds.check_count(["a"] * 4, "domains", 3, reason="FILTER_TOO_LARGE")
    assert caught.value.reason == "FILTER_TOO_LARGE"
    assert caught.value.violations[0].field == "domains"
    assert caught.value.violations[0].description == "has 4 entries; the limit is 3"


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        ([], ""),
        (["a", "b"], "a, b"),
        ([f"n{i}" for i in range(5)], "n0, n1, n2, n3, n4"),
        ([f"n{i}" for i in range(1200)], "n0, n1, n2, n3, n4 and 1,195 more"),
    ],
)
def test_listed_names_at_most_five_and_counts_the_rest(items: list[str], expected: str) -> None:
    assert bounds.listed(items) == expected


def test_listed_takes_a_limit_and_separator() -> None:
    assert bounds.listed(["a", "b", "c", "d"], limit=2, separator="; ") == "a; b and 2 more"


def test_watch_filters_report_every_oversized_app_and_the_idn_total() -> None:
    bounds.check_watch_filters(["shop", " "], ["bücher.example", "a.example"], 10)
    with pytest.raises(InvalidArgument) as caught:
        bounds.check_watch_filters(
            ["shop", "x" * 11, "y" * 12], ["ü" * 600 + ".de", "ö" * 500 + ".de"], 10
        )
    assert caught.value.reason == "FILTER_TOO_LARGE"
    assert [(v.field, v.description.split(";")[0]) for v in caught.value.violations] == [
        ("apps[1]", "is 11 characters"),
        ("apps[2]", "is 12 characters"),
        ("domains", "non-ASCII names add up to 1106 characters"),
    ]


def test_watch_filter_counts_are_checked_first() -> None:
    with pytest.raises(InvalidArgument) as caught:
        bounds.check_watch_filters(["x" * 1000] * 1001, [], 10)
    assert [v.field for v in caught.value.violations] == ["apps"]
    with pytest.raises(InvalidArgument) as caught:
        bounds.check_watch_filters([], ["a.example"] * 1001, 10)
    assert [v.field for v in caught.value.violations] == ["domains"]
