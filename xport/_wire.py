"""Frame format: Ethernet header + link header + transport messages back to back.

Theory of operation
-------------------
A frame on the shared queue is (docs/protocol.md §1)::

    Ethernet: dst 6 | src 6 | EtherType u16 = 0x88B5
    Link:     version u8 | flags u8 | msg_count u16 | seq u32 |
              credit u32 | credit_ack u32 | payload_length u16 | reserved u16
    payload:  msg_count transport messages (xport._protocol), back to back

All integers are big-endian. ``seq`` numbers every frame a sender emits
(data or credit-only), wrapping at 2**32; a receiver checks it to prove order
and losslessness. ``credit`` is the cumulative number of receive buffers the
*sender of this frame* has posted (wrapping u32), ``credit_ack`` the
cumulative number of credit-only frames it has received and released; the
link-credit rules that use them are in :mod:`xport._linkcredit`.
``payload_length`` lets a receiver ignore Ethernet padding. A frame with the
``CREDIT_ONLY`` flag carries no messages.

Receiving never raises: :func:`parse_frame` raises :class:`WireError` with a
machine ``reason`` that the link counts (``dropped[reason]``) before dropping
the frame.

Public API
----------
``ETHERTYPE``, ``LINK_VERSION``, ``FRAME_HEADER`` (one ``struct.Struct`` for
Ethernet + link header), ``FRAME_HEADER_SIZE`` (34), ``FrameFlags``,
``FrameHeader`` (frozen dataclass), ``WireError``,
``pack_frame_header(buf, ...)``, ``parse_frame(data) -> (FrameHeader, payload)``,
``mac_bytes("02:00:..")``.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

__all__ = [
    "ETHERTYPE",
    "FRAME_HEADER",
    "FRAME_HEADER_SIZE",
    "LINK_VERSION",
    "FrameFlags",
    "FrameHeader",
    "WireError",
    "mac_bytes",
    "pack_frame_header",
    "parse_frame",
]

#: IEEE 802 local experimental EtherType (DESIGN.md "Wire contract")
ETHERTYPE = 0x88B5
#: version of the link header (docs/protocol.md §1)
LINK_VERSION = 1

# docs/protocol.md §1: Ethernet + link header, declared once.
_FRAME_FIELDS = (
    ("dst", "6s"),
    ("src", "6s"),
    ("ethertype", "H"),
    ("version", "B"),
    ("flags", "B"),
    ("msg_count", "H"),
    ("seq", "I"),
    ("credit", "I"),
    ("credit_ack", "I"),
    ("payload_length", "H"),
    ("reserved", "H"),
)
FRAME_HEADER = struct.Struct("!" + "".join(f for _, f in _FRAME_FIELDS))
FRAME_HEADER_SIZE = FRAME_HEADER.size  # 34
ETH_HEADER_SIZE = 14


class FrameFlags(enum.IntFlag):
    """docs/protocol.md §1: link header flags."""

    #: a frame that only carries link credit (msg_count == 0)
    CREDIT_ONLY = 0x01


class WireError(ValueError):
    """A frame that cannot be used; ``reason`` names the drop counter."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class FrameHeader:
    """The decoded Ethernet + link header of one frame."""

    dst: bytes
    src: bytes
    flags: int
    msg_count: int
    seq: int
    credit: int
    credit_ack: int
    payload_length: int
    version: int = LINK_VERSION

    @property
    def credit_only(self) -> bool:
        return bool(self.flags & FrameFlags.CREDIT_ONLY)


def mac_bytes(mac: str | bytes) -> bytes:
    """``"02:00:00:00:00:01"`` (or 6 raw bytes) as 6 bytes."""
    if isinstance(mac, bytes):
        raw = mac
    else:
        raw = bytes(int(part, 16) for part in mac.split(":"))
    if len(raw) != 6:
        raise ValueError(f"not a MAC address: {mac!r}")
    return raw


def pack_frame_header(
    buf: bytearray | memoryview,
    dst: bytes,
    src: bytes,
    flags: int,
    msg_count: int,
    seq: int,
    credit: int,
    credit_ack: int,
    payload_length: int,
) -> None:
    """Write the 34-byte frame header at offset 0 of ``buf`` (counters wrap)."""
    FRAME_HEADER.pack_into(
        buf,
        0,
        dst,
        src,
        ETHERTYPE,
        LINK_VERSION,
        flags,
        msg_count,
        seq & 0xFFFFFFFF,
        credit & 0xFFFFFFFF,
        credit_ack & 0xFFFFFFFF,
        payload_length,
        0,
    )


def parse_frame(data: bytes | bytearray | memoryview) -> tuple[FrameHeader, memoryview]:
    """Validate a received frame; ``(header, payload view)`` or :class:`WireError`."""
    mv = memoryview(data)
    n = len(mv)
    # §1: bounds check before reading the header
    if n < FRAME_HEADER_SIZE:
        raise WireError("truncated", f"{n} bytes")
    (dst, src, ethertype, version, flags, count, seq, credit, ack, plen, _r) = (
        FRAME_HEADER.unpack_from(mv, 0)
    )
    # §1: frames of another EtherType are not ours (the XDP program should not pass them)
    if ethertype != ETHERTYPE:
        raise WireError("not_ours", f"ethertype {ethertype:#06x}")
    # §1: an unknown link version is dropped, never guessed at
    if version != LINK_VERSION:
        raise WireError("bad_version", f"link version {version}")
    # §1: payload_length may be shorter than the frame (padding), never longer
    if FRAME_HEADER_SIZE + plen > n:
        raise WireError("truncated", f"payload_length {plen} > {n - FRAME_HEADER_SIZE}")
    # §1: a credit-only frame carries no messages; any other frame carries at least one
    if bool(flags & FrameFlags.CREDIT_ONLY) != (count == 0):
        raise WireError("bad_count", f"flags {flags:#x} with {count} messages")
    header = FrameHeader(dst, src, flags, count, seq, credit, ack, plen, version)
    return header, mv[FRAME_HEADER_SIZE : FRAME_HEADER_SIZE + plen]
