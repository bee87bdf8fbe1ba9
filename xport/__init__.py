"""The XDP transport: frames and messages between the agent and the host.

Layers, bottom up:

- backends (:class:`FrameBackend`): :class:`AfXdpBackend` (AF_XDP over
  libxdp, cffi; needs root, the compiled extension and ``bpf/mux_xdp.o``),
  :class:`AfPacketBackend` (AF_PACKET with PACKET_MMAP rings, the baseline),
  :class:`ShmBackend` (shared-memory rings for machines without AF_XDP);
- topology: :class:`VethPair` (the veth pair that stands in for the shared
  hardware queue) and the XDP program loader :class:`XdpProgram`;
- wire format: frame header with link credits (``_wire``), transport messages
  (``Hello`` ... ``Error``, see ``docs/protocol.md``);
- :class:`Link` / :class:`AsyncLink`: many messages per frame, fragmentation,
  lossless link-level credits, keepalive;
- connection credit arithmetic: :class:`SendWindow`, :class:`ReceiveWindow`.

``xport.testing`` has an in-memory backend pair and a fake clock.

The AF_XDP names need the compiled extension ``xport._xsk_cffi`` (built by
``scripts/setup.sh``); without it they are absent and
:data:`AFXDP_IMPORT_ERROR` says why, while everything else works. They and the
topology names (pyroute2) are imported on first use, not by ``import xport``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._afpacket import ETH_P_MUX, AfPacketBackend
from ._backend import BackendStats, BufferReleasedError, FrameBackend, RxFrame, TxSlot
from ._flow import FlowControlError, ReceiveWindow, SendWindow
from ._link import AsyncLink, Link, LinkConfig, LinkLostError, LinkStats
from ._protocol import (
    PROTOCOL_VERSION,
    Close,
    Closed,
    Connect,
    Connected,
    Credit,
    Data,
    Eof,
    Error,
    Hello,
    Keepalive,
    Listen,
    ListenResult,
    Message,
    MessageType,
    NewConnection,
    ProtocolError,
    Role,
    Status,
    make_data,
)
from ._shm import ShmBackend
from ._wire import ETHERTYPE, WireError

if TYPE_CHECKING:
    from ._afxdp import AfXdpBackend
    from ._bpfload import XdpProgram
    from ._topology import (
        LinkEnd,
        SweepResult,
        VethPair,
        install_cleanup_handlers,
        owned_name,
        parse_owned_name,
        sweep_stale,
    )

    AFXDP_IMPORT_ERROR: str | None

_TOPOLOGY_NAMES = frozenset({"LinkEnd", "SweepResult", "VethPair", "install_cleanup_handlers",
                             "owned_name", "parse_owned_name", "sweep_stale"})
_AFXDP_NAMES = frozenset({"AfXdpBackend", "XdpProgram", "AFXDP_IMPORT_ERROR"})


def __getattr__(name: str) -> Any:
    """The names that need pyroute2 (topology) or the cffi extension (AF_XDP)
    are imported on first use: ``import xport`` - and so ``import mux_rpc`` and
    ``mux-rpc --help`` - loads neither."""
    g = globals()
    if name in _TOPOLOGY_NAMES:
        from . import _topology

        g.update({n: getattr(_topology, n) for n in _TOPOLOGY_NAMES})
    elif name in _AFXDP_NAMES:
        try:
            from ._afxdp import AfXdpBackend
            from ._bpfload import XdpProgram
        except ImportError as exc:  # extension not built, or libxdp missing
            g["AFXDP_IMPORT_ERROR"] = f"{type(exc).__name__}: {exc}"
        else:
            g.update(AfXdpBackend=AfXdpBackend, XdpProgram=XdpProgram, AFXDP_IMPORT_ERROR=None)
    if name in g:
        return g[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AFXDP_IMPORT_ERROR",
    "ETHERTYPE",
    "ETH_P_MUX",
    "PROTOCOL_VERSION",
    "AfPacketBackend",
    "AfXdpBackend",
    "AsyncLink",
    "BackendStats",
    "BufferReleasedError",
    "Close",
    "Closed",
    "Connect",
    "Connected",
    "Credit",
    "Data",
    "Eof",
    "Error",
    "FlowControlError",
    "FrameBackend",
    "Hello",
    "Keepalive",
    "Link",
    "LinkConfig",
    "LinkEnd",
    "LinkLostError",
    "LinkStats",
    "Listen",
    "ListenResult",
    "Message",
    "MessageType",
    "NewConnection",
    "ProtocolError",
    "ReceiveWindow",
    "Role",
    "RxFrame",
    "SendWindow",
    "ShmBackend",
    "Status",
    "SweepResult",
    "TxSlot",
    "VethPair",
    "WireError",
    "XdpProgram",
    "install_cleanup_handlers",
    "make_data",
    "owned_name",
    "parse_owned_name",
    "sweep_stale",
]
