"""Message types produced and consumed by the framers.

All messages are frozen, slotted dataclasses. Framers build them on the hot
path, so each one is small and holds ``bytes`` (never ``bytearray`` or views
into a framer buffer: a message stays valid after the framer moves on).
"""

from __future__ import annotations

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


@dataclass(frozen=True, slots=True)
class NvmePdu:
    """One NVMe/TCP PDU, split into header and data.

    ``header`` is the PDU header (common header + PDU specific header, ``hlen``
    bytes, without the header digest); ``data`` is the PDU data (starting at
    ``pdo``, without padding and without the data digest). Build one to send
    with :func:`framing.make_nvme_pdu`.
    """

    header: bytes
    data: bytes
    pdu_type: int
    flags: int
    hlen: int
    pdo: int
    plen: int

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
