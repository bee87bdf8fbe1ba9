"""mux-rpc offload agent: TCP termination, one framer per connection, whole
messages multiplexed over a few transport queues to the host, per-connection
credit in both directions, optional TLS termination.

Nothing imports this package but its entry point (``python -m agent`` and
``mux-rpc agent``, which calls :func:`main`).
"""

from __future__ import annotations

from ._agent import HOST_CONN_ID_BASE, Agent, status_for
from ._config import AgentConfig
from ._conn import Budget, Connection
from ._credit import DrainTracker
from ._state import TRANSITIONS, Action, ConnEvent, ConnState, StateError, transition

__all__ = [
    "HOST_CONN_ID_BASE",
    "TRANSITIONS",
    "Action",
    "Agent",
    "AgentConfig",
    "Budget",
    "ConnEvent",
    "ConnState",
    "Connection",
    "DrainTracker",
    "StateError",
    "main",
    "status_for",
    "transition",
]


def main(argv: list[str] | None = None) -> int:
    """The agent's command line (``python -m agent --help``)."""
    from ._main import main as _main

    return _main(argv)
