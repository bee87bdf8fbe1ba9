"""Golden byte vectors from docs/protocol.md §6, replayed both ways."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from xport._protocol import (
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
    NewConnection,
    ProtocolError,
    Role,
    Status,
    decode,
    encode,
)
from xport._wire import FrameFlags, WireError, mac_bytes, parse_frame

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
VECTORS = dict(re.findall(r"<!-- vector (\w+) -->\n```text\n([0-9a-f]+)\n```", DOC.read_text()))

MESSAGES: dict[str, Message] = {
    "hello": Hello(
        Role.AGENT,
        1000,
        1048576,
        session=0x0102030405060708,
        peer_session=0x1112131415161718,
        window_messages=64,
        window_bytes=2097152,
    ),
    "keepalive": Keepalive(),
    "listen": Listen(7, "0.0.0.0", 8080, "length:4", True, "/c.pem", "/k.pem"),
    "listen_result": ListenResult(7, Status.OK, 8080, ""),
    "connect": Connect(42, "10.0.0.1", 4420, "nvme-tcp", False),
    "connected": Connected(42, Status.OS_ERROR, "refused"),
    "new_connection": NewConnection(0x01020304, 7, "127.0.0.1", 50000),
    "data": Data(5, b"HDRbody", 3),
    "close": Close(5, True),
    "closed": Closed(5, Status.PEER_CLOSED, "eof"),
    "credit": Credit(5, 16, 65536),
    "error": Error(0, Status.PROTOCOL_ERROR, "bad"),
    "eof": Eof(5),
}


def test_every_vector_in_the_doc_is_tested() -> None:
    assert set(VECTORS) == set(MESSAGES) | {"frame_data", "frame_credit_only"}


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_message_vector(name: str) -> None:
    raw = bytes.fromhex(VECTORS[name])
    assert encode(MESSAGES[name]) == raw
    msg, end = decode(raw)
    assert msg == MESSAGES[name]
    assert end == len(raw)


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_message_vector_every_truncation_is_an_error(name: str) -> None:
    raw = bytes.fromhex(VECTORS[name])
    for cut in range(len(raw)):
        with pytest.raises(ProtocolError):
            decode(raw[:cut])


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_message_vector_with_trailing_data(name: str) -> None:
    raw = bytes.fromhex(VECTORS[name])
    msg, end = decode(raw + b"\x01\x02\x03")
    assert msg == MESSAGES[name] and end == len(raw)


def test_frame_data_vector() -> None:
    raw = bytes.fromhex(VECTORS["frame_data"])
    hdr, payload = parse_frame(raw)
    assert (hdr.dst, hdr.src) == (mac_bytes("02:00:00:00:00:02"), mac_bytes("02:00:00:00:00:01"))
    assert (hdr.seq, hdr.credit, hdr.credit_ack, hdr.msg_count) == (0xFFFFFFFF, 64, 1, 2)
    first, off = decode(payload)
    second, off = decode(payload, off)
    assert (first, second) == (Data(5, b"ab"), Credit(5, 1, 2))
    assert off == len(payload) == hdr.payload_length
    # Ethernet padding after payload_length is ignored
    assert parse_frame(raw + bytes(20))[1] == payload


def test_frame_credit_only_vector() -> None:
    raw = bytes.fromhex(VECTORS["frame_credit_only"])
    hdr, payload = parse_frame(raw)
    assert hdr.flags == FrameFlags.CREDIT_ONLY and hdr.credit_only
    assert (hdr.seq, hdr.credit, hdr.credit_ack, hdr.msg_count, len(payload)) == (7, 3, 2, 0, 0)


@pytest.mark.parametrize("name", ["frame_data", "frame_credit_only"])
def test_frame_vector_truncations_are_counted_reasons(name: str) -> None:
    raw = bytes.fromhex(VECTORS[name])
    for cut in range(len(raw)):
        with pytest.raises(WireError) as info:
            parse_frame(raw[:cut])
        assert info.value.reason == "truncated"
