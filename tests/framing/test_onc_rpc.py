"""ONC RPC record marking (RFC 5531 section 11) golden vectors."""

from __future__ import annotations

import pytest
from framing_helpers import feed_all, one_byte_at_a_time

from framing import FrameTooLong, OncRecord, OncRpcFramer, framer_from_spec

# A 3-fragment record (lengths 3, 0, 5; last bit on the third), then a
# one-fragment record.
MULTI = (
    b"\x00\x00\x00\x03abc" + b"\x00\x00\x00\x00" + b"\x80\x00\x00\x05defgh" + b"\x80\x00\x00\x02ij"
)
MULTI_RECORDS = [OncRecord(b"abcdefgh"), OncRecord(b"ij")]


def test_multi_fragment_records() -> None:
    assert feed_all(OncRpcFramer(), [MULTI]) == MULTI_RECORDS
    assert feed_all(OncRpcFramer(), one_byte_at_a_time(MULTI)) == MULTI_RECORDS
    f = OncRpcFramer()
    f.feed(MULTI + b"\x00\x00\x00\x02k")  # trailing partial fragment
    assert f.drain() == MULTI_RECORDS
    assert f.buffered == 5


def test_empty_last_fragment_and_empty_record() -> None:
    wire = b"\x00\x00\x00\x01a\x80\x00\x00\x00" + b"\x80\x00\x00\x00"
    assert feed_all(OncRpcFramer(), [wire]) == [OncRecord(b"a"), OncRecord(b"")]


def test_encode_fragments() -> None:
    f = OncRpcFramer(max_fragment_size=3)
    assert f.encode(OncRecord(b"abcdefgh")) == (
        b"\x00\x00\x00\x03abc\x00\x00\x00\x03def\x80\x00\x00\x02gh"
    )
    assert OncRpcFramer().encode(OncRecord(b"xid")) == b"\x80\x00\x00\x03xid"
    assert OncRpcFramer().encode(OncRecord(b"")) == b"\x80\x00\x00\x00"


def test_record_total_is_bounded_across_fragments() -> None:
    f = OncRpcFramer(max_message_size=10)
    f.feed(b"\x00\x00\x00\x06abcdef")  # 6 bytes so far
    assert f.next_message() is None
    f.feed(b"\x80\x00\x00\x05")  # 6 + 5 > 10: rejected before buffering
    with pytest.raises(FrameTooLong):
        f.next_message()


def test_huge_fragment_length_rejected_at_once() -> None:
    f = framer_from_spec("onc-rpc:max=1048576")
    f.feed(b"\xff\xff\xff\xff")
    with pytest.raises(FrameTooLong):
        f.next_message()


def test_eof_between_fragments_is_truncation() -> None:
    f = OncRpcFramer()
    f.feed(b"\x00\x00\x00\x01a")  # complete non-last fragment, record incomplete
    f.feed_eof()
    with pytest.raises(Exception) as info:
        f.next_message()
    assert info.value.code == "truncated_message"  # type: ignore[attr-defined]
