"""The lifecycle of one offloaded connection, as a table.

Theory of operation
-------------------
An offloaded connection lives in the agent (the TCP socket, the framer) and in
the host (a :class:`mux_rpc._offload.OffloadConnection`: a bounded queue of
whole messages, send credit). The host-side object is driven by events: the
messages the agent sends about it (DATA, CREDIT, CONNECTED, CLOSED with a
reason), what the local application does (``close()``), and the link it rides
on (lost, or the agent restarted).

Like h11's ``_state.py`` and h2's ``ConnectionStateMachine``, the whole
lifecycle is one ``(state, event) -> (action, next state)`` table over enums;
the asyncio shell looks the pair up and carries out the action. Every pair is
in the table (the tests walk all of them), so there is no "impossible" path
that could raise or hang: unexpected events map to ``PROTOCOL_ERROR`` (count
it, change nothing) or ``IGNORE``.

States
    CONNECTING   host sent CONNECT, waits for CONNECTED (outgoing only)
    OPEN         messages flow both ways
    HALF_CLOSED  the client half-closed (EOF, docs/protocol.md §3.13): no more
                 DATA comes; buffered messages can still be received, then
                 recv() returns None; send() still works, and close() ends
                 the connection as from OPEN (the agent flushes, then FIN)
    PEER_CLOSED  the client closed cleanly (CLOSED "peer_closed"): buffered
                 messages can still be received, then recv() returns None;
                 send() raises ConnectionBrokenError
    CLOSING      the application called close(); CLOSE sent, waiting for the
                 agent's CLOSED; incoming data is dropped
    CLOSED       terminal: closed by this side
    BROKEN       terminal: broken by the client, the agent or the link (the
                 cause is kept and chained onto every error raised)
"""

from __future__ import annotations

import enum

__all__ = ["TRANSITIONS", "Action", "ConnEvent", "ConnState", "transition"]


class ConnState(enum.Enum):
    CONNECTING = "connecting"
    OPEN = "open"
    HALF_CLOSED = "half_closed"
    PEER_CLOSED = "peer_closed"
    CLOSING = "closing"
    CLOSED = "closed"
    BROKEN = "broken"


class ConnEvent(enum.Enum):
    CONNECTED_OK = "connected_ok"
    """CONNECTED(ok=True) for an outgoing connection."""
    CONNECTED_FAIL = "connected_fail"
    """CONNECTED(ok=False)."""
    DATA = "data"
    """DATA: one whole message from the client."""
    CREDIT = "credit"
    """CREDIT: the agent drained its write buffer toward the client."""
    LOCAL_CLOSE = "local_close"
    """The application called ``close()``."""
    CLOSED_ACK = "closed_ack"
    """CLOSED "closed_by_host": the agent's answer to our CLOSE."""
    PEER_HALF_CLOSE = "peer_half_close"
    """EOF: the client sent FIN; no more DATA follows, replies may still go."""
    PEER_EOF = "peer_eof"
    """CLOSED "peer_closed": the client closed its side cleanly."""
    PEER_ERROR = "peer_error"
    """CLOSED with any other reason: reset, malformed message, a limit."""
    OVERRUN = "overrun"
    """The agent sent more than the window we granted: a protocol violation."""
    LINK_LOST = "link_lost"
    """Keepalive timeout, or the agent restarted (new HELLO)."""


class Action(enum.Enum):
    NONE = "none"
    """Nothing to do."""
    OPENED = "opened"
    """Wake the task waiting in ``connect()``: the connection is usable."""
    CONNECT_FAILED = "connect_failed"
    """Wake ``connect()`` with the agent's error."""
    DELIVER = "deliver"
    """Queue the message for ``recv()`` (after the credit check)."""
    DROP = "drop"
    """Discard the message (we are closing); count it."""
    ADD_CREDIT = "add_credit"
    """Add to send credit and wake waiting senders."""
    SEND_CLOSE = "send_close"
    """Send CLOSE to the agent."""
    EOF = "eof"
    """Mark end of stream: ``recv()`` returns None once the queue is empty."""
    HALF_EOF = "half_eof"
    """Mark the end of the incoming stream only (``recv()`` returns None once
    the queue is empty); sending goes on."""
    BREAK = "break"
    """Keep the cause, wake every waiter with ConnectionBrokenError, forget the id."""
    BREAK_AND_CLOSE = "break_and_close"
    """Like BREAK, and send CLOSE so the agent drops the client too."""
    FORGET = "forget"
    """Done: wake waiters with ConnectionClosedError, forget the id."""
    PROTOCOL_ERROR = "protocol_error"
    """An event that the protocol does not allow here: count it, change nothing."""
    IGNORE = "ignore"
    """An event that can legitimately race with a local decision: drop it."""


