"""Frame header (xport._wire): round trips and malformed frames."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xport._wire import (
    ETHERTYPE,
    FRAME_HEADER_SIZE,
    FrameFlags,
    WireError,
    mac_bytes,
    pack_frame_header,
    parse_frame,
)

u32 = st.integers(0, (1 << 40))
macs = st.binary(min_size=6, max_size=6)


@given(
    macs, macs, st.integers(1, 0xFFFF), u32, u32, u32, st.binary(max_size=200), st.integers(0, 30)
)
def test_round_trip(dst, src, count, seq, credit, ack, payload, pad):  # type: ignore[no-untyped-def]
    buf = bytearray(FRAME_HEADER_SIZE + len(payload) + pad)
    pack_frame_header(buf, dst, src, 0, count, seq, credit, ack, len(payload))
    buf[FRAME_HEADER_SIZE : FRAME_HEADER_SIZE + len(payload)] = payload
    hdr, body = parse_frame(buf)
    assert (hdr.dst, hdr.src, hdr.msg_count) == (dst, src, count)
    # counters wrap at 2**32 on the wire
    assert (hdr.seq, hdr.credit, hdr.credit_ack) == (
        seq & 0xFFFFFFFF,
        credit & 0xFFFFFFFF,
        ack & 0xFFFFFFFF,
    )
    assert bytes(body) == payload


@given(st.binary(max_size=80))
def test_random_bytes_parse_or_wire_error(raw: bytes) -> None:
    try:
        parse_frame(raw)
    except WireError as exc:
        assert exc.reason in {"truncated", "not_ours", "bad_version", "bad_count"}


def _frame(**kw: int) -> bytearray:
    buf = bytearray(FRAME_HEADER_SIZE)
    args = {"flags": 0, "msg_count": 1, "seq": 0, "credit": 0, "credit_ack": 0, "payload_length": 0}
    args.update(kw)
    pack_frame_header(buf, bytes(6), bytes(6), **args)
    return buf


@pytest.mark.parametrize(
    "mutate, reason",
    [
        (lambda b: b.__setitem__(slice(12, 14), b"\x08\x00"), "not_ours"),
        (lambda b: b.__setitem__(14, 2), "bad_version"),
        (lambda b: b.__setitem__(slice(30, 32), b"\x00\x05"), "truncated"),
        (lambda b: b.__setitem__(15, FrameFlags.CREDIT_ONLY), "bad_count"),
        (lambda b: b.__setitem__(slice(16, 18), b"\x00\x00"), "bad_count"),
    ],
)
def test_malformed_frames_have_reasons(mutate, reason):  # type: ignore[no-untyped-def]
    buf = _frame()
    mutate(buf)
    with pytest.raises(WireError) as info:
        parse_frame(buf)
    assert info.value.reason == reason


def test_ethertype_and_mac() -> None:
    assert ETHERTYPE == 0x88B5
    assert mac_bytes("02:00:00:00:00:0a") == b"\x02\x00\x00\x00\x00\x0a"
    with pytest.raises(ValueError):
        mac_bytes("02:00")
