"""The framing error tree.

Every error a framer raises is a :class:`FramingError`. Each subclass carries a
``code``: a short snake_case string that the agent uses verbatim as the close
reason of the connection and as the name of the counter it increments. Codes
are part of the public contract (see ``docs/framing.md``); never rename one.

After a framer has raised (or queued) a decoding error it is in a terminal
state: every further :meth:`~framing.Framer.feed`, :meth:`~framing.Framer.feed_eof`
and :meth:`~framing.Framer.next_message` raises the same error again.
"""

from __future__ import annotations

__all__ = [
    "BadDigest",
    "BadDigestFlags",
    "BadFramerSpec",
    "BadHeaderLength",
    "BadLength",
    "BadMsgpack",
    "BadPduOffset",
    "BadRpcMessage",
    "EncodeError",
    "FrameTooLong",
    "FramerClosed",
    "FramerConfigError",
    "FramingError",
    "MalformedFrame",
    "TruncatedMessage",
    "UnknownFramer",
    "UnknownPduType",
]


class FramingError(Exception):
    """Root of every error raised by :mod:`framing`."""

    code: str = "framing_error"

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.code)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, {str(self)!r})"


class FrameTooLong(FramingError):
    """A message (as announced by its header, or as buffered so far) exceeds
    ``max_message_size``."""

    code = "frame_too_long"


class TruncatedMessage(FramingError):
    """End of stream in the middle of a message."""

    code = "truncated_message"


class FramerClosed(FramingError):
    """``feed`` after ``feed_eof``: the stream was already ended."""

    code = "framer_closed"


class MalformedFrame(FramingError):
    """The bytes do not form a valid message of the protocol."""

    code = "malformed_frame"


class BadLength(MalformedFrame):
    """A length field that cannot be right (negative, shorter than the header
    it belongs to, stripping more than the frame holds)."""

    code = "bad_length"


class BadHeaderLength(MalformedFrame):
    """NVMe/TCP: HLEN differs from the fixed header length of the PDU type."""

    code = "bad_header_length"


class BadPduOffset(MalformedFrame):
    """NVMe/TCP: PDO points inside the header (or digest) or beyond PLEN."""

    code = "bad_data_offset"


class UnknownPduType(MalformedFrame):
    """NVMe/TCP: a PDU type the transport specification does not define."""

    code = "unknown_pdu_type"


class BadDigest(MalformedFrame):
    """NVMe/TCP: a header or data digest (CRC32C) does not match."""

    code = "bad_digest"


class BadDigestFlags(MalformedFrame):
    """NVMe/TCP: HDGSTF/DDGSTF flags disagree with the negotiated digests."""

    code = "bad_digest_flags"


class BadMsgpack(MalformedFrame):
    """msgpack-rpc: the stream is not valid msgpack."""

    code = "bad_msgpack"


class BadRpcMessage(MalformedFrame):
    """msgpack-rpc: a valid msgpack value that is not a request, response or
    notification."""

    code = "bad_rpc_message"


class EncodeError(FramingError, ValueError):
    """``encode`` was given a message that cannot be put on the wire with this
    framer's configuration. Encoding errors do not change the decoder state."""

    code = "encode_error"


class FramerConfigError(FramingError, ValueError):
    """Invalid framer configuration (constructor arguments)."""

    code = "bad_config"


class BadFramerSpec(FramerConfigError):
    """A spec string given to :func:`framing.framer_from_spec` is invalid."""

    code = "bad_spec"


class UnknownFramer(BadFramerSpec):
    """A spec string names a framer that is neither registered, nor an entry
    point of group ``mux_rpc.framers``, nor an importable class."""

    code = "unknown_framer"
