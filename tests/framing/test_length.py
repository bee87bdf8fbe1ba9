"""LengthFieldFramer: Netty LengthFieldBasedFrameDecoder semantics and golden
vectors (every example of the class javadoc, Netty 4.1)."""

from __future__ import annotations

import struct

import pytest
from framing_helpers import feed_all, one_byte_at_a_time
from hypothesis import given, settings
from hypothesis import strategies as st

from framing import (
    BadLength,
    EncodeError,
    Frame,
    FramerConfigError,
    FrameTooLong,
    LengthFieldConfig,
    LengthFieldFramer,
    framer_from_spec,
)

HW = b"HELLO, WORLD"

# (lengthFieldOffset, lengthFieldLength, lengthAdjustment, initialBytesToStrip,
#  BEFORE DECODE, AFTER DECODE) -- the seven examples of the javadoc.
NETTY_EXAMPLES = [
    # 2 bytes length field at offset 0, do not strip header
    (0, 2, 0, 0, b"\x00\x0c" + HW, b"\x00\x0c" + HW),
    # 2 bytes length field at offset 0, strip header
    (0, 2, 0, 2, b"\x00\x0c" + HW, HW),
    # 2 bytes length field at offset 0, do not strip header, the length field
    # represents the length of the whole message
    (0, 2, -2, 0, b"\x00\x0e" + HW, b"\x00\x0e" + HW),
    # 3 bytes length field at the end of 5 bytes header, do not strip header
    (2, 3, 0, 0, b"\xca\xfe\x00\x00\x0c" + HW, b"\xca\xfe\x00\x00\x0c" + HW),
    # 3 bytes length field at the beginning of 5 bytes header, do not strip header
    (0, 3, 2, 0, b"\x00\x00\x0c\xca\xfe" + HW, b"\x00\x00\x0c\xca\xfe" + HW),
    # 2 bytes length field at offset 1 in the middle of 4 bytes header, strip
    # the first header field and the length field
    (1, 2, 1, 3, b"\xca\x00\x0c\xfe" + HW, b"\xfe" + HW),
    # 2 bytes length field at offset 1 in the middle of 4 bytes header, strip
    # the first header field and the length field, the length field represents
    # the length of the whole message
    (1, 2, -3, 3, b"\xca\x00\x10\xfe" + HW, b"\xfe" + HW),
]


def _netty(off: int, size: int, adj: int, strip: int, **kw: object) -> LengthFieldFramer:
    return LengthFieldFramer(
        length_field_offset=off,
        length_field_length=size,
        length_adjustment=adj,
        initial_bytes_to_strip=strip,
        **kw,
    )


@pytest.mark.parametrize("off,size,adj,strip,before,after", NETTY_EXAMPLES)
def test_netty_javadoc_examples(
    off: int, size: int, adj: int, strip: int, before: bytes, after: bytes
) -> None:
    # whole
    assert feed_all(_netty(off, size, adj, strip), [before]) == [Frame(after)]
    # one byte at a time
    assert feed_all(_netty(off, size, adj, strip), one_byte_at_a_time(before)) == [Frame(after)]
    # twice, with trailing partial data left buffered
    f = _netty(off, size, adj, strip)
    f.feed(before + before + before[:5])
    assert f.drain() == [Frame(after), Frame(after)]
    assert f.buffered == 5
    # encode is the inverse where defined
    f = _netty(off, size, adj, strip)
    if f.can_encode:
        assert f.encode(Frame(after)) == before
    else:
        with pytest.raises(EncodeError):
            f.encode(Frame(after))


def test_spec_string_matches_constructor() -> None:
    f = framer_from_spec("length:offset=1,size=2,adjust=-3,strip=3,order=big,max=64")
    assert isinstance(f, LengthFieldFramer)
    assert f.config == LengthFieldConfig(1, 2, "big", -3, 3, 64, True)
    assert feed_all(f, [NETTY_EXAMPLES[6][4]]) == [Frame(NETTY_EXAMPLES[6][5])]


