"""Offloaded sockets: the public face.

Two ways in:

* message sockets: ``listener = await host.listen(port, "length")``,
  ``conn = await listener.accept()``, ``await conn.recv()`` / ``send`` / ``close``;
* asyncio-streams shaped: ``server = await mux_rpc.offload.start_server(cb,
  "127.0.0.1", 8888, framer="length")`` with ``cb(reader, writer)`` and
  ``await reader.read_message()``.

See docs/host-api.md.
"""

from __future__ import annotations

from ._offload import (
    HOST_CONN_ID_BASE,
    Host,
    HostConfig,
    HostStats,
    LinkPort,
    OffloadConnection,
    OffloadListener,
    reason_code,
)
from ._offload_errors import (
    AgentClosedReason,
    BusyError,
    ConnectionBrokenError,
    ConnectionClosedError,
    LinkLostError,
    ListenerClosedError,
    OffloadRequestError,
)
from ._orchestrate import OffloadOptions, OffloadRuntime, afxdp_unavailable_reason, run_offloaded
from ._streams import (
    MessageReader,
    MessageWriter,
    OffloadServer,
    current_host,
    open_connection,
    start_server,
    use_host,
)

__all__ = [
    "HOST_CONN_ID_BASE",
    "AgentClosedReason",
    "BusyError",
    "ConnectionBrokenError",
    "ConnectionClosedError",
    "Host",
    "HostConfig",
    "HostStats",
    "LinkLostError",
    "LinkPort",
    "ListenerClosedError",
    "MessageReader",
    "MessageWriter",
    "OffloadConnection",
    "OffloadListener",
    "OffloadOptions",
    "OffloadRequestError",
    "OffloadRuntime",
    "OffloadServer",
    "afxdp_unavailable_reason",
    "current_host",
    "open_connection",
    "reason_code",
    "run_offloaded",
    "start_server",
    "use_host",
]
