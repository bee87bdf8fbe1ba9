"""mux_rpc: the host-side runtime of mux-rpc.

Declare handlers on an :class:`App`, serve it with :class:`Server` over any
:class:`MessageListener` (offloaded sockets, or :mod:`mux_rpc.testing`), or
directly over TCP with :func:`serve_direct`; call it with :class:`Client`.

The offload face (:mod:`mux_rpc.offload`, docs/host-api.md): :class:`Host`
(offloaded message sockets), :func:`start_server` / :func:`open_connection`
(the asyncio-streams shape), :class:`OffloadRuntime`, :class:`OffloadOptions`
and :func:`run_offloaded` (veth pair, agent process and host in one call).
"""

from . import offload
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
from .offload import (
    Host,
    OffloadOptions,
    OffloadRuntime,
    open_connection,
    run_offloaded,
    start_server,
)

__all__ = [
    "App",
    "Client",
    "ConnectionClosedError",
    "DirectServer",
    "Dispatcher",
    "ErrorCode",
    "Host",
    "InflightLimits",
    "ListenerClosedError",
    "Message",
    "MessageClient",
    "MessageConnection",
    "MessageListener",
    "MethodSpec",
    "MuxRpcError",
    "OffloadOptions",
    "OffloadRuntime",
    "PendingCall",
    "ProtocolError",
    "RemoteError",
    "Server",
    "ServerConfig",
    "ServerStats",
    "Service",
    "StreamHandlerSpec",
    "offload",
    "open_connection",
    "run_direct",
    "run_offloaded",
    "serve_direct",
    "start_server",
]
