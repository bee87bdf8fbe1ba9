"""Message types produced and consumed by the framers.

All messages are frozen, slotted dataclasses. Framers build them on the hot
path, so each one is small and holds ``bytes`` (never ``bytearray`` or views
into a framer buffer: a message stays valid after the framer moves on).
"""

from __future__ import annotations

import importlib
import os
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import repeat
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
# messages with a *builder*: ``build(out, col1, col2, ...)`` appends one message
# per row of the columns (one column per slot, in ``__slots__`` order) to the
# list ``out``. With the optional C accelerator (``framing._speedups``, built by
# ``python scripts/build_accelerators.py``) a row is one C call that allocates the
# instance and fills its slots; the pure-Python fallback allocates the batch with
# ``object.__new__`` and fills each slot through its descriptor's ``__set__``
# (``map`` over the column, no bytecode per message). Either way the result is
# the same frozen, slotted instance (equality, hashing, repr and immutability
# unchanged; tests compare the two). Only framers use these.
_new = object.__new__

_speedups: Any
"""The C accelerator module, or None."""
try:
    if os.environ.get("FRAMING_PURE_PYTHON"):
        raise ImportError("FRAMING_PURE_PYTHON is set")
    _speedups = importlib.import_module(__name__.rpartition(".")[0] + "._speedups")
except ImportError:
    _speedups = None

ACCELERATED: bool = _speedups is not None
"""The C accelerator is in use (``FRAMING_PURE_PYTHON=1`` turns it off)."""


def _setter(cls: type, name: str) -> Callable[[Any, Any], None]:
    """The ``__set__`` of slot ``name`` (bypasses the frozen ``__setattr__``)."""
    descriptor: Any = cls.__dict__[name]
    return descriptor.__set__  # type: ignore[no-any-return]


Builder = Callable[..., None]


def _slots(cls: type) -> tuple[str, ...]:
    """The slot names of a message class, in field order."""
    return tuple(getattr(cls, "__slots__"))  # noqa: B009 - mypy: type has no __slots__


def _py_builder(cls: type) -> Builder:
    """Pure-Python builder for ``cls`` (see above)."""
    setters = tuple(_setter(cls, name) for name in _slots(cls))
    new = _new
    sink: Callable[[Iterable[Any]], None] = deque(maxlen=0).extend  # consume a map

    def build(out: list[Any], *cols: list[Any]) -> None:
        objs: list[Any] = list(map(new, repeat(cls, len(cols[0]))))
        for setter, col in zip(setters, cols, strict=True):
            sink(map(setter, objs, col))
        out.extend(objs)

    return build


def _c_maker(cls: type) -> Callable[..., Any]:
    """The C accelerator's one-call constructor for ``cls`` (all slots, in order)."""
    assert _speedups is not None
    return _speedups.Maker(cls, _slots(cls))  # type: ignore[no-any-return]


def _builder(cls: type) -> Builder:
    """The fastest builder available for ``cls``."""
    if _speedups is None:
        return _py_builder(cls)
    make = _c_maker(cls)

    def build(out: list[Any], *cols: list[Any]) -> None:
        out.extend(map(make, *cols))

    return build


build_frames = _builder(Frame)
build_onc_records = _builder(OncRecord)
build_pdus = _builder(NvmePdu)

# One-call constructors for the C split loops (None without the accelerator).
frame_maker = _c_maker(Frame) if _speedups is not None else None
onc_maker = _c_maker(OncRecord) if _speedups is not None else None
pdu_maker = _c_maker(NvmePdu) if _speedups is not None else None
