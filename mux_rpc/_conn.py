"""The message-connection interface the runtime is built on.

The host never sees a TCP byte stream: the offload agent (or, for tests, the
in-memory pair in :mod:`mux_rpc.testing`) hands it *whole* messages, one per
``recv()``. Anything that implements :class:`MessageConnection` and
:class:`MessageListener` can be served by :class:`mux_rpc.Server`.

Flow control contract: a connection's receive credit is only returned to the
sender when the consumer calls :meth:`MessageConnection.on_consumed` for a
message. The runtime calls it when the handler for that message has finished,
so a slow handler backpressures only the clients of its own connection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = [
    "ConnectionClosedError",
    "ListenerClosedError",
    "Message",
    "MessageConnection",
    "MessageListener",
    "MuxRpcError",
]


class MuxRpcError(Exception):
    """Root of every error raised by mux_rpc itself."""


class ConnectionClosedError(MuxRpcError):
    """The connection was closed (by this side with ``close()``, or by the peer)
    and can no longer send; the cause, when known, is chained."""


class ListenerClosedError(MuxRpcError):
    """``accept()`` was called on (or was waiting on) a listener that is closed."""


@dataclass(frozen=True, slots=True)
class Message:
    """One whole upper-layer-protocol message."""

    payload: bytes
    """The message body (for NVMe/TCP: the PDU data)."""
    header: bytes | None = None
    """A separate header when the framer splits header and data (NVMe/TCP
    PDU header), else None."""

    @property
    def nbytes(self) -> int:
        """Bytes this message counts against connection credit."""
        return len(self.payload) + (len(self.header) if self.header is not None else 0)


@runtime_checkable
class MessageConnection(Protocol):
    """One client connection as a stream of whole messages."""

    conn_id: int
    peer: tuple[str, int] | None

    async def recv(self) -> Message | None:
        """The next whole message, or None once the peer closed cleanly.

        Raises :class:`ConnectionClosedError` when the connection broke or was
        closed locally."""
        ...

    async def send(self, payload: bytes, *, header: bytes | None = None) -> None:
        """Send one whole message (optionally with a separate header). May wait
        for flow control. Raises :class:`ConnectionClosedError` when closed."""
        ...

    async def close(self) -> None:
        """Close the connection; idempotent."""
        ...

    def on_consumed(self, nbytes: int) -> None:
        """Report that one received message of ``nbytes`` bytes is done with, so
        its credit returns to the sender (the agent)."""
        ...


@runtime_checkable
class MessageListener(Protocol):
    """A source of incoming :class:`MessageConnection` objects."""

    async def accept(self) -> MessageConnection:
        """Wait for the next connection. Raises :class:`ListenerClosedError`
        once the listener is closed."""
        ...

    async def close(self) -> None:
        """Stop accepting; idempotent. Connections already accepted stay open."""
        ...
