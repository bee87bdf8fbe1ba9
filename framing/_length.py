"""Length-prefixed framing with every option of Netty's
``LengthFieldBasedFrameDecoder`` (and the matching ``LengthFieldPrepender``).

Reference: Netty 4.1 API, ``io.netty.handler.codec.LengthFieldBasedFrameDecoder``
(class javadoc and ``decode(ChannelHandlerContext, ByteBuf)``), semantics kept
exactly:

* the length field sits at ``length_field_offset`` and is 1, 2, 3, 4 or 8 bytes
  long, in ``byte_order``; 1/2/3/4-byte fields are unsigned, the 8-byte field is
  a signed long ("getUnadjustedFrameLength");
* ``frame_length = field + length_adjustment + length_field_offset +
  length_field_length`` is the whole frame on the wire;
* a negative 8-byte field fails ("negative pre-adjustment length field"), an
  adjusted frame length below the end of the length field fails ("Adjusted frame
  length is less than lengthFieldEndOffset"), stripping more than the frame
  fails ("less than initialBytesToStrip") -- all :class:`~framing.BadLength`;
* ``frame_length > max_frame_length`` is :class:`~framing.FrameTooLong`, checked
  as soon as the length field is readable, before the frame is buffered. With
  ``fail_fast`` (Netty's default) the error is raised at once; without it the
  frame's bytes are discarded as they arrive and the error is raised when the
  last one has been skipped ("exceededFrameLength" / "failIfNecessary");
* the decoded frame is the ``frame_length`` bytes minus the first
  ``initial_bytes_to_strip``.

``encode`` is the inverse of the decoder where one exists: with
``initial_bytes_to_strip == 0`` (the frame carries its whole header; the length
field is rewritten to match the frame) and with ``length_field_offset == 0`` and
``initial_bytes_to_strip == length_field_length`` (the frame is the body; the
length field is prepended, like ``LengthFieldPrepender``). Other configurations
drop header bytes on decode and raise :class:`~framing.EncodeError`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Literal

from ._base import Framer, parse_spec_value
from ._errors import BadFramerSpec, BadLength, EncodeError, FramerConfigError, FrameTooLong
from ._messages import Frame, _speedups, build_frames, frame_maker

__all__ = ["LengthFieldConfig", "LengthFieldFramer"]

_split_length: Any = _speedups.split_length if _speedups is not None else None

_FORMATS = {1: "B", 2: "H", 4: "I", 8: "q"}


@dataclass(frozen=True, slots=True)
class LengthFieldConfig:
    """Configuration of :class:`LengthFieldFramer` (Netty's constructor arguments)."""

    length_field_offset: int = 0
    """Offset of the length field from the start of the frame (lengthFieldOffset)."""

    length_field_length: int = 4
    """Size of the length field in bytes: 1, 2, 3, 4 or 8 (lengthFieldLength)."""

    byte_order: Literal["big", "little"] = "big"
    """Byte order of the length field (byteOrder; Netty's default is big endian)."""

    length_adjustment: int = 0
    """Added to the length field to get the number of bytes after the length
    field (lengthAdjustment); negative when the field counts the header too."""

    initial_bytes_to_strip: int = 0
    """Bytes removed from the start of each decoded frame (initialBytesToStrip)."""

    max_frame_length: int = 1 << 20
    """Largest whole frame on the wire, header included (maxFrameLength)."""

    fail_fast: bool = True
    """Raise as soon as an over-long length is read (True, Netty's default), or
    discard the whole over-long frame first and raise after it (False)."""

    def __post_init__(self) -> None:
        if self.length_field_length not in (1, 2, 3, 4, 8):
            raise FramerConfigError(
                f"length_field_length must be 1, 2, 3, 4 or 8, got {self.length_field_length!r}"
            )
        if self.byte_order not in ("big", "little"):
            raise FramerConfigError(
                f"byte_order must be 'big' or 'little', got {self.byte_order!r}"
            )
        if not isinstance(self.length_field_offset, int) or self.length_field_offset < 0:
            raise FramerConfigError(
                f"length_field_offset must be a non-negative int, got {self.length_field_offset!r}"
            )
        if not isinstance(self.initial_bytes_to_strip, int) or self.initial_bytes_to_strip < 0:
            raise FramerConfigError(
                f"initial_bytes_to_strip must be a non-negative int, "
                f"got {self.initial_bytes_to_strip!r}"
            )
        if not isinstance(self.length_adjustment, int):
            raise FramerConfigError(
                f"length_adjustment must be an int, got {self.length_adjustment!r}"
            )
        if not isinstance(self.max_frame_length, int) or self.max_frame_length <= 0:
            raise FramerConfigError(
                f"max_frame_length must be a positive int, got {self.max_frame_length!r}"
            )
        # Netty: "maxFrameLength (...) must be equal to or greater than
        # lengthFieldOffset + lengthFieldLength".
        if self.length_field_offset + self.length_field_length > self.max_frame_length:
            raise FramerConfigError(
                "max_frame_length must be at least length_field_offset + length_field_length"
            )

    @property
    def length_field_end_offset(self) -> int:
        """``length_field_offset + length_field_length``."""
        return self.length_field_offset + self.length_field_length


_SPEC_KEYS = {
    "offset": "length_field_offset",
    "lengthfieldoffset": "length_field_offset",
    "size": "length_field_length",
    "length": "length_field_length",
    "lengthfieldlength": "length_field_length",
    "order": "byte_order",
    "byteorder": "byte_order",
    "adjust": "length_adjustment",
    "adjustment": "length_adjustment",
    "lengthadjustment": "length_adjustment",
    "strip": "initial_bytes_to_strip",
    "initialbytestostrip": "initial_bytes_to_strip",
    "max": "max_frame_length",
    "maxframelength": "max_frame_length",
    "failfast": "fail_fast",
    "fail_fast": "fail_fast",
}


def _unpacker(size: int, order: str) -> Callable[[bytes, int], tuple[int, ...]]:
    """``unpack_from``-like callable returning ``(value,)``. The 8-byte field
    is read unsigned here; values >= 2**63 are negative longs (caught by the
    range check and reported as negative)."""
    prefix = ">" if order == "big" else "<"
    if size == 3:
        if order == "big":
            s = struct.Struct(">BH")

            def unpack3(buf: bytes, off: int) -> tuple[int, ...]:
                hi, lo = s.unpack_from(buf, off)
                return (hi << 16 | lo,)
        else:
            s = struct.Struct("<HB")

            def unpack3(buf: bytes, off: int) -> tuple[int, ...]:
                lo, hi = s.unpack_from(buf, off)
                return (hi << 16 | lo,)

        return unpack3
    fmt = "Q" if size == 8 else _FORMATS[size]
    return struct.Struct(prefix + fmt).unpack_from


class LengthFieldFramer(Framer[Frame]):
    """Netty ``LengthFieldBasedFrameDecoder`` + ``LengthFieldPrepender``.

    ``max_message_size`` is ``max_frame_length`` (whole frame, header included).
    """

    name: ClassVar[str] = "length"

    def __init__(self, config: LengthFieldConfig | None = None, **kwargs: Any) -> None:
        if config is None:
            config = LengthFieldConfig(**kwargs)
        elif kwargs:
            raise FramerConfigError("pass either a LengthFieldConfig or keyword arguments")
        super().__init__(max_message_size=config.max_frame_length)
        self.config = config
        c = config
        self._loff = c.length_field_offset
        self._end_off = c.length_field_end_offset
        self._unpack = _unpacker(c.length_field_length, c.byte_order)
        self._add = c.length_adjustment + self._end_off
        self._strip = c.initial_bytes_to_strip
        self._lo = max(self._end_off, self._strip)
        self._need = self._end_off
        self._field_max = (
            (1 << 63) - 1 if c.length_field_length == 8 else (1 << (8 * c.length_field_length)) - 1
        )
        self._c_config = (
            self._loff,
            c.length_field_length,
            int(c.byte_order == "big"),
            self._add,
            self._lo,
        )
        self._fast = _speedups is not None and all(abs(v) < 1 << 60 for v in self._c_config)
        """Use the C split loop (the tests turn it off to compare with the Python one)."""

    def _parse(self, data: bytes) -> int:
        if self._fast and self.max_message_size >= self._lo:
            pos, flen, ok = _split_length(
                data, 0, *self._c_config, self.max_message_size, self._strip, self._out, frame_maker
            )
            if not ok:
                field = self._unpack(data, pos + self._loff)[0]
                return self._bad_length(data, pos, field + self._add)
            self._need = flen if flen >= 0 else self._end_off
            return int(pos)
        n = len(data)
        pos = 0
        end_off = self._end_off
        unpack = self._unpack
        loff = self._loff
        add = self._add
        maxlen = self.max_message_size
        lo = self._lo
        strip = self._strip
        payloads: list[bytes] = []
        append = payloads.append
        try:
            while n - pos >= end_off:
                flen = unpack(data, pos + loff)[0] + add
                if flen > maxlen or flen < lo:
                    return self._bad_length(data, pos, flen)
                e = pos + flen
                if e > n:
                    self._need = flen
                    return pos
                append(data[pos + strip : e])
                pos = e
            self._need = end_off
            return pos
        finally:  # also the messages before an error
            if payloads:
                build_frames(self._out, payloads)

    def _bad_length(self, data: bytes, pos: int, flen: int) -> int:
        raw = flen - self._add
        if raw > self._field_max:  # 8-byte field read unsigned: a negative long
            raise BadLength(f"negative pre-adjustment length field: {raw - (1 << 64)}")
        if flen < self._end_off:
            raise BadLength(
                f"adjusted frame length ({flen}) is less than length_field_end_offset "
                f"({self._end_off})"
            )
        if flen > self.max_message_size:
            err = FrameTooLong(f"adjusted frame length exceeds {self.max_message_size}: {flen}")
            avail = len(data) - pos
            if self.config.fail_fast or flen <= avail:
                raise err
            self._discard_then_fail(flen - avail, err)
            return len(data)
        raise BadLength(
            f"adjusted frame length ({flen}) is less than initial_bytes_to_strip ({self._strip})"
        )

    # -- encoding -------------------------------------------------------------

    @property
    def can_encode(self) -> bool:
        """Whether :meth:`encode` is defined for this configuration."""
        return self._strip == 0 or (self._loff == 0 and self._strip == self._end_off)

    def _pack_field(self, value: int) -> bytes:
        if not 0 <= value <= self._field_max:
            raise EncodeError(
                f"length {value} does not fit a {self.config.length_field_length}-byte length field"
            )
        return value.to_bytes(self.config.length_field_length, self.config.byte_order)

    def encode(self, message: Frame) -> bytes:
        """Wire bytes of ``message`` (see the module docstring for when this is
        defined). The result always decodes back to ``message``."""
        p = message.payload
        if self._strip == 0:
            if len(p) < self._end_off:
                raise EncodeError(
                    f"frame of {len(p)} bytes is shorter than its header ({self._end_off})"
                )
            wire_len = len(p)
            field = self._pack_field(wire_len - self._add)
            wire = p[: self._loff] + field + p[self._end_off :]
        elif self._loff == 0 and self._strip == self._end_off:
            wire_len = len(p) + self._end_off
            wire = self._pack_field(wire_len - self._add) + p
        else:
            raise EncodeError(
                "encode is undefined: initial_bytes_to_strip discards header bytes "
                f"(offset={self._loff}, strip={self._strip})"
            )
        if wire_len > self.max_message_size:
            raise EncodeError(
                f"frame of {wire_len} bytes exceeds max_frame_length {self.max_message_size}"
            )
        return bytes(wire)

    def split_parts(self, message: Frame) -> tuple[bytes, bytes]:
        """``(header, body)`` of the wire frame: the header runs to the end of
        the length field."""
        wire = self.encode(message)
        return wire[: self._end_off], wire[self._end_off :]

    @classmethod
    def from_spec(cls, params: Mapping[str, str]) -> LengthFieldFramer:
        kwargs: dict[str, Any] = {}
        for key, value in params.items():
            field = _SPEC_KEYS.get(key.lower())
            if field is None:
                raise BadFramerSpec(
                    f"length: unknown parameter {key!r} (known: offset, size, order, adjust, "
                    f"strip, max, failfast)"
                )
            v = parse_spec_value(value)
            if field == "byte_order":
                if v not in ("big", "little"):
                    raise BadFramerSpec(f"length: order must be big or little, got {value!r}")
            elif field == "fail_fast":
                if not isinstance(v, bool) and v not in (0, 1):
                    raise BadFramerSpec(f"length: failfast must be a boolean, got {value!r}")
                v = bool(v)
            elif not isinstance(v, int) or isinstance(v, bool):
                raise BadFramerSpec(f"length: {key} must be an integer, got {value!r}")
            kwargs[field] = v
        try:
            return cls(LengthFieldConfig(**kwargs))
        except FramerConfigError as exc:
            raise BadFramerSpec(f"length: {exc}") from exc

    def __repr__(self) -> str:
        return f"LengthFieldFramer({asdict(self.config)})"
