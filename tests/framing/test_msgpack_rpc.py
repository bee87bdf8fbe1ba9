"""msgpack-rpc stream framer: golden vectors, raw bytes, validation, bounds."""

from __future__ import annotations

import msgpack
import pytest
from framing_helpers import feed_all, one_byte_at_a_time, rpc_messages
from hypothesis import given, settings
from hypothesis import strategies as st

from framing import (
    BadMsgpack,
    BadRpcMessage,
    EncodeError,
    FrameTooLong,
    MsgpackRpcFramer,
    RpcNotification,
    RpcRequest,
    RpcResponse,
)

# Hand-encoded: fixarray(4) [0, 1, "add", [1, 2]]
REQ = bytes([0x94, 0x00, 0x01, 0xA3]) + b"add" + bytes([0x92, 0x01, 0x02])
# fixarray(4) [1, 1, nil, 3]
RESP = bytes([0x94, 0x01, 0x01, 0xC0, 0x03])
# fixarray(3) [2, "log", ["hi"]]
NOTE = bytes([0x93, 0x02, 0xA3]) + b"log" + bytes([0x91, 0xA2]) + b"hi"
# request with msgid 0xFFFFFFFF (uint32 0xce)
REQ_MAX = bytes([0x94, 0x00, 0xCE, 0xFF, 0xFF, 0xFF, 0xFF, 0xA1]) + b"m" + bytes([0x90])


def test_golden_vectors_and_raw_bytes() -> None:
    stream = REQ + RESP + NOTE + REQ_MAX
    expected = [
        RpcRequest(1, "add", [1, 2]),
        RpcResponse(1, None, 3),
        RpcNotification("log", ["hi"]),
        RpcRequest(0xFFFFFFFF, "m", []),
    ]
    for chunks in ([stream], one_byte_at_a_time(stream), [stream[:3], stream[3:20], stream[20:]]):
        got = feed_all(MsgpackRpcFramer(), chunks)
        assert got == expected
        assert [m.raw for m in got] == [REQ, RESP, NOTE, REQ_MAX]
    f = MsgpackRpcFramer()
    assert [f.encode(m) for m in expected] == [REQ, RESP, NOTE, REQ_MAX]


def test_message_bytes_returns_received_bytes_not_reencoded() -> None:
    # Non-canonical encoding (uint8 for msgid 1): forwarded unchanged.
    odd = bytes([0x94, 0x00, 0xCC, 0x01, 0xA1]) + b"m" + bytes([0x90])
    f = MsgpackRpcFramer()
    f.feed(odd)
    (m,) = f.drain()
    assert m == RpcRequest(1, "m", [])
    assert f.message_bytes(m) == odd
    assert f.split_parts(m) == (b"", odd)
    assert f.encode(m) != odd  # canonical re-encoding differs: raw matters


@settings(max_examples=50, deadline=None)
@given(msgs=st.lists(rpc_messages, max_size=6))
def test_raw_matches_packb(msgs: list[object]) -> None:
    wire = [msgpack.packb(_as_list(m), use_bin_type=True) for m in msgs]
    got = feed_all(MsgpackRpcFramer(), [b"".join(wire)])
    assert got == msgs
    assert [m.raw for m in got] == wire


def _as_list(m: object) -> list[object]:
    if isinstance(m, RpcRequest):
        return [0, m.msgid, m.method, m.params]
    if isinstance(m, RpcResponse):
        return [1, m.msgid, m.error, m.result]
    assert isinstance(m, RpcNotification)
    return [2, m.method, m.params]


@pytest.mark.parametrize(
    "value",
    [
        [0, 1, "m"],
        [0, -1, "m", []],
        [0, 2**32, "m", []],
        [0, 1, b"m", []],
        [0, 1, "m", {}],
        [0, 1.0, "m", []],
        [1, "x", None, None],
        [2, "m"],
        [2, 1, []],
        [3, 1, 2, 3],
        [],
        [True, 1, "m", []],
        {"type": 0},
        5,
        "str",
        None,
    ],
)
def test_values_that_are_not_rpc_messages(value: object) -> None:
    f = MsgpackRpcFramer()
    f.feed(msgpack.packb(value))
    with pytest.raises(BadRpcMessage) as info:
        f.next_message()
    assert info.value.code == "bad_rpc_message"


@pytest.mark.parametrize("blob", [b"\xc1", b"\x94\x00\x01\xa2\xff\xfe\x90"])
def test_invalid_msgpack(blob: bytes) -> None:
    f = MsgpackRpcFramer()
    f.feed(blob)
    with pytest.raises(BadMsgpack) as info:
        f.next_message()
    assert info.value.code == "bad_msgpack"


def test_many_small_values_in_a_chunk_larger_than_the_limit() -> None:
    f = MsgpackRpcFramer(max_message_size=64)
    one = msgpack.packb([2, "n", [1]])
    f.feed(one * 1000)
    assert len(f.drain()) == 1000
    assert f.buffered == 0


def test_value_larger_than_limit() -> None:
    f = MsgpackRpcFramer(max_message_size=64)
    f.feed(msgpack.packb([0, 1, "m", ["x" * 100]]))
    with pytest.raises(FrameTooLong):
        f.next_message()
    assert f.buffered == 0
    # announced but never sent: bounded by the Unpacker limits
    f = MsgpackRpcFramer(max_message_size=64)
    f.feed(b"\x94\x00\x01\xa1m\xdd\xff\xff\xff\xff")
    with pytest.raises((FrameTooLong, BadMsgpack)):
        f.next_message()


def test_encode_rejects_invalid_messages() -> None:
    f = MsgpackRpcFramer()
    with pytest.raises(EncodeError):
        f.encode(RpcRequest(-1, "m", []))
    with pytest.raises(EncodeError):
        f.encode(RpcRequest(1, "m", [object()]))
    with pytest.raises(EncodeError):
        MsgpackRpcFramer(max_message_size=8).encode(RpcNotification("m", ["x" * 20]))
