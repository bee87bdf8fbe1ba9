"""Transport messages (xport._protocol): round trips, fuzzing, bad input."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xport._protocol import (
    COMMON_HEADER,
    HEADER_SIZE,
    PROTOCOL_VERSION,
    Close,
    Closed,
    Connect,
    Connected,
    Credit,
    Data,
    Eof,
    Error,
    Hello,
    Keepalive,
    Listen,
    ListenResult,
    Message,
    MessageType,
    NewConnection,
    ProtocolError,
    Role,
    decode,
    decode_body,
    encode,
    encode_into,
)

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
text = st.text(max_size=40)

messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(
        Hello,
        st.sampled_from(Role),
        u32,
        u32,
        u16,
        session=st.integers(1, 2**64 - 1),
        peer_session=st.integers(0, 2**64 - 1),
        window_messages=u32,
        window_bytes=u32,
    ),
    st.builds(Keepalive),
    st.builds(Listen, u32, text, u16, text, st.booleans(), text, text),
    st.builds(ListenResult, u32, u16, u16, text),
    st.builds(Connect, u32, text, u16, text, st.booleans()),
    st.builds(Connected, u32, u16, text),
    st.builds(NewConnection, u32, u32, text, u16),
    st.binary(max_size=300).flatmap(
        lambda p: st.builds(Data, u32, st.just(p), st.integers(0, len(p)))
    ),
    st.builds(Close, u32, st.booleans()),
    st.builds(Closed, u32, u16, text),
    st.builds(Credit, u32, u32, u32),
    st.builds(Error, u32, u16, text),
    st.builds(Eof, u32),
)


@given(messages)
def test_round_trip(msg: Message) -> None:
    raw = encode(msg)
    assert decode(raw) == (msg, len(raw))


@given(messages, st.integers(0, 50))
def test_encode_into_at_offset(msg: Message, offset: int) -> None:
    raw = encode(msg)
    buf = bytearray(offset + len(raw))
    assert encode_into(buf, offset, msg) == len(buf)
    assert bytes(buf[offset:]) == raw
    with pytest.raises(ValueError):
        encode_into(bytearray(offset + len(raw) - 1), offset, msg)


@given(st.binary(max_size=120))
def test_random_bytes_decode_or_protocol_error(raw: bytes) -> None:
    try:
        decode(raw)
    except ProtocolError as exc:
        assert exc.reason in {"truncated", "bad_version", "fragment", "bad_body", "unknown_type"}


@given(st.sampled_from(MessageType), u16, st.binary(max_size=80))
def test_random_bodies_decode_or_protocol_error(mtype: MessageType, aux: int, body: bytes) -> None:
    try:
        decode_body(mtype, 1, aux, memoryview(body))
    except ProtocolError as exc:
        assert exc.reason == "bad_body"


@given(messages, st.data())
def test_body_mutations_never_crash(msg: Message, data: st.DataObject) -> None:
    raw = bytearray(encode(msg))
    i = data.draw(st.integers(HEADER_SIZE, max(HEADER_SIZE, len(raw) - 1)))
    if i < len(raw):
        raw[i] ^= data.draw(st.integers(1, 255))
    try:
        decode(raw)
    except ProtocolError:
        pass


def test_unknown_type_and_version_are_reasons() -> None:
    raw = bytearray(encode(Keepalive()))
    raw[1] = 200
    with pytest.raises(ProtocolError) as info:
        decode(raw)
    assert info.value.reason == "unknown_type"
    raw[0] = PROTOCOL_VERSION + 1
    with pytest.raises(ProtocolError) as info:
        decode(raw)
    assert info.value.reason == "bad_version"


def test_eof_body_is_empty() -> None:
    # docs/protocol.md §3.13: no field; a byte of body is bad_body, not ignored
    raw = encode(Eof(7))
    assert len(raw) == HEADER_SIZE and raw[1] == MessageType.EOF == 13
    with pytest.raises(ProtocolError) as info:
        decode_body(MessageType.EOF, 7, 0, memoryview(b"\x00"))
    assert info.value.reason == "bad_body"


def test_data_header_and_data_split() -> None:
    msg = Data(3, b"\x04\x00\x18\x00PDU-DATA", 4)
    assert bytes(msg.header) == b"\x04\x00\x18\x00"
    assert bytes(msg.data) == b"PDU-DATA"


def test_data_header_length_beyond_payload_is_bad_body() -> None:
    raw = bytearray(encode(Data(1, b"abc", 3)))
    struct.pack_into("!H", raw, 10, 4)
    with pytest.raises(ProtocolError) as info:
        decode(raw)
    assert info.value.reason == "bad_body"


def test_fragments_are_refused_by_whole_message_decode() -> None:
    raw = bytearray(encode(Data(1, b"abc")))
    raw[2] = 0x01  # FIRST only
    with pytest.raises(ProtocolError) as info:
        decode(raw)
    assert info.value.reason == "fragment"


@pytest.mark.parametrize(
    "msg",
    [
        Credit(1, 1 << 32, 0),
        Data(1, b"ab", 3),
        Data(1 << 32, b""),
        Listen(1, "x" * 70000, 1, "f"),
    ],
)
def test_fields_that_do_not_fit_raise_value_error(msg: Message) -> None:
    with pytest.raises(ValueError):
        encode(msg)


def test_header_is_declared_once_and_16_bytes() -> None:
    assert COMMON_HEADER.size == HEADER_SIZE == 16
    assert COMMON_HEADER.format.startswith("!")


def test_messages_are_frozen_and_slotted() -> None:
    msg = Credit(1, 2, 3)
    with pytest.raises(AttributeError):
        msg.messages = 5  # type: ignore[misc]
    assert not hasattr(msg, "__dict__")
