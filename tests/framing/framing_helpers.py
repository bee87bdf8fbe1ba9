"""Shared strategies and helpers for the framing tests (imported by the test
modules of this directory; not a conftest so hypothesis stays out of fixtures)."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

import framing

REPO = Path(__file__).resolve().parents[2]
if str(REPO / "examples") not in sys.path:
    sys.path.insert(0, str(REPO / "examples"))

from ndjson_framer import JsonMessage, NdjsonFramer

from framing import (
    Frame,
    Framer,
    FramingError,
    LengthFieldFramer,
    MsgpackRpcFramer,
    NvmeTcpFramer,
    OncRecord,
    OncRpcFramer,
    PduType,
    RpcNotification,
    RpcRequest,
    RpcResponse,
    make_nvme_pdu,
)


def feed_all(framer: Framer[Any], chunks: Iterable[bytes], eof: bool = True) -> list[Any]:
    """Feed chunks, collecting messages after each; raise the framer's error."""
    out: list[Any] = []
    for chunk in chunks:
        framer.feed(chunk)
        out.extend(framer.drain())
    if eof:
        framer.feed_eof()
        out.extend(framer.drain())
    return out


def split_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def one_byte_at_a_time(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


# -- message strategies ---------------------------------------------------------


def _length_canonical(framer: LengthFieldFramer, raw: bytes) -> Frame:
    """A Frame the decoder would produce: for strip-0 configs the length field
    is filled in by encode."""
    if framer.config.initial_bytes_to_strip == 0:
        return Frame(framer.encode(Frame(raw)))
    return Frame(raw)


def length_messages(make: Callable[[], LengthFieldFramer]) -> st.SearchStrategy[Frame]:
    f = make()
    end = f.config.length_field_end_offset
    limit = f.config.max_frame_length - end
    body = st.binary(max_size=min(limit, 300))
    if f.config.initial_bytes_to_strip == 0:
        # header bytes (prefix + length field placeholder) + body; adjustment may
        # require a minimum number of bytes after the field.
        min_extra = max(0, f.config.length_adjustment)
        return st.builds(
            lambda pre, extra, b: _length_canonical(make(), pre + extra + b),
            st.binary(min_size=end, max_size=end),
            st.binary(min_size=min_extra, max_size=min_extra),
            body,
        )
    return body.map(Frame)


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
msgids = st.integers(min_value=0, max_value=2**32 - 1)
rpc_messages = st.one_of(
    st.builds(RpcRequest, msgids, st.text(max_size=16), st.lists(msgpack_values, max_size=4)),
    st.builds(RpcResponse, msgids, msgpack_values, msgpack_values),
    st.builds(RpcNotification, st.text(max_size=16), st.lists(msgpack_values, max_size=4)),
)

_FIXED = {0: 128, 1: 128, 2: 24, 3: 24, 4: 72, 5: 24, 6: 24, 7: 24, 9: 24}


@st.composite
def nvme_pdus(draw: st.DrawFn, digests: bool) -> Any:
    ptype = draw(st.sampled_from(sorted(_FIXED)))
    psh = bytearray(draw(st.binary(min_size=_FIXED[ptype] - 8, max_size=_FIXED[ptype] - 8)))
    if ptype in (PduType.ICREQ, PduType.ICRESP):
        psh[3] = 0b11 if digests else 0  # DGST byte: keep the negotiated state
        data = b""
    elif ptype in (PduType.H2C_TERM_REQ, PduType.C2H_TERM_REQ):
        data = draw(st.binary(max_size=128))
    elif ptype in (PduType.CAPSULE_CMD, PduType.H2C_DATA, PduType.C2H_DATA):
        data = draw(st.binary(max_size=300))
    else:
        data = b""
    flags = 0
    if ptype in (PduType.H2C_DATA, PduType.C2H_DATA):
        flags = draw(st.sampled_from([0, 0x04])) | (
            0x08 if ptype == 7 and draw(st.booleans()) else 0
        )
    pda = draw(st.integers(0, 3))
    return make_nvme_pdu(
        ptype, bytes(psh), data, flags=flags, hdgst=digests, ddgst=digests, pda=pda
    )


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)


@dataclass(frozen=True)
class Kind:
    """One framer configuration under test: how to build it and its messages."""

    id: str
    make: Callable[[], Framer[Any]]
    messages: st.SearchStrategy[Any]


def _len(**kw: Any) -> Callable[[], LengthFieldFramer]:
    return lambda: LengthFieldFramer(**kw)


_LENGTH_CONFIGS = {
    "length-u32-strip": _len(
        length_field_length=4, initial_bytes_to_strip=4, max_frame_length=4096
    ),
    "length-u16le-adj": _len(
        length_field_length=2, byte_order="little", length_adjustment=-2, max_frame_length=1000
    ),
    "length-u24-strip": _len(
        length_field_length=3, initial_bytes_to_strip=3, max_frame_length=4096
    ),
    "length-u24le": _len(length_field_length=3, byte_order="little", max_frame_length=4096),
    "length-u64le-strip": _len(
        length_field_length=8, byte_order="little", initial_bytes_to_strip=8, max_frame_length=4096
    ),
    "length-u8": _len(length_field_length=1, max_frame_length=200),
    "length-offset2-adj1": _len(
        length_field_offset=2, length_field_length=2, length_adjustment=1, max_frame_length=4096
    ),
}

KINDS = [Kind(name, make, length_messages(make)) for name, make in _LENGTH_CONFIGS.items()] + [
    Kind("msgpack-rpc", lambda: MsgpackRpcFramer(max_message_size=4096), rpc_messages),
    Kind("nvme-tcp", lambda: NvmeTcpFramer(max_message_size=4096), nvme_pdus(False)),
    Kind(
        "nvme-tcp-digests",
        lambda: NvmeTcpFramer(hdgst=True, ddgst=True, max_message_size=4096),
        nvme_pdus(True),
    ),
    Kind(
        "onc-rpc",
        lambda: OncRpcFramer(max_message_size=4096),
        st.binary(max_size=600).map(OncRecord),
    ),
    Kind(
        "onc-rpc-frag7",
        lambda: OncRpcFramer(max_message_size=4096, max_fragment_size=7),
        st.binary(max_size=600).map(OncRecord),
    ),
    Kind("ndjson", lambda: NdjsonFramer(max_message_size=4096), json_values.map(JsonMessage)),
]
KIND_IDS = [k.id for k in KINDS]

__all__ = [
    "KINDS",
    "KIND_IDS",
    "FramingError",
    "JsonMessage",
    "Kind",
    "NdjsonFramer",
    "feed_all",
    "framing",
    "one_byte_at_a_time",
    "split_at",
]


class CrLfFramer(Framer[Frame]):
    """Minimal custom framer relying on the default ``Framer.from_spec``."""

    name = "crlf"

    def __init__(self, *, max_message_size: int = 1024, keep: bool = False) -> None:
        super().__init__(max_message_size=max_message_size)
        self.keep = keep

    def _parse(self, data: bytes) -> int:
        pos = 0
        while (i := data.find(b"\r\n", pos)) >= 0:
            self._out.append(Frame(data[pos : i + 2] if self.keep else data[pos:i]))
            pos = i + 2
        self._need = len(data) - pos + 1
        return pos

    def encode(self, message: Frame) -> bytes:
        return message.payload + b"\r\n"