@pytest.mark.parametrize("size", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("order", ["big", "little"])
@settings(max_examples=25, deadline=None)
@given(bodies=st.lists(st.binary(max_size=200), max_size=5))
def test_every_field_size_and_order(size: int, order: str, bodies: list[bytes]) -> None:
    f = LengthFieldFramer(
        length_field_length=size,
        byte_order=order,
        initial_bytes_to_strip=size,
        max_frame_length=255,
    )
    wire = b"".join(len(b).to_bytes(size, order) + b for b in bodies)
    assert feed_all(f, [wire]) == [Frame(b) for b in bodies]
    assert b"".join(f.encode(Frame(b)) for b in bodies) == wire


def test_too_long_fail_fast_raises_before_buffering() -> None:
    f = LengthFieldFramer(length_field_length=2, max_frame_length=100)
    f.feed(b"\x00\x05hello" + b"\x01\x00")  # second frame announces 258 bytes
    assert f.next_message() == Frame(b"\x00\x05hello")
    with pytest.raises(FrameTooLong) as info:
        f.next_message()
    assert info.value.code == "frame_too_long"
    assert f.buffered == 0
    with pytest.raises(FrameTooLong):
        f.feed(b"x")


def test_too_long_discard_then_fail() -> None:
    """Netty failFast=false: the over-long frame's bytes are skipped as they
    arrive (never buffered), then the error is raised."""
    f = LengthFieldFramer(length_field_length=2, max_frame_length=100, fail_fast=False)
    f.feed(b"\x00\x03abc\x00\xc8" + b"x" * 50)  # frame of 2 + 200 bytes
    assert f.next_message() == Frame(b"\x00\x03abc")
    assert f.next_message() is None  # still discarding: no error yet
    assert f.buffered == 0
    f.feed(b"y" * 100)
    assert f.next_message() is None
    assert f.buffered == 0
    f.feed(b"z" * 100)  # the last 2 discarded bytes are in here
    with pytest.raises(FrameTooLong):
        f.next_message()


def test_discard_then_fail_whole_frame_in_one_chunk() -> None:
    f = LengthFieldFramer(length_field_length=1, max_frame_length=10, fail_fast=False)
    f.feed(b"\x14" + b"a" * 20 + b"\x01b")
    with pytest.raises(FrameTooLong):
        f.next_message()


def test_eof_while_discarding_is_truncation() -> None:
    f = LengthFieldFramer(length_field_length=1, max_frame_length=10, fail_fast=False)
    f.feed(b"\x14abc")
    f.feed_eof()
    with pytest.raises(Exception) as info:
        f.next_message()
    assert info.value.code == "truncated_message"  # type: ignore[attr-defined]


def test_negative_8_byte_length_field() -> None:
    f = LengthFieldFramer(length_field_length=8)
    f.feed(struct.pack(">q", -1))
    with pytest.raises(BadLength, match="negative"):
        f.next_message()


def test_adjusted_length_below_length_field_end() -> None:
    f = LengthFieldFramer(length_field_length=2, length_adjustment=-4)
    f.feed(b"\x00\x01x")  # 1 - 4 + 2 = -1 < 2
    with pytest.raises(BadLength, match="less than length_field_end_offset"):
        f.next_message()


def test_strip_more_than_frame() -> None:
    f = LengthFieldFramer(length_field_length=1, initial_bytes_to_strip=5)
    f.feed(b"\x01x")
    with pytest.raises(BadLength, match="initial_bytes_to_strip"):
        f.next_message()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"length_field_length": 5},
        {"byte_order": "middle"},
        {"length_field_offset": -1},
        {"initial_bytes_to_strip": -1},
        {"max_frame_length": 0},
        {"length_field_offset": 10, "max_frame_length": 8},
    ],
)
def test_bad_config(kwargs: dict[str, object]) -> None:
    with pytest.raises(FramerConfigError):
        LengthFieldFramer(**kwargs)


def test_encode_errors() -> None:
    f = LengthFieldFramer(length_field_length=1, initial_bytes_to_strip=1, max_frame_length=1000)
    with pytest.raises(EncodeError):
        f.encode(Frame(b"x" * 256))  # does not fit a 1-byte field
    f = LengthFieldFramer(length_field_length=2, initial_bytes_to_strip=2, max_frame_length=10)
    with pytest.raises(EncodeError):
        f.encode(Frame(b"x" * 9))  # 11 > max_frame_length
    f = LengthFieldFramer(length_field_length=2)
    with pytest.raises(EncodeError):
        f.encode(Frame(b"x"))  # shorter than the header
    assert f.split_parts(Frame(b"\x00\x00ab")) == (b"\x00\x02", b"ab")
