"""Message types produced and consumed by the framers.

All messages are frozen, slotted dataclasses. Framers build them on the hot
path, so each one is small and holds ``bytes`` (never ``bytearray`` or views
into a framer buffer: a message stays valid after the framer moves on).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Frame",
    "NvmePdu",
    "OncRecord",
    "RpcMessage",
    "RpcNotification",
    "RpcRequest",
    "RpcResponse",
]


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame of a length-prefixed (or other byte-oriented) stream."""

    payload: bytes
    """The frame as the decoder outputs it (after ``initial_bytes_to_strip``)."""


@dataclass(frozen=True, slots=True)
class RpcRequest:
    """msgpack-rpc request ``[0, msgid, method, params]``."""

    msgid: int
    method: str
    params: list[Any]
    raw: bytes = field(default=b"", compare=False, repr=False)
    """The exact encoded bytes of the value as received (empty when built
    locally); forward these instead of re-encoding."""


@dataclass(frozen=True, slots=True)
class RpcResponse:
    """msgpack-rpc response ``[1, msgid, error, result]``."""

    msgid: int
    error: Any
    result: Any
    raw: bytes = field(default=b"", compare=False, repr=False)
    """The exact encoded bytes of the value as received (empty when built locally)."""


@dataclass(frozen=True, slots=True)
class RpcNotification:
    """msgpack-rpc notification ``[2, method, params]``."""

    method: str
    params: list[Any]
    raw: bytes = field(default=b"", compare=False, repr=False)
    """The exact encoded bytes of the value as received (empty when built locally)."""


RpcMessage = RpcRequest | RpcResponse | RpcNotification


@dataclass(frozen=True, slots=True, init=False)
class NvmePdu:
    """One NVMe/TCP PDU, split into header and data.

    ``header`` is the PDU header (common header + PDU specific header, HLEN
    bytes, without the header digest); ``data`` is the PDU data (starting at
    PDO, without padding and without the data digest). The common-header fields
    (``flags``, ``hlen``, ``pdo``, ``plen``) are read from ``header``; they may
    also be passed to the constructor, which then checks that they agree with
    the header (``ValueError`` otherwise). Build a PDU to send with
    :func:`framing.make_nvme_pdu`.
    """

    header: bytes
    data: bytes
    pdu_type: int

    def __init__(
        self,
        header: bytes,
        data: bytes,
        pdu_type: int,
        flags: int | None = None,
        hlen: int | None = None,
        pdo: int | None = None,
        plen: int | None = None,
    ) -> None:
        object.__setattr__(self, "header", header)
        object.__setattr__(self, "data", data)
        object.__setattr__(self, "pdu_type", pdu_type)
        given = {"flags": flags, "hlen": hlen, "pdo": pdo, "plen": plen}
        for name, value in given.items():
            if value is not None and (len(header) < 8 or getattr(self, name) != value):
                raise ValueError(f"NvmePdu: {name}={value} disagrees with the header")

    @property
    def flags(self) -> int:
        """CH FLAGS (byte 1)."""
        return self.header[1]

    @property
    def hlen(self) -> int:
        """CH HLEN (byte 2): the header length, ``len(header)`` for a decoded PDU."""
        return self.header[2]

    @property
    def pdo(self) -> int:
        """CH PDO (byte 3): offset of the data in the PDU on the wire (0: no data)."""
        return self.header[3]

    @property
    def plen(self) -> int:
        """CH PLEN (bytes 4-7, little endian): length of the whole PDU on the wire."""
        return int.from_bytes(self.header[4:8], "little")

    @property
    def hdgst(self) -> bool:
        """The PDU carries a header digest (HDGSTF)."""
        return bool(self.flags & 0x01)

    @property
    def ddgst(self) -> bool:
        """The PDU carries a data digest (DDGSTF)."""
        return bool(self.flags & 0x02)


@dataclass(frozen=True, slots=True)
class OncRecord:
    """One ONC RPC record: the concatenated payload of its fragments."""

    payload: bytes


# Hot-path construction. A frozen dataclass's __init__ goes through
# object.__setattr__ once per field, which costs more than splitting the message
# off the stream. Framers that have already validated every field build
# messages with ``_new(cls)`` and the slots' own descriptors instead; the
# result is the same frozen, slotted instance (equality, hashing, repr and
# immutability unchanged). Only framers use these.
_new = object.__new__


def _setter(cls: type, name: str) -> Callable[[Any, Any], None]:
    """The ``__set__`` of slot ``name`` (bypasses the frozen ``__setattr__``)."""
    descriptor: Any = cls.__dict__[name]
    return descriptor.__set__  # type: ignore[no-any-return]


_set_frame_payload = _setter(Frame, "payload")
_set_onc_payload = _setter(OncRecord, "payload")
_set_pdu = (_setter(NvmePdu, "header"), _setter(NvmePdu, "data"), _setter(NvmePdu, "pdu_type"))
_set_request = (
    _setter(RpcRequest, "msgid"),
    _setter(RpcRequest, "method"),
    _setter(RpcRequest, "params"),
    _setter(RpcRequest, "raw"),
)
_set_response = (
    _setter(RpcResponse, "msgid"),
    _setter(RpcResponse, "error"),
    _setter(RpcResponse, "result"),
    _setter(RpcResponse, "raw"),
)
_set_notification = (
    _setter(RpcNotification, "method"),
    _setter(RpcNotification, "params"),
    _setter(RpcNotification, "raw"),
)
