"""mux_rpc: the host-side runtime of mux-rpc.

Declare handlers on an :class:`App`, serve it with :class:`Server` over any
:class:`MessageListener` (offloaded sockets, or :mod:`mux_rpc.testing`), or
directly over TCP with :func:`serve_direct`; call it with :class:`Client`.
"""

from ._client import Client, MessageClient
from ._conn import (
    ConnectionClosedError,
    ListenerClosedError,
    Message,
    MessageConnection,
    MessageListener,
    MuxRpcError,
)
from ._direct import DirectServer, run_direct, serve_direct
from ._dispatch import Dispatcher, ErrorCode, PendingCall, ProtocolError, RemoteError
from ._limits import InflightLimits
from ._server import Server, ServerConfig, ServerStats
from ._service import App, MethodSpec, Service, StreamHandlerSpec

__all__ = [
    "App",
    "Client",
    "ConnectionClosedError",
    "DirectServer",
    "Dispatcher",
    "ErrorCode",
    "InflightLimits",
    "ListenerClosedError",
    "Message",
    "MessageClient",
    "MessageConnection",
    "MessageListener",
    "MethodSpec",
    "MuxRpcError",
    "PendingCall",
    "ProtocolError",
    "RemoteError",
    "Server",
    "ServerConfig",
    "ServerStats",
    "Service",
    "StreamHandlerSpec",
    "run_direct",
    "serve_direct",
]
