"""Model records to protos: the timestamps written are exactly ``Timestamp.FromDatetime``'s."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from certbroker.api import convert

ZONES = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]


def _reference(when: datetime) -> Timestamp:
    message = Timestamp()
    message.FromDatetime(when)
    return message


@given(
    st.datetimes(
        min_value=datetime(1900, 1, 1),
        max_value=datetime(9000, 1, 1),
        timezones=st.one_of(st.none(), st.sampled_from(ZONES)),
    )
)
def test_timestamps_are_what_from_datetime_writes(when: datetime) -> None:
    # aware times take a shortcut (a snapshot converts several per domain); naive ones
    # are read as UTC, as FromDatetime reads them
    message = Timestamp()
    convert._ts(message, when)
    assert message == _reference(when)


def test_no_time_leaves_the_timestamp_unset() -> None:
    message = Timestamp()
    convert._ts(message, None)
    assert message == Timestamp()
