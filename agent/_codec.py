"""Between a framer's message objects and the DATA messages the link carries.

Client -> host: a decoded message becomes ``header + data`` with DATA's
``header_length = len(header)``, from the framer's ``split_parts``:

* length-prefixed: the whole frame as received (header = through the end of
  the length field);
* NVMe/TCP: the PDU header (HLEN bytes, digest verified and removed) and the
  PDU data (pad and digest removed) -- the header/data split the host wants;
* msgpack-rpc: the value's bytes as received; ONC RPC: the reassembled record
  (no record marks); custom framers: their ``split_parts``.

Host -> client: DATA ``(payload, header_length)`` is the reply in the same
shape, and the framer puts it back on the wire:

* length-prefixed: the length field is (re)written for the body
  ``payload[header_length:]`` (a header the host sent along is kept when the
  frame carries its header, i.e. ``strip=0``);
* NVMe/TCP with ``header_length > 0``: a PDU from header and data, digests
  computed by ``encode``; with 0 the payload is already wire bytes;
* ONC RPC: record marking added;
* msgpack-rpc and anything else: the payload is already the wire bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import framing
from framing import LengthFieldFramer, NvmePdu, NvmeTcpFramer, OncRpcFramer
from framing._base import Framer

__all__ = ["make_framer", "reply_encoder", "wire_of"]

_NVME_CH = struct.Struct("<BBBBI")  # NVMe/TCP common header: type, flags, hlen, pdo, plen


def make_framer(spec: str, max_message_size: int) -> Framer[Any]:
    """A framer for ``spec`` whose limit is at most ``max_message_size``.

    Raises :class:`framing.FramingError` (a subclass) for a bad spec.
    """
    framer = framing.framer_from_spec(spec)
    # the agent's own limit wins: never buffer more than it allows
    framer.max_message_size = min(framer.max_message_size, max_message_size)
    return framer


def wire_of(framer: Framer[Any], message: Any) -> tuple[bytes, int]:
    """``(header + data, header length)`` of a decoded message."""
    if type(framer) is LengthFieldFramer:
        c = framer.config
        if c.initial_bytes_to_strip == 0:
            return message.payload, c.length_field_end_offset
        wire = framer.encode(message)
        return wire, c.length_field_end_offset
    if type(framer).split_parts is Framer.split_parts:
        return framer.message_bytes(message), 0
    header, data = framer.split_parts(message)
    if not header:
        return data, 0
    return header + data, min(len(header), 0xFFFF)


def wire_fn(framer: Framer[Any]) -> Callable[[Any], tuple[bytes, int]]:
    """:func:`wire_of` specialised for one framer (the per-message hot path)."""
    if type(framer) is LengthFieldFramer and framer.config.initial_bytes_to_strip == 0:
        end = framer.config.length_field_end_offset
        return lambda m: (m.payload, end)
    if type(framer).split_parts is Framer.split_parts:
        mb = framer.message_bytes
        return lambda m: (mb(m), 0)
    return lambda m: wire_of(framer, m)


def reply_encoder(framer: Framer[Any]) -> Callable[[bytes, int], bytes]:
    """``encode(payload, header_length) -> wire bytes`` for host replies."""
    own = getattr(framer, "encode_payload", None)
    if callable(own):
        return own  # type: ignore[no-any-return]
    if isinstance(framer, LengthFieldFramer):
        return _length_encoder(framer)
    if isinstance(framer, NvmeTcpFramer):
        return _nvme_encoder(framer)
    if isinstance(framer, OncRpcFramer):
        rec = framing.OncRecord
        return lambda payload, hl: framer.encode(rec(payload[hl:]))
    return _identity


def _length_encoder(framer: LengthFieldFramer) -> Callable[[bytes, int], bytes]:
    c = framer.config
    end = c.length_field_end_offset
    frame = framing.Frame
    if c.initial_bytes_to_strip == 0:
        blank = bytes(end)

        def enc(payload: bytes, hl: int) -> bytes:
            head = payload[:end] if hl == end else blank
            return framer.encode(frame(head + payload[hl:] if hl != end else payload))
        return enc
    return lambda payload, hl: framer.encode(frame(payload[hl:]))


def _nvme_encoder(framer: NvmeTcpFramer) -> Callable[[bytes, int], bytes]:
    def enc(payload: bytes, hl: int) -> bytes:
        if not hl:
            return payload
        header = payload[:hl]
        if len(header) < _NVME_CH.size:
            raise framing.EncodeError("NVMe/TCP reply header shorter than the common header")
        ptype, flags, hlen, pdo, plen = _NVME_CH.unpack_from(header, 0)
        return framer.encode(NvmePdu(header, payload[hl:], ptype, flags, hlen, pdo, plen))
    return enc


def _identity(payload: bytes, hl: int) -> bytes:
    return payload