S, E, A = ConnState, ConnEvent, Action

#: (state, event) -> (action, next state). Complete: every pair is present.
TRANSITIONS: dict[tuple[ConnState, ConnEvent], tuple[Action, ConnState]] = {
    # -- CONNECTING: data may overtake CONNECTED when they ride different queues
    (S.CONNECTING, E.CONNECTED_OK): (A.OPENED, S.OPEN),
    (S.CONNECTING, E.CONNECTED_FAIL): (A.CONNECT_FAILED, S.BROKEN),
    (S.CONNECTING, E.DATA): (A.DELIVER, S.CONNECTING),
    (S.CONNECTING, E.CREDIT): (A.ADD_CREDIT, S.CONNECTING),
    (S.CONNECTING, E.LOCAL_CLOSE): (A.SEND_CLOSE, S.CLOSING),
    (S.CONNECTING, E.CLOSED_ACK): (A.BREAK, S.BROKEN),
    (S.CONNECTING, E.PEER_HALF_CLOSE): (A.HALF_EOF, S.HALF_CLOSED),  # overtook CONNECTED
    (S.CONNECTING, E.PEER_EOF): (A.BREAK, S.BROKEN),
    (S.CONNECTING, E.PEER_ERROR): (A.BREAK, S.BROKEN),
    (S.CONNECTING, E.OVERRUN): (A.BREAK_AND_CLOSE, S.BROKEN),
    (S.CONNECTING, E.LINK_LOST): (A.BREAK, S.BROKEN),
    # -- OPEN
    (S.OPEN, E.CONNECTED_OK): (A.PROTOCOL_ERROR, S.OPEN),
    (S.OPEN, E.CONNECTED_FAIL): (A.PROTOCOL_ERROR, S.OPEN),
    (S.OPEN, E.DATA): (A.DELIVER, S.OPEN),
    (S.OPEN, E.CREDIT): (A.ADD_CREDIT, S.OPEN),
    (S.OPEN, E.LOCAL_CLOSE): (A.SEND_CLOSE, S.CLOSING),
    (S.OPEN, E.CLOSED_ACK): (A.BREAK, S.BROKEN),  # we never asked: the agent gave up on it
    (S.OPEN, E.PEER_HALF_CLOSE): (A.HALF_EOF, S.HALF_CLOSED),
    (S.OPEN, E.PEER_EOF): (A.EOF, S.PEER_CLOSED),
    (S.OPEN, E.PEER_ERROR): (A.BREAK, S.BROKEN),
    (S.OPEN, E.OVERRUN): (A.BREAK_AND_CLOSE, S.BROKEN),
    (S.OPEN, E.LINK_LOST): (A.BREAK, S.BROKEN),
    # -- HALF_CLOSED: the agent still writes our replies; it sends no more DATA
    (S.HALF_CLOSED, E.CONNECTED_OK): (A.OPENED, S.HALF_CLOSED),  # EOF overtook it
    (S.HALF_CLOSED, E.CONNECTED_FAIL): (A.PROTOCOL_ERROR, S.HALF_CLOSED),
    (S.HALF_CLOSED, E.DATA): (A.PROTOCOL_ERROR, S.HALF_CLOSED),  # DATA after EOF
    (S.HALF_CLOSED, E.CREDIT): (A.ADD_CREDIT, S.HALF_CLOSED),  # replies drain
    (S.HALF_CLOSED, E.LOCAL_CLOSE): (A.SEND_CLOSE, S.CLOSING),
    (S.HALF_CLOSED, E.CLOSED_ACK): (A.BREAK, S.BROKEN),  # we never asked
    (S.HALF_CLOSED, E.PEER_HALF_CLOSE): (A.PROTOCOL_ERROR, S.HALF_CLOSED),
    (S.HALF_CLOSED, E.PEER_EOF): (A.EOF, S.PEER_CLOSED),  # the write side went too
    (S.HALF_CLOSED, E.PEER_ERROR): (A.BREAK, S.BROKEN),  # e.g. half_close_timeout
    (S.HALF_CLOSED, E.OVERRUN): (A.BREAK_AND_CLOSE, S.BROKEN),
    (S.HALF_CLOSED, E.LINK_LOST): (A.BREAK, S.BROKEN),
    # -- PEER_CLOSED: the agent has already forgotten the connection
    (S.PEER_CLOSED, E.CONNECTED_OK): (A.PROTOCOL_ERROR, S.PEER_CLOSED),
    (S.PEER_CLOSED, E.CONNECTED_FAIL): (A.PROTOCOL_ERROR, S.PEER_CLOSED),
    (S.PEER_CLOSED, E.DATA): (A.PROTOCOL_ERROR, S.PEER_CLOSED),
    (S.PEER_CLOSED, E.CREDIT): (A.IGNORE, S.PEER_CLOSED),
    (S.PEER_CLOSED, E.LOCAL_CLOSE): (A.FORGET, S.CLOSED),
    (S.PEER_CLOSED, E.CLOSED_ACK): (A.PROTOCOL_ERROR, S.PEER_CLOSED),
    (S.PEER_CLOSED, E.PEER_HALF_CLOSE): (A.PROTOCOL_ERROR, S.PEER_CLOSED),
    (S.PEER_CLOSED, E.PEER_EOF): (A.PROTOCOL_ERROR, S.PEER_CLOSED),
    (S.PEER_CLOSED, E.PEER_ERROR): (A.PROTOCOL_ERROR, S.PEER_CLOSED),
    (S.PEER_CLOSED, E.OVERRUN): (A.PROTOCOL_ERROR, S.PEER_CLOSED),
    (S.PEER_CLOSED, E.LINK_LOST): (A.IGNORE, S.PEER_CLOSED),  # EOF already known
    # -- CLOSING: anything from the agent may still be in flight
    (S.CLOSING, E.CONNECTED_OK): (A.IGNORE, S.CLOSING),
    (S.CLOSING, E.CONNECTED_FAIL): (A.FORGET, S.CLOSED),
    (S.CLOSING, E.DATA): (A.DROP, S.CLOSING),
    (S.CLOSING, E.CREDIT): (A.IGNORE, S.CLOSING),
    (S.CLOSING, E.LOCAL_CLOSE): (A.NONE, S.CLOSING),
    (S.CLOSING, E.CLOSED_ACK): (A.FORGET, S.CLOSED),
    (S.CLOSING, E.PEER_HALF_CLOSE): (A.IGNORE, S.CLOSING),  # crossed our CLOSE
    (S.CLOSING, E.PEER_EOF): (A.FORGET, S.CLOSED),
    (S.CLOSING, E.PEER_ERROR): (A.FORGET, S.CLOSED),
    (S.CLOSING, E.OVERRUN): (A.IGNORE, S.CLOSING),  # data is dropped anyway
    (S.CLOSING, E.LINK_LOST): (A.FORGET, S.CLOSED),
    # -- CLOSED, BROKEN: terminal; the id is forgotten, late messages are ignored
    **{(S.CLOSED, e): (A.IGNORE, S.CLOSED) for e in E},
    (S.CLOSED, E.LOCAL_CLOSE): (A.NONE, S.CLOSED),
    **{(S.BROKEN, e): (A.IGNORE, S.BROKEN) for e in E},
    (S.BROKEN, E.LOCAL_CLOSE): (A.NONE, S.CLOSED),
}


def transition(state: ConnState, event: ConnEvent) -> tuple[Action, ConnState]:
    """Look up ``(state, event)``; every pair is defined."""
    return TRANSITIONS[(state, event)]
