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

from typing import Any

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
    "OffloadRequestError",
    "OffloadRuntime",
    "OffloadServer",
    "current_host",
    "open_connection",
    "reason_code",
    "run_offloaded",
    "start_server",
    "use_host",
]


def __dir__() -> list[str]:
    return __all__


# the orchestration pulls in pyroute2 and the backends: import it on first use
def run_offloaded(*args: Any, **kwargs: Any) -> Any:
    """See :func:`mux_rpc._orchestrate.run_offloaded`."""
    from ._orchestrate import run_offloaded as impl

    return impl(*args, **kwargs)


def OffloadRuntime(*args: Any, **kwargs: Any) -> Any:
    """See :class:`mux_rpc._orchestrate.OffloadRuntime`."""
    from ._orchestrate import OffloadRuntime as impl

    return impl(*args, **kwargs)
