"""Connection lifecycle as a ``(state, event) -> (action, next state)`` table.

Theory of operation
-------------------
Every TCP connection the agent terminates (accepted from a listener or opened
for the host's CONNECT) walks this table, as h2's stream state machine does.
The table is the whole truth: the I/O shell (``_conn.py``) turns an event into
an :class:`Action` by lookup and performs it; it never decides on its own.

States::

    CONNECTING --CONNECT_OK--> OPEN --CLIENT_EOF--> DRAINING --PENDING_DELIVERED--> HALF_CLOSED
         |                      |                                                     |
         |                      |     (HOST_CLOSE from OPEN, DRAINING or HALF_CLOSED) |
         |                      +--HOST_CLOSE--> CLOSING --WRITES_DRAINED--> CLOSED <-+ HALF_CLOSE_TIMEOUT
         |                      +--CLIENT_CLOSED--> DRAINING_CLOSED --PENDING_DELIVERED--> CLOSED
         +--CONNECT_FAILED / HOST_CLOSE / LINK_LOST ... --> CLOSED

* OPEN: reading from the client (unless out of credit) and writing the host's
  replies.
* DRAINING: the client half-closed (FIN on plain TCP; the socket can still be
  written). Messages it sent before its FIN still go to the host as credit
  allows, replies are still written; once the last one is handed to the link
  the agent tells the host EOF (docs/protocol.md §3.13).
* HALF_CLOSED: the host knows no more DATA follows. Its replies are still
  written until it sends CLOSE (CLOSING: flush, then FIN). A host that
  neither closes nor sends anything for ``AgentConfig.half_close_timeout``
  gets the connection closed under it (HALF_CLOSE_TIMEOUT:
  CLOSED(``half_close_timeout``)), so no socket is pinned forever.
* DRAINING_CLOSED: the client closed and nothing can be written back (TLS
  cannot half-close: its transport closes on the client's EOF; or a transport
  ended without ``eof_received``). Messages sent before still go to the host,
  then the agent reports CLOSED(``peer_closed``).
* CLOSING: the host sent CLOSE. Reading stops, pending writes are flushed,
  then the socket is closed and CLOSED(``closed_by_host``) answered.
* CLOSED: terminal. Host DATA that crossed our CLOSED on the link is dropped
  and counted.

Pairs that the shell can never produce (a client event before the TCP
connection exists) map to :attr:`Action.INVALID`; the shell raises
:class:`StateError` for them, so a bug is loud, never a silent hang.
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = [
    "REASON_FOR_EVENT",
    "TRANSITIONS",
    "Action",
    "ConnEvent",
    "ConnState",
    "StateError",
    "transition",
]


class ConnState(enum.Enum):
    CONNECTING = "connecting"
    OPEN = "open"
    DRAINING = "draining"
    HALF_CLOSED = "half_closed"
    DRAINING_CLOSED = "draining_closed"
    CLOSING = "closing"
    CLOSED = "closed"


class ConnEvent(enum.Enum):
    CONNECT_OK = "connect_ok"            #: outbound TCP connection established
    CONNECT_FAILED = "connect_failed"    #: outbound connection refused / timed out
    CLIENT_EOF = "client_eof"            #: the client sent FIN; it can still be written to
    CLIENT_CLOSED = "client_closed"      #: the client closed; nothing can be written (TLS)
    CLIENT_RESET = "client_reset"        #: the TCP connection broke (RST, error)
    FRAMING_ERROR = "framing_error"      #: malformed or oversized message from the client
    LIMIT_EXCEEDED = "limit_exceeded"    #: a configured limit or a credit rule was broken
    HOST_DATA = "host_data"              #: DATA from the host for this connection
    HOST_CLOSE = "host_close"            #: CLOSE from the host
    PENDING_DELIVERED = "pending_delivered"  #: nothing parsed is left undelivered
    WRITES_DRAINED = "writes_drained"    #: the write buffer toward the client is empty
    HALF_CLOSE_TIMEOUT = "half_close_timeout"  #: half-closed, host silent too long
    LINK_LOST = "link_lost"              #: the link to the host died
    PEER_RESTARTED = "peer_restarted"    #: the host restarted (new HELLO)
    SHUTDOWN = "shutdown"                #: the agent is stopping


class Action(enum.Enum):
    REPORT_CONNECTED = "report_connected"        #: send CONNECTED(ok)
    REPORT_CONNECT_FAILED = "report_connect_failed"  #: send CONNECTED(not ok), forget
    WRITE = "write"                              #: encode the host's message, write to TCP
    DROP_HOST_DATA = "drop_host_data"            #: count and drop host data
    START_DRAIN = "start_drain"                  #: client FIN: deliver what is pending
    REPORT_EOF = "report_eof"                    #: everything delivered: send EOF (§3.13)
    CLOSE_AND_REPORT = "close_and_report"        #: graceful TCP close, CLOSED(reason)
    ABORT_AND_REPORT = "abort_and_report"        #: reset TCP, CLOSED(reason)
    REPORT_CLOSED = "report_closed"              #: TCP already gone: CLOSED(reason)
    BEGIN_CLOSE = "begin_close"                  #: stop reading, flush writes
    FINISH_CLOSE = "finish_close"                #: close TCP, CLOSED(closed_by_host)
    ABORT_SILENT = "abort_silent"                #: reset TCP, nobody to tell
    EXPIRE = "expire"                            #: close TCP (reset if writes wait), CLOSED(reason)
    IGNORE = "ignore"                            #: nothing to do
    INVALID = "invalid"                          #: cannot happen: a bug in the shell


class StateError(RuntimeError):
    """The shell produced an event the table says cannot happen in this state."""


S, E, A = ConnState, ConnEvent, Action

#: close reason for the events whose reason does not come from elsewhere
#: (FRAMING_ERROR and LIMIT_EXCEEDED carry their own code)
REASON_FOR_EVENT: Final[dict[ConnEvent, str]] = {
    E.CLIENT_RESET: "peer_reset",
    E.PENDING_DELIVERED: "peer_closed",
    E.CLIENT_CLOSED: "peer_closed",
    E.HALF_CLOSE_TIMEOUT: "half_close_timeout",
    E.LINK_LOST: "link_lost",
    E.PEER_RESTARTED: "peer_restarted",
    E.SHUTDOWN: "agent_shutdown",
    E.CONNECT_FAILED: "connect_failed",
    E.HOST_CLOSE: "closed_by_host",
    E.WRITES_DRAINED: "closed_by_host",
}


def _row(**kw: tuple[Action, ConnState]) -> dict[ConnEvent, tuple[Action, ConnState]]:
    return {E[k]: v for k, v in kw.items()}


TRANSITIONS: Final[dict[ConnState, dict[ConnEvent, tuple[Action, ConnState]]]] = {
    S.CONNECTING: _row(
        CONNECT_OK=(A.REPORT_CONNECTED, S.OPEN),
        CONNECT_FAILED=(A.REPORT_CONNECT_FAILED, S.CLOSED),
        CLIENT_EOF=(A.INVALID, S.CONNECTING),
        CLIENT_CLOSED=(A.INVALID, S.CONNECTING),
        CLIENT_RESET=(A.INVALID, S.CONNECTING),
        FRAMING_ERROR=(A.INVALID, S.CONNECTING),
        LIMIT_EXCEEDED=(A.INVALID, S.CONNECTING),
        HOST_DATA=(A.DROP_HOST_DATA, S.CONNECTING),      # host must wait for CONNECTED
        HOST_CLOSE=(A.REPORT_CLOSED, S.CLOSED),          # cancels the connect
        PENDING_DELIVERED=(A.INVALID, S.CONNECTING),
        WRITES_DRAINED=(A.INVALID, S.CONNECTING),
        HALF_CLOSE_TIMEOUT=(A.INVALID, S.CONNECTING),
        LINK_LOST=(A.ABORT_SILENT, S.CLOSED),
        PEER_RESTARTED=(A.ABORT_SILENT, S.CLOSED),
        SHUTDOWN=(A.REPORT_CLOSED, S.CLOSED),
    ),
    S.OPEN: _row(
        CONNECT_OK=(A.INVALID, S.OPEN),
        CONNECT_FAILED=(A.INVALID, S.OPEN),
        CLIENT_EOF=(A.START_DRAIN, S.DRAINING),
        CLIENT_CLOSED=(A.START_DRAIN, S.DRAINING_CLOSED),
        CLIENT_RESET=(A.REPORT_CLOSED, S.CLOSED),
        FRAMING_ERROR=(A.ABORT_AND_REPORT, S.CLOSED),
        LIMIT_EXCEEDED=(A.ABORT_AND_REPORT, S.CLOSED),
        HOST_DATA=(A.WRITE, S.OPEN),
        HOST_CLOSE=(A.BEGIN_CLOSE, S.CLOSING),
        PENDING_DELIVERED=(A.IGNORE, S.OPEN),
        WRITES_DRAINED=(A.IGNORE, S.OPEN),
        HALF_CLOSE_TIMEOUT=(A.IGNORE, S.OPEN),
        LINK_LOST=(A.ABORT_SILENT, S.CLOSED),
        PEER_RESTARTED=(A.ABORT_SILENT, S.CLOSED),
        SHUTDOWN=(A.CLOSE_AND_REPORT, S.CLOSED),
    ),
    S.DRAINING: _row(
        CONNECT_OK=(A.INVALID, S.DRAINING),
        CONNECT_FAILED=(A.INVALID, S.DRAINING),
        CLIENT_EOF=(A.IGNORE, S.DRAINING),
        CLIENT_CLOSED=(A.IGNORE, S.DRAINING_CLOSED),     # the write side went too
        CLIENT_RESET=(A.REPORT_CLOSED, S.CLOSED),
        FRAMING_ERROR=(A.ABORT_AND_REPORT, S.CLOSED),    # e.g. truncated at EOF
        LIMIT_EXCEEDED=(A.ABORT_AND_REPORT, S.CLOSED),
        HOST_DATA=(A.WRITE, S.DRAINING),                 # replies still go out
        HOST_CLOSE=(A.BEGIN_CLOSE, S.CLOSING),
        PENDING_DELIVERED=(A.REPORT_EOF, S.HALF_CLOSED),
        WRITES_DRAINED=(A.IGNORE, S.DRAINING),
        HALF_CLOSE_TIMEOUT=(A.IGNORE, S.DRAINING),       # the clock starts at EOF
        LINK_LOST=(A.ABORT_SILENT, S.CLOSED),
        PEER_RESTARTED=(A.ABORT_SILENT, S.CLOSED),
        SHUTDOWN=(A.CLOSE_AND_REPORT, S.CLOSED),
    ),
    S.HALF_CLOSED: _row(
        CONNECT_OK=(A.INVALID, S.HALF_CLOSED),
        CONNECT_FAILED=(A.INVALID, S.HALF_CLOSED),
        CLIENT_EOF=(A.IGNORE, S.HALF_CLOSED),
        CLIENT_CLOSED=(A.REPORT_CLOSED, S.CLOSED),       # replies can no longer go out
        CLIENT_RESET=(A.REPORT_CLOSED, S.CLOSED),
        FRAMING_ERROR=(A.IGNORE, S.HALF_CLOSED),         # no longer parsing
        LIMIT_EXCEEDED=(A.ABORT_AND_REPORT, S.CLOSED),
        HOST_DATA=(A.WRITE, S.HALF_CLOSED),              # the point of a half-close
        HOST_CLOSE=(A.BEGIN_CLOSE, S.CLOSING),           # flush, then FIN
        PENDING_DELIVERED=(A.IGNORE, S.HALF_CLOSED),
        WRITES_DRAINED=(A.IGNORE, S.HALF_CLOSED),
        HALF_CLOSE_TIMEOUT=(A.EXPIRE, S.CLOSED),
        LINK_LOST=(A.ABORT_SILENT, S.CLOSED),
        PEER_RESTARTED=(A.ABORT_SILENT, S.CLOSED),
        SHUTDOWN=(A.CLOSE_AND_REPORT, S.CLOSED),
    ),
    S.DRAINING_CLOSED: _row(
        CONNECT_OK=(A.INVALID, S.DRAINING_CLOSED),
        CONNECT_FAILED=(A.INVALID, S.DRAINING_CLOSED),
        CLIENT_EOF=(A.IGNORE, S.DRAINING_CLOSED),
        CLIENT_CLOSED=(A.IGNORE, S.DRAINING_CLOSED),
        CLIENT_RESET=(A.REPORT_CLOSED, S.CLOSED),
        FRAMING_ERROR=(A.ABORT_AND_REPORT, S.CLOSED),    # e.g. truncated at EOF
        LIMIT_EXCEEDED=(A.ABORT_AND_REPORT, S.CLOSED),
        HOST_DATA=(A.WRITE, S.DRAINING_CLOSED),          # dropped by the closed transport
        HOST_CLOSE=(A.BEGIN_CLOSE, S.CLOSING),
        PENDING_DELIVERED=(A.CLOSE_AND_REPORT, S.CLOSED),
        WRITES_DRAINED=(A.IGNORE, S.DRAINING_CLOSED),
        HALF_CLOSE_TIMEOUT=(A.IGNORE, S.DRAINING_CLOSED),
        LINK_LOST=(A.ABORT_SILENT, S.CLOSED),
        PEER_RESTARTED=(A.ABORT_SILENT, S.CLOSED),
        SHUTDOWN=(A.CLOSE_AND_REPORT, S.CLOSED),
    ),
    S.CLOSING: _row(
        CONNECT_OK=(A.INVALID, S.CLOSING),
        CONNECT_FAILED=(A.INVALID, S.CLOSING),
        CLIENT_EOF=(A.IGNORE, S.CLOSING),
        CLIENT_CLOSED=(A.IGNORE, S.CLOSING),             # connection_lost follows
        CLIENT_RESET=(A.FINISH_CLOSE, S.CLOSED),
        FRAMING_ERROR=(A.IGNORE, S.CLOSING),             # no longer parsing
        LIMIT_EXCEEDED=(A.FINISH_CLOSE, S.CLOSED),
        HOST_DATA=(A.DROP_HOST_DATA, S.CLOSING),         # data after CLOSE
        HOST_CLOSE=(A.IGNORE, S.CLOSING),
        PENDING_DELIVERED=(A.IGNORE, S.CLOSING),
        WRITES_DRAINED=(A.FINISH_CLOSE, S.CLOSED),
        HALF_CLOSE_TIMEOUT=(A.IGNORE, S.CLOSING),        # close_linger bounds CLOSING
        LINK_LOST=(A.ABORT_SILENT, S.CLOSED),
        PEER_RESTARTED=(A.ABORT_SILENT, S.CLOSED),
        SHUTDOWN=(A.FINISH_CLOSE, S.CLOSED),
    ),
    S.CLOSED: _row(
        CONNECT_OK=(A.IGNORE, S.CLOSED),                 # connect finished after cancel
        CONNECT_FAILED=(A.IGNORE, S.CLOSED),
        CLIENT_EOF=(A.IGNORE, S.CLOSED),
        CLIENT_CLOSED=(A.IGNORE, S.CLOSED),
        CLIENT_RESET=(A.IGNORE, S.CLOSED),
        FRAMING_ERROR=(A.IGNORE, S.CLOSED),
        LIMIT_EXCEEDED=(A.IGNORE, S.CLOSED),
        HOST_DATA=(A.DROP_HOST_DATA, S.CLOSED),          # crossed our CLOSED
        HOST_CLOSE=(A.IGNORE, S.CLOSED),
        PENDING_DELIVERED=(A.IGNORE, S.CLOSED),
        WRITES_DRAINED=(A.IGNORE, S.CLOSED),
        HALF_CLOSE_TIMEOUT=(A.IGNORE, S.CLOSED),
        LINK_LOST=(A.IGNORE, S.CLOSED),
        PEER_RESTARTED=(A.IGNORE, S.CLOSED),
        SHUTDOWN=(A.IGNORE, S.CLOSED),
    ),
}


def transition(state: ConnState, event: ConnEvent) -> tuple[Action, ConnState]:
    """Look the pair up; raise :class:`StateError` for a pair that cannot happen."""
    action, nxt = TRANSITIONS[state][event]
    if action is Action.INVALID:
        raise StateError(f"event {event.name} cannot happen in state {state.name}")
    return action, nxt
