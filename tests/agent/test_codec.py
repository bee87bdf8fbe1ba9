"""Framer messages <-> DATA payloads (agent/_codec.py): what the host receives
for each framer, and that a reply in the same shape goes back on the wire
exactly as the framer would encode it."""

from __future__ import annotations

import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import framing
from agent import status_for
from agent._codec import make_framer, reply_encoder, wire_of
from xport import _protocol as P


def parse_all(spec: str, data: bytes) -> tuple[object, list[object]]:
    f = make_framer(spec, 1 << 20)
    f.feed(data)
    return f, f.drain()


@settings(max_examples=200, deadline=None)
@given(bodies=st.lists(st.binary(max_size=300), min_size=1, max_size=10),
       strip=st.booleans())
def test_length_round_trip(bodies: list[bytes], strip: bool) -> None:
    spec = "length:strip=4" if strip else "length"
    wire = b"".join(struct.pack("!I", len(b)) + b for b in bodies)
    f, msgs = parse_all(spec, wire)
    enc = reply_encoder(f)  # type: ignore[arg-type]
    out = b""
    for body, m in zip(bodies, msgs):
        payload, hl = wire_of(f, m)  # type: ignore[arg-type]
        assert payload == struct.pack("!I", len(body)) + body and hl == 4
        # the host may answer with the body only, or with the header along
        assert enc(body, 0) == payload
        assert enc(payload, 4) == payload
        out += payload
    assert out == wire


def test_nvme_header_data_split_and_reply_digests() -> None:
    f = make_framer("nvme-tcp:hdgst=1,ddgst=1", 1 << 20)
    pdu = framing.make_nvme_pdu(0x07, b"\x01" * 16, b"DATA" * 10, hdgst=True, ddgst=True)
    wire = f.encode(pdu)
    f.feed(wire)
    (m,) = f.drain()
    payload, hl = wire_of(f, m)
    assert hl == 24 and payload[:24] == pdu.header and payload[24:] == pdu.data
    enc = reply_encoder(f)
    assert enc(payload, hl) == wire  # digests recomputed on the way out
    assert enc(wire, 0) == wire  # already wire bytes


def test_onc_rpc_records_lose_and_regain_their_marks() -> None:
    f = make_framer("onc-rpc", 1 << 20)
    rec = framing.OncRecord(b"xid+call" * 50)
    wire = f.encode(rec)
    f.feed(wire)
    (m,) = f.drain()
    assert wire_of(f, m) == (rec.payload, 0)
    assert reply_encoder(f)(rec.payload, 0) == wire


def test_msgpack_rpc_forwards_the_bytes_as_received() -> None:
    f = make_framer("msgpack-rpc", 1 << 20)
    raw = msgpack.packb([0, 7, "add", [1, 2]])
    f.feed(raw)
    (m,) = f.drain()
    assert wire_of(f, m) == (raw, 0)
    reply = msgpack.packb([1, 7, None, 3])
    assert reply_encoder(f)(reply, 0) == reply


def test_agent_limit_clamps_the_framer() -> None:
    f = make_framer("length", 1000)
    f.feed(struct.pack("!I", 2000))
    with pytest.raises(framing.FrameTooLong):
        f.drain()


def test_status_codes() -> None:
    assert status_for("peer_closed") == P.Status.PEER_CLOSED
    assert status_for("closed_by_host") == P.Status.LOCAL_CLOSE
    assert status_for("frame_too_long") == P.Status.TOO_LARGE
    assert status_for("bad_msgpack") == P.Status.FRAMING_ERROR
    assert status_for("truncated_message") == P.Status.FRAMING_ERROR
    assert status_for("credit_exceeded") == P.Status.CREDIT_VIOLATION
    assert status_for("link_lost") == P.Status.LINK_LOST
    assert status_for("buffer_limit") == P.Status.INTERNAL
