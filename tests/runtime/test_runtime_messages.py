"""Round trips of every runtime message type, and typed errors for bad bytes."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from _probe import Crash, Defer, Hang, Note, Ping, ProbeMsg, StopNormally, StopShutdown
from hypothesis import given
from hypothesis import strategies as st

from _strategies import from_struct
from crucible_kitchen.errors import MessageDecodeError
from crucible_kitchen.supervisors import (
    ActorStatistics,
    ChildCounts,
    ChildInfo,
    ExitRecord,
    MessageCodec,
    SupervisorStatistics,
)

RUNTIME_RECORDS = [ExitRecord, ChildInfo, ChildCounts, ActorStatistics, SupervisorStatistics]
PROBE_MESSAGES = [Ping, Crash, Hang, StopNormally, StopShutdown, Defer, Note]
FORMATS = ["json", "msgpack"]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("cls", RUNTIME_RECORDS + PROBE_MESSAGES, ids=lambda c: c.__name__)
@given(data=st.data())
def test_every_message_type_round_trips(cls: type[Any], fmt: str, data: st.DataObject) -> None:
    codec: MessageCodec[Any] = MessageCodec(cls, format=fmt)  # type: ignore[arg-type]
    message = data.draw(from_struct(cls))
    assert codec.decode(codec.encode(message)) == message


@pytest.mark.parametrize("fmt", FORMATS)
@given(message=st.one_of(*(from_struct(c) for c in PROBE_MESSAGES)))
def test_a_protocol_union_round_trips_by_tag(fmt: str, message: Any) -> None:
    codec: MessageCodec[Any] = MessageCodec(ProbeMsg, format=fmt)  # type: ignore[arg-type]
    decoded = codec.decode(codec.encode(message))
    assert type(decoded) is type(message)
    assert decoded == message


@pytest.mark.parametrize(
    ("payload", "where"),
    [
        (b'{"type":"Nope"}', "Invalid value 'Nope'"),
        (b'{"type":"Ping","value":"seven"}', "$.value"),
        (b'{"type":"Note"}', "missing required field `text`"),
        (b"{not json", "malformed"),
    ],
)
def test_bad_messages_are_rejected_with_a_typed_error(payload: bytes, where: str) -> None:
    codec: MessageCodec[Any] = MessageCodec(ProbeMsg)  # type: ignore[arg-type]
    with pytest.raises(MessageDecodeError) as caught:
        codec.decode(payload)
    assert where in str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value.__cause__, msgspec.DecodeError)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("value", [None, 7, ["Ping"], {"type": "Ping"}], ids=repr)
def test_a_value_that_is_not_bytes_is_a_decode_error(fmt: str, value: object) -> None:
    codec: MessageCodec[Any] = MessageCodec(ProbeMsg, format=fmt)  # type: ignore[arg-type]
    with pytest.raises(MessageDecodeError, match=f"must be bytes, not {type(value).__name__}"):
        codec.decode(value)  # type: ignore[arg-type]


def test_messages_are_frozen_and_keyword_only() -> None:
    with pytest.raises(TypeError):
        Ping(3)  # type: ignore[misc]
    ping = Ping(value=3)
    with pytest.raises(AttributeError):
        ping.value = 4  # type: ignore[misc]
