"""Errors of the offloaded-socket API, with exact meanings (as trio names them).

    MuxRpcError
    ├── ConnectionClosedError        you closed it (``close()`` was called)
    │   └── ConnectionBrokenError    the client, the agent or the link broke it;
    │       │                        ``reason`` is the CLOSED reason code, and the
    │       │                        cause (:class:`AgentClosedReason`) is chained
    │       └── LinkLostError        the link to the agent died (keepalive timeout)
    │                                or the agent restarted
    ├── BusyError                    two tasks called ``recv()`` on one connection
    ├── OffloadRequestError          the agent refused LISTEN or CONNECT
    └── ListenerClosedError          ``accept()`` on a closed listener

``ConnectionBrokenError`` subclasses ``ConnectionClosedError`` so that code
written against :class:`mux_rpc._conn.MessageConnection` (which promises
``ConnectionClosedError`` for every kind of closed connection) keeps working;
catch the subclass first to tell the two apart.
"""

from __future__ import annotations

from ._conn import ConnectionClosedError, ListenerClosedError, MuxRpcError

__all__ = [
    "AgentClosedReason",
    "BusyError",
    "ConnectionBrokenError",
    "ConnectionClosedError",
    "LinkLostError",
    "ListenerClosedError",
    "MuxRpcError",
    "OffloadRequestError",
]


class AgentClosedReason(Exception):
    """The cause chained onto :class:`ConnectionBrokenError`: what the agent said.

    ``code`` is the machine reason (``"peer_closed"``, ``"peer_reset"``, a framer
    error code such as ``"message_too_large"``, ``"link_lost"``,
    ``"peer_restarted"``, ``"credit_overrun"``...), ``text`` the human detail.
    """

    def __init__(self, code: str, text: str = "") -> None:
        super().__init__(f"{code}: {text}" if text else code)
        self.code = code
        self.text = text


class ConnectionBrokenError(ConnectionClosedError):
    """The connection was broken by the client, the agent or the link.

    ``reason`` is the machine reason code; ``__cause__`` is an
    :class:`AgentClosedReason` carrying the code and text.
    """

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


class LinkLostError(ConnectionBrokenError):
    """The link to the agent was lost (keepalive timeout) or the agent restarted."""


class BusyError(MuxRpcError):
    """Two tasks called ``recv()`` on the same connection at the same time."""


class OffloadRequestError(MuxRpcError):
    """The agent answered LISTEN or CONNECT with an error (``text`` from the agent)."""


def broken(conn_desc: str, code: str, text: str = "") -> ConnectionBrokenError:
    """A ConnectionBrokenError (or LinkLostError) with its cause attached."""
    cls = LinkLostError if code in ("link_lost", "peer_restarted") else (
        ConnectionBrokenError)
    exc = cls(f"{conn_desc} broken: {code}" + (f" ({text})" if text else ""), code)
    exc.__cause__ = AgentClosedReason(code, text)
    return exc
