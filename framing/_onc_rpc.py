"""ONC RPC record marking (RFC 5531, "RPC: Remote Procedure Call Protocol
Specification Version 2", section 11 "Record Marking Standard").

Section 11: a record is one or more fragments; each fragment is a 4-byte
header followed by that many bytes of data. The header is a big-endian
unsigned 32-bit number: the highest bit is set on the last fragment of the
record, the other 31 bits are the fragment's length (0 to 2**31 - 1).

Bounds: ``max_message_size`` bounds the *record* (the sum of its fragments'
lengths). Every fragment length is checked against what the record may still
take before the fragment is buffered, so at most ``max_message_size`` bytes of
payload plus one 4-byte fragment header are ever held. Fragments are copied
into one growing ``bytearray`` as they complete; empty non-last fragments are
legal and cost nothing.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any, ClassVar

from ._base import Framer, parse_spec_value
from ._errors import BadFramerSpec, EncodeError, FramerConfigError, FrameTooLong, FramingError
from ._messages import OncRecord, _speedups, build_onc_records, onc_maker

__all__ = ["OncRpcFramer"]

_LAST = 0x80000000  # RFC 5531 section 11: last-fragment bit
_LEN_MASK = 0x7FFFFFFF
_HDR = struct.Struct(">I")
_split_onc: Any = _speedups.split_onc if _speedups is not None else None


class OncRpcFramer(Framer[OncRecord]):
    """RFC 5531 section 11 record marking: fragments in, whole records out."""

    name: ClassVar[str] = "onc-rpc"
    _header_slack: ClassVar[int] = 4

    def __init__(
        self, *, max_message_size: int = 1 << 20, max_fragment_size: int = _LEN_MASK
    ) -> None:
        """``max_message_size``: largest record (sum of fragment payloads).
        ``max_fragment_size``: largest fragment ``encode`` writes (records are
        split into fragments of at most this many bytes)."""
        super().__init__(max_message_size=max_message_size)
        if not isinstance(max_fragment_size, int) or not 1 <= max_fragment_size <= _LEN_MASK:
            raise FramerConfigError(
                f"max_fragment_size must be in 1..2**31-1, got {max_fragment_size!r}"
            )
        self.max_fragment_size = max_fragment_size
        self._record = bytearray()
        self._need = 4
        self._fast = _speedups is not None
        """Use the C split loop (the tests turn it off to compare with the Python one)."""

    def _parse(self, data: bytes) -> int:
        n = len(data)
        pos = 0
        unpack = _HDR.unpack_from
        record = self._record
        rlen = len(record)
        maxlen = self.max_message_size
        mask = _LEN_MASK
        payloads: list[bytes] = []
        append = payloads.append
        fast = self._fast
        try:
            while n - pos >= 4:
                if fast and not rlen:  # whole single-fragment records: in C
                    if payloads:  # keep the order: what Python took goes first
                        build_onc_records(self._out, payloads)
                        payloads.clear()
                    pos = _split_onc(data, pos, maxlen, self._out, onc_maker)
                    if n - pos < 4:
                        break
                (word,) = unpack(data, pos)
                flen = word & mask
                if rlen + flen > maxlen:  # checked before the fragment is buffered
                    raise FrameTooLong(f"record of at least {rlen + flen} bytes exceeds {maxlen}")
                e = pos + 4 + flen
                if e > n:
                    self._need = 4 + flen
                    return pos
                if word > mask:  # last-fragment bit set (section 11)
                    if rlen:
                        record += memoryview(data)[pos + 4 : e]
                        append(bytes(record))
                        record.clear()
                        rlen = 0
                    else:  # single-fragment record: one copy
                        append(data[pos + 4 : e])
                elif flen:
                    record += memoryview(data)[pos + 4 : e]
                    rlen += flen
                pos = e
            self._need = 4
            return pos
        finally:  # also the records before an error
            if payloads:
                build_onc_records(self._out, payloads)

    def _partial_bytes(self) -> int:
        return len(self._buf) + len(self._record)

    def _fail(self, exc: FramingError) -> None:
        super()._fail(exc)
        self._record = bytearray()

    def encode(self, message: OncRecord) -> bytes:
        """The record as fragments of at most ``max_fragment_size`` bytes (one
        fragment when it fits), the last one marked (section 11)."""
        p = message.payload
        if len(p) > self.max_message_size:
            raise EncodeError(f"record of {len(p)} bytes exceeds {self.max_message_size}")
        step = self.max_fragment_size
        if len(p) <= step:
            return _HDR.pack(_LAST | len(p)) + p
        parts = []
        for start in range(0, len(p), step):
            chunk = p[start : start + step]
            last = _LAST if start + step >= len(p) else 0
            parts.append(_HDR.pack(last | len(chunk)))
            parts.append(chunk)
        return b"".join(parts)

    def split_parts(self, message: OncRecord) -> tuple[bytes, bytes]:
        """``(b"", payload)``: a record has no header of its own once reassembled."""
        return b"", message.payload

    @classmethod
    def from_spec(cls, params: Mapping[str, str]) -> OncRpcFramer:
        kwargs = {}
        for key, value in params.items():
            name = {
                "max": "max_message_size",
                "fragment": "max_fragment_size",
                "max_fragment": "max_fragment_size",
            }.get(key.lower())
            v = parse_spec_value(value)
            if name is None:
                raise BadFramerSpec(f"onc-rpc: unknown parameter {key!r} (known: max, fragment)")
            if not isinstance(v, int) or isinstance(v, bool):
                raise BadFramerSpec(f"onc-rpc: {key} must be an integer, got {value!r}")
            kwargs[name] = v
        try:
            return cls(**kwargs)
        except FramerConfigError as exc:
            raise BadFramerSpec(f"onc-rpc: {exc}") from exc
