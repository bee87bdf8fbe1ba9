"""The framer contract, checked the same way for every built-in framer and the
example custom one (h11-style: whole, one byte at a time, random splits,
trailing data, and the fuzz invariant)."""

from __future__ import annotations

from typing import Any

import pytest
from framing_helpers import KIND_IDS, KINDS, Kind, feed_all, one_byte_at_a_time, split_at
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from framing import FramerClosed, FramingError, TruncatedMessage

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _encode_all(kind: Kind, msgs: list[Any]) -> bytes:
    enc = kind.make()
    return b"".join(enc.encode(m) for m in msgs)


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
@SETTINGS
@given(data=st.data())
def test_any_split_yields_the_same_messages(kind: Kind, data: st.DataObject) -> None:
    msgs = data.draw(st.lists(kind.messages, max_size=8))
    wire = _encode_all(kind, msgs)
    cuts = data.draw(st.lists(st.integers(0, max(len(wire), 1)), max_size=12))
    assert feed_all(kind.make(), [wire]) == msgs
    assert feed_all(kind.make(), split_at(wire, cuts)) == msgs


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_one_byte_at_a_time(kind: Kind, data: st.DataObject) -> None:
    msgs = data.draw(st.lists(kind.messages, min_size=1, max_size=4))
    wire = _encode_all(kind, msgs)
    framer = kind.make()
    got = feed_all(framer, one_byte_at_a_time(wire))
    assert got == msgs


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
@SETTINGS
@given(data=st.data())
def test_round_trip_and_message_bytes(kind: Kind, data: st.DataObject) -> None:
    m = data.draw(kind.messages)
    framer = kind.make()
    wire = framer.encode(m)
    framer.feed(wire)
    (decoded,) = framer.drain()
    assert decoded == m
    # The wire bytes of a decoded message decode to it again (forwarding).
    again = kind.make()
    again.feed(framer.message_bytes(decoded))
    assert again.drain() == [m]
    header, body = framer.split_parts(decoded)
    assert isinstance(header, bytes) and isinstance(body, bytes)


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
@SETTINGS
@given(data=st.data())
def test_partial_message_at_eof_is_an_error(kind: Kind, data: st.DataObject) -> None:
    msgs = data.draw(st.lists(kind.messages, max_size=3))
    last = data.draw(kind.messages)
    wire = _encode_all(kind, msgs)
    tail = kind.make().encode(last)
    cut = data.draw(st.integers(1, len(tail) - 1)) if len(tail) > 1 else 0
    framer = kind.make()
    framer.feed(wire + tail[:cut])
    assert framer.drain() == msgs
    framer.feed_eof()
    if cut == 0:
        assert framer.next_message() is None
        return
    with pytest.raises(TruncatedMessage) as info:
        framer.next_message()
    assert info.value.code == "truncated_message"
    # terminal: everything raises from now on
    with pytest.raises(TruncatedMessage):
        framer.next_message()
    with pytest.raises(TruncatedMessage):
        framer.feed(b"x")


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_feed_after_eof_raises(kind: Kind) -> None:
    framer = kind.make()
    framer.feed_eof()
    assert framer.next_message() is None
    with pytest.raises(FramerClosed) as info:
        framer.feed(b"\x00")
    assert info.value.code == "framer_closed"


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_bytes_parse_or_raise_framing_error(kind: Kind, data: st.DataObject) -> None:
    """h11's fuzz invariant: random (or corrupted valid) bytes either parse or
    raise FramingError, never anything else, never hang, and the framer never
    holds more than max_message_size (+ framing overhead) of partial message."""
    if data.draw(st.booleans()):
        blob = data.draw(st.binary(max_size=2000))
    else:  # a valid stream with a few bytes corrupted: reaches deeper checks
        msgs = data.draw(st.lists(kind.messages, min_size=1, max_size=4))
        blob = bytearray(_encode_all(kind, msgs))
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, len(blob) - 1))
            blob[i] = data.draw(st.integers(0, 255))
        blob = bytes(blob)
    cuts = data.draw(st.lists(st.integers(0, len(blob)), max_size=8))
    framer = kind.make()
    limit = framer.max_message_size + type(framer)._header_slack
    error: FramingError | None = None
    try:
        for chunk in split_at(blob, cuts):
            framer.feed(chunk)
            assert framer.buffered <= limit
            while framer.next_message() is not None:
                pass
        framer.feed_eof()
        while framer.next_message() is not None:
            pass
    except FramingError as exc:
        error = exc
        assert isinstance(exc.code, str) and exc.code.islower() and " " not in exc.code
    if error is not None:  # terminal state
        assert framer.failed is not None
        with pytest.raises(FramingError):
            framer.next_message()
        with pytest.raises(FramingError):
            framer.feed(b"\x00")


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
@SETTINGS
@given(data=st.data())
def test_messages_before_an_error_are_delivered(kind: Kind, data: st.DataObject) -> None:
    msgs = data.draw(st.lists(kind.messages, min_size=1, max_size=3))
    wire = _encode_all(kind, msgs)
    framer = kind.make()
    # An announced length far above the limit, or garbage: both must fail
    # only after the good messages.
    framer.feed(wire + b"\xff" * 9 + b"\x00" * 300)
    got = []
    with pytest.raises(FramingError):
        while True:
            m = framer.next_message()
            if m is None:
                framer.feed_eof()
                continue
            got.append(m)
    assert got[: len(msgs)] == msgs
