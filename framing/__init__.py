"""Sans-I/O framers: bytes in, whole messages out, and messages back to bytes.

No I/O, no sockets, no asyncio: a framer is a pure object (like h11). Feed it
what a TCP stream delivered with :meth:`Framer.feed`, take whole messages with
:meth:`Framer.next_message` (or :meth:`Framer.drain`), end with
:meth:`Framer.feed_eof`, and turn messages into bytes with :meth:`Framer.encode`.
See ``docs/framing.md``.
"""

from ._base import Framer, parse_spec_value
from ._errors import (
    BadDigest,
    BadDigestFlags,
    BadFramerSpec,
    BadHeaderLength,
    BadLength,
    BadMsgpack,
    BadPduOffset,
    BadRpcMessage,
    EncodeError,
    FramerClosed,
    FramerConfigError,
    FrameTooLong,
    FramingError,
    MalformedFrame,
    TruncatedMessage,
    UnknownFramer,
    UnknownPduType,
)
from ._length import LengthFieldConfig, LengthFieldFramer
from ._messages import (
    Frame,
    NvmePdu,
    OncRecord,
    RpcMessage,
    RpcNotification,
    RpcRequest,
    RpcResponse,
)
from ._msgpack_rpc import MsgpackRpcFramer
from ._nvme_tcp import NvmeTcpFramer, PduType, make_nvme_pdu
from ._onc_rpc import OncRpcFramer
from ._registry import (
    ENTRY_POINT_GROUP,
    FramerFactory,
    available_framers,
    framer_from_spec,
    parse_spec,
    register_framer,
    unregister_framer,
)

for _cls in (LengthFieldFramer, MsgpackRpcFramer, NvmeTcpFramer, OncRpcFramer):
    register_framer(_cls.name, _cls)
del _cls

__all__ = [
    "ENTRY_POINT_GROUP",
    "BadDigest",
    "BadDigestFlags",
    "BadFramerSpec",
    "BadHeaderLength",
    "BadLength",
    "BadMsgpack",
    "BadPduOffset",
    "BadRpcMessage",
    "EncodeError",
    "Frame",
    "FrameTooLong",
    "Framer",
    "FramerClosed",
    "FramerConfigError",
    "FramerFactory",
    "FramingError",
    "LengthFieldConfig",
    "LengthFieldFramer",
    "MalformedFrame",
    "MsgpackRpcFramer",
    "NvmePdu",
    "NvmeTcpFramer",
    "OncRecord",
    "OncRpcFramer",
    "PduType",
    "RpcMessage",
    "RpcNotification",
    "RpcRequest",
    "RpcResponse",
    "TruncatedMessage",
    "UnknownFramer",
    "UnknownPduType",
    "available_framers",
    "framer_from_spec",
    "make_nvme_pdu",
    "parse_spec",
    "parse_spec_value",
    "register_framer",
    "unregister_framer",
]
