"""One terminated TCP connection: framer, credits, bounded buffers, lifecycle.

Theory of operation
-------------------
A :class:`Connection` is the asyncio protocol of one client socket and a thin
shell: its lifecycle is the table in :mod:`agent._state`, its credit
arithmetic the pure windows of :mod:`xport._flow` (shared with the host) and
the drain tracking of :mod:`agent._credit`. It talks to the rest of
the agent only through its :class:`ConnOwner` (the mux), which turns calls into
transport messages on the connection's queue.

Client -> host::

    data_received -> framer.feed -> whole messages -> fits SendWindow?
        yes: owner.to_host_data (the link packs it into a frame)
        no : held in ``pending`` (FIFO), and reading is paused: TCP
             backpressure reaches this client only. CREDIT from the host
             (:meth:`on_credit`) delivers what fits and resumes reading.

Memory bound: a connection holds at most what one read returned plus one
partial message (the framer bounds that by ``max_message_size``) before it
stops reading; ``max_buffered_per_connection`` pauses it earlier. Across
connections a :class:`Budget` caps the total: a connection that receives
while the total is over the cap is paused if it holds whole messages (they
drain with credit) or holds a partial message; resumed when the total is back
under half the cap. If the total stays stuck above it (partial messages only,
which never drain by themselves) the mux closes the largest holder with
``buffer_limit``.

Host -> client: :meth:`host_data` checks the host's DATA against the
ReceiveWindow (a violation closes with ``credit_exceeded``), encodes it and
writes it. The write-buffer high-water mark is 0, so asyncio calls
``pause_writing`` whenever anything stays buffered and ``resume_writing``
when the buffer is empty again; :class:`DrainTracker` maps the buffer size
back to whole host messages, which count as consumed as they drain (never
before), and their credit goes back in batches (ReceiveWindow's rule, §5.2).

Half-close (:mod:`agent._state`): a client's FIN on plain TCP keeps the
socket's write side open (``eof_received`` returns True). What the client
sent before it still goes to the host as credit allows (DRAINING); then the
host is told EOF (docs/protocol.md §3.13) and its replies are written until
it sends CLOSE, which flushes them and sends our FIN (HALF_CLOSED, CLOSING).
``check_timeouts`` closes a half-closed connection whose host stays silent
for ``half_close_timeout``. TLS cannot half-close: its transport closes on
the client's EOF, so the agent delivers what was sent and reports CLOSED
``peer_closed`` (DRAINING_CLOSED), as for a plain close.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol, cast

from framing import FramingError
from xport._flow import FlowControlError, ReceiveWindow, SendWindow

from ._codec import reply_encoder, wire_fn
from ._config import AgentConfig
from ._credit import DrainTracker
from ._state import REASON_FOR_EVENT, TRANSITIONS, Action, ConnEvent, ConnState, transition
from ._stats import AgentStats

__all__ = ["Budget", "ConnOwner", "Connection"]

log = logging.getLogger("agent")

S, E, A = ConnState, ConnEvent, Action

# (tuples, not sets: ``in`` then compares identities, while hashing an Enum
# member is a Python-level call)
#: the client's FIN was seen and parsed messages may still wait for credit
_DRAINING = (S.DRAINING, S.DRAINING_CLOSED)
#: states in which host credit still matters (replies can reach the client)
_CREDIT_STATES = (S.OPEN, S.DRAINING, S.HALF_CLOSED, S.DRAINING_CLOSED)


def _close_or_reset(transport: asyncio.Transport | None) -> None:
    """FIN if everything was written; a reset if replies are still buffered
    (a client that does not read them: do not linger)."""
    if transport is not None:
        if transport.get_write_buffer_size():
            transport.abort()
        else:
            transport.close()


class Budget:
    """Bytes buffered from clients, summed over every connection."""

    __slots__ = ("limit", "paused", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.paused: set[Connection] = set()

    @property
    def over(self) -> bool:
        return self.used > self.limit

    def adjust(self, delta: int) -> None:
        self.used += delta
        if delta < 0 and self.paused and self.used <= self.limit // 2:
            waiting, self.paused = self.paused, set()
            for conn in waiting:
                conn._update_reading()


class ConnOwner(Protocol):
    """What a connection needs from the agent (implemented by the mux)."""

    config: AgentConfig
    stats: AgentStats
    budget: Budget
    #: while the owner handles a received batch: the connections holding
    #: replies for :meth:`Connection.flush_writes` at its end (None: write at once)
    batch_writes: list[Connection] | None

    def to_host_data(self, conn_id: int, wire: bytes, header_length: int) -> None: ...
    def to_host_credit(self, conn_id: int, messages: int, nbytes: int,
                       urgent: bool = True) -> None: ...
    def lazy_credit(self, conn_id: int) -> tuple[int, int]: ...
    def to_host_eof(self, conn: Connection) -> None: ...
    def to_host_connected(self, conn: Connection, ok: bool, reason: str, text: str) -> None: ...
    def to_host_new_connection(self, conn: Connection) -> None: ...
    def watch_drain(self, conn: Connection) -> None: ...
    def now(self) -> float: ...
    def finished(self, conn: Connection, reason: str, text: str, report: bool) -> None: ...


class Connection(asyncio.Protocol):
    """See the module docstring. Created by the agent, one per TCP connection."""

    def __init__(self, owner: ConnOwner, conn_id: int, framer: Any, *,
                 host_window: tuple[int, int], outbound: bool = False,
                 listener_id: int = 0, now: float = 0.0,
                 host_max_message: int | None = None) -> None:
        cfg = owner.config
        self.owner = owner
        self.conn_id = conn_id
        self.listener_id = listener_id
        self.state = S.CONNECTING if outbound else S.OPEN
        self.framer = framer
        self._encode: Callable[[bytes, int], bytes] = reply_encoder(framer)
        self._wire: Callable[[Any], tuple[bytes, int]] = wire_fn(framer)
        # §5: the host's HELLO window is the initial credit; ours likewise for it
        self.send_window = SendWindow(
            host_window[0], host_window[1],
            max_message_size=min(host_max_message or cfg.max_message_size, host_window[1]))
        self.recv_window = ReceiveWindow(cfg.initial_window_messages, cfg.initial_window_bytes,
                                         max_message_size=cfg.max_message_size)
        self.recv_window.initial_grant()
        self.tracker = DrainTracker()
        # replies of the owner's current batch, written to the client together
        # (flush_writes): one send() per connection and batch, not per reply
        self._out: list[bytes] = []
        self._out_sizes: list[int] = []
        self.pending: deque[tuple[bytes, int]] = deque()
        self.pending_bytes = 0
        self.accounted = 0  # bytes counted in owner.budget
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] = ("", 0)
        self.reading_paused = False
        self.writing_paused = False
        self.tls = False
        self.link_blocked = False  # set by the mux while the link's queue is full
        self.created = now
        self.closing_since: float | None = None
        #: half-closed: when the EOF went to the host or its latest reply came
        self.idle_since: float | None = None
        self.close_reason = ""
        self.connect_task: asyncio.Future[Any] | None = None
        self._max_write = cfg.max_write_buffer
        self._max_buffered = cfg.max_buffered_per_connection

    def __repr__(self) -> str:
        return f"<Connection {self.conn_id} {self.state.name} peer={self.peer}>"

    # -- asyncio protocol ----------------------------------------------------
    def connection_made(self, base: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance
        transport = cast(asyncio.Transport, base)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peer = (str(peer[0]), int(peer[1]))
        self.tls = transport.get_extra_info("ssl_object") is not None
        if self.state is S.CLOSED:  # connect finished after the host gave up on it
            transport.abort()
            return
        transport.set_write_buffer_limits(high=0, low=0)
        if self.state is S.CONNECTING:
            self.event(E.CONNECT_OK)
        else:
            self.owner.to_host_new_connection(self)

    def data_received(self, data: bytes) -> None:
        if self.state is not S.OPEN:
            return  # CLOSING: no longer parsing; CLOSED: late data
        framer = self.framer
        try:
            framer.feed(data)
            msgs = framer.drain()
        except FramingError as exc:
            self._framing_error(exc)
            return
        if msgs:
            self._queue(msgs)
        if framer.failed is not None:
            # messages before the error went out; now the error closes us
            self._framing_error(framer.failed)
            return
        self._account()
        self._update_reading()

    def eof_received(self) -> bool:
        # plain TCP: keep the write side open for the replies (half-close);
        # TLS cannot half-close: its transport closes, connection_lost follows
        self.event(E.CLIENT_CLOSED if self.tls else E.CLIENT_EOF)
        return not self.tls

    def connection_lost(self, exc: BaseException | None) -> None:
        transport, self.transport = self.transport, None
        if transport is None and self.state is S.CLOSED:
            return
        if exc is None and self.state is S.CLOSING:
            self.event(E.WRITES_DRAINED)
            return
        if exc is None:
            # TLS close_notify / transports that do not call eof_received, or
            # the write side of a half-closed connection went: nothing more
            # can be written; pending messages still go to the host
            self.event(E.CLIENT_CLOSED)
            return
        self.event(E.CLIENT_RESET, text=str(exc) if exc else "connection lost")

    def pause_writing(self) -> None:
        self.writing_paused = True
        self.owner.watch_drain(self)

    def resume_writing(self) -> None:
        self.writing_paused = False
        self.check_drain()

    # -- from the host -------------------------------------------------------
    def on_credit(self, messages: int, nbytes: int) -> None:
        """A CREDIT from the host for this connection."""
        try:
            self.send_window.grant(messages, nbytes)
        except FlowControlError as exc:
            self.event(E.LIMIT_EXCEEDED, "credit_exceeded", str(exc))
            return
        if self.pending:
            self._deliver()
            if self.state is S.CLOSED:
                return
            self._account()
        if self.reading_paused:
            self._update_reading()

    def host_data(self, payload: bytes | bytearray | memoryview, header_length: int = 0) -> None:
        """A DATA from the host: a reply message for the client (with
        msgpack-rpc, possibly several joined: HostConfig.coalesce_replies)."""
        state = self.state
        if state is not S.OPEN:
            if TRANSITIONS[state][E.HOST_DATA][0] is not A.WRITE:
                self.event(E.HOST_DATA)
                return
            if state is S.HALF_CLOSED:
                self.idle_since = self.owner.now()  # the host is still answering
        size = len(payload)
        try:
            self.recv_window.on_received(size)
        except FlowControlError as exc:
            self.event(E.LIMIT_EXCEEDED, "credit_exceeded", str(exc))
            return
        try:
            wire = self._encode(bytes(payload), header_length)
        except FramingError as exc:
            self.owner.stats.host_errors["encode_error"] += 1
            self.event(E.LIMIT_EXCEEDED, exc.code, f"host reply cannot be encoded: {exc}")
            return
        transport = self.transport
        if transport is None or transport.is_closing():
            # client already gone, CLOSED on its way; or a send to it failed and
            # the transport closed itself, connection_lost not delivered yet
            # (asyncio warns "socket.send() raised exception." on every write then)
            return
        batch = self.owner.batch_writes
        if batch is not None:
            if not self._out:
                batch.append(self)
            self._out.append(wire)
            self._out_sizes.append(size)
            return
        transport.write(wire)
        self.tracker.wrote(len(wire), size)
        self.check_drain()

    def flush_writes(self) -> None:
        """Write the replies held for the owner's batch, in one ``write``."""
        out, sizes = self._out, self._out_sizes
        if not out:
            return
        self._out, self._out_sizes = [], []
        transport = self.transport
        if transport is None or transport.is_closing():
            return  # the client is gone (as in host_data)
        transport.write(out[0] if len(out) == 1 else b"".join(out))
        # the tracker counts after the write, so check_drain never takes bytes
        # still held here for bytes that left
        wrote = self.tracker.wrote
        for wire, size in zip(out, sizes, strict=True):
            wrote(len(wire), size)
        self.check_drain()

    def host_close(self, abort: bool = False) -> None:
        """A CLOSE from the host (``abort``: reset instead of flushing)."""
        self.event(E.HOST_CLOSE)
        if abort and self.state is S.CLOSING:
            self.event(E.LIMIT_EXCEEDED, "closed_by_host", "abort requested by the host")

    # -- periodic ------------------------------------------------------------
    def check_drain(self) -> bool:
        """Return credit for written messages that left the buffer; True while
        something is still buffered."""
        transport = self.transport
        buffered = transport.get_write_buffer_size() if transport is not None else 0
        if self.tracker:
            # drained host messages are consumed: batched grants (§5.2)
            gm = gb = 0
            w = self.recv_window
            on_consumed = w.on_consumed
            for size in self.tracker.drained(buffered):
                grant = on_consumed(size)
                if grant is not None:
                    gm += grant[0]
                    gb += grant[1]
            if gm and self.state in _CREDIT_STATES:
                owner = self.owner
                # urgent when the host may be blocked without it: counting
                # neither this grant nor what waits unsent (credit_delay)
                lm, lb = owner.lazy_credit(self.conn_id)
                owner.to_host_credit(self.conn_id, gm, gb,
                                     w.sender_may_be_blocked(gm + lm, gb + lb))
        if buffered > self._max_write:
            self.event(E.LIMIT_EXCEEDED, "write_buffer_overflow",
                       f"{buffered} bytes buffered toward the client")
            return False
        if not buffered and self.state is S.CLOSING:
            self.event(E.WRITES_DRAINED)
            return False
        if buffered:
            self.owner.watch_drain(self)
        return bool(buffered)

    def check_timeouts(self, now: float) -> None:
        """Close a CLOSING connection whose client never drains its replies,
        and a HALF_CLOSED one whose host neither answers nor closes."""
        cfg = self.owner.config
        if (self.state is S.CLOSING and self.closing_since is not None
                and now - self.closing_since > cfg.close_linger):
            self.event(E.LIMIT_EXCEEDED, "close_timeout", "client did not drain before close")
        elif (self.state is S.HALF_CLOSED and self.idle_since is not None
                and now - self.idle_since > cfg.half_close_timeout):
            self.owner.stats.incr("half_close_timeouts")
            self.event(E.HALF_CLOSE_TIMEOUT, "half_close_timeout",
                       f"the host neither closed nor answered for {cfg.half_close_timeout:g} s "
                       "after the client's FIN")

    # -- lifecycle -----------------------------------------------------------
    def event(self, ev: ConnEvent, reason: str = "", text: str = "") -> None:
        """Feed one lifecycle event through the table and perform its action."""
        if self._out:
            self.flush_writes()  # replies accepted before the event go first
        action, nxt = transition(self.state, ev)
        prev, self.state = self.state, nxt
        reason = reason or REASON_FOR_EVENT.get(ev, ev.value)
        owner = self.owner
        transport = self.transport
        if action is A.IGNORE:
            return
        if action is A.WRITE:  # host_data() writes on its fast path; nothing left to do
            return
        if action is A.DROP_HOST_DATA:
            owner.stats.host_errors[f"data_in_{prev.value}"] += 1
            return
        if action is A.REPORT_CONNECTED:
            owner.to_host_connected(self, True, "", "")
            return
        if action is A.START_DRAIN:
            self._start_drain()
            return
        if action is A.REPORT_EOF:
            # everything the client sent is on the link: EOF follows it (§3.13)
            self.idle_since = owner.now()
            self._drop_pending()  # nothing pending; zero what the budget counts
            owner.budget.paused.discard(self)
            owner.to_host_eof(self)
            return
        if action is A.BEGIN_CLOSE:
            self.closing_since = owner.now()
            if transport is not None:
                self._pause(True)  # closing: not counted as a read pause
            self._drop_pending()
            self.check_drain()
            return
        # terminal actions: everything below ends the connection
        self.close_reason = reason
        self._drop_pending()
        report = True
        if action is A.REPORT_CONNECT_FAILED:
            owner.to_host_connected(self, False, reason, text)
            report = False
        elif action is A.CLOSE_AND_REPORT:
            if transport is not None:
                transport.close()
        elif action is A.ABORT_AND_REPORT:
            if transport is not None:
                transport.abort()
        elif action is A.REPORT_CLOSED:
            if transport is not None:
                transport.abort()
            if self.connect_task is not None:
                self.connect_task.cancel()
        elif action is A.FINISH_CLOSE:
            # the host asked for the close: the answer is always closed_by_host
            if reason != "closed_by_host":
                text = f"{reason}: {text}" if text else reason
            self.close_reason = reason = "closed_by_host"
            _close_or_reset(transport)
        elif action is A.EXPIRE:
            _close_or_reset(transport)
        elif action is A.ABORT_SILENT:
            report = False
            if transport is not None:
                transport.abort()
            if self.connect_task is not None:
                self.connect_task.cancel()
        self.transport = None
        owner.finished(self, reason, text, report)

    # -- internals -------------------------------------------------------------
    def _queue(self, msgs: list[Any]) -> None:
        wire_of = self._wire
        window = self.send_window
        pending = self.pending
        to_host = self.owner.to_host_data
        cid = self.conn_id
        for msg in msgs:
            wire, hlen = wire_of(msg)
            n = len(wire)
            m = window.messages
            # §5.1 (SendWindow.can_send inline): one message and n bytes of credit
            if not pending and m > 0 and window.bytes >= n:
                window.messages = m - 1
                window.bytes -= n
                to_host(cid, wire, hlen)
            else:
                pending.append((wire, hlen))
                self.pending_bytes += n

    def _deliver(self) -> None:
        pending = self.pending
        window = self.send_window
        to_host = self.owner.to_host_data
        cid = self.conn_id
        while pending:
            wire, hlen = pending[0]
            n = len(wire)
            if window.messages < 1 or window.bytes < n:  # §5.1
                break
            pending.popleft()
            self.pending_bytes -= n
            window.messages -= 1
            window.bytes -= n
            to_host(cid, wire, hlen)
        if not pending and self.state in _DRAINING:
            self.event(E.PENDING_DELIVERED)

    def _start_drain(self) -> None:
        try:
            self.framer.feed_eof()
            msgs = self.framer.drain()
        except FramingError as exc:
            self._framing_error(exc)
            return
        if msgs:
            self._queue(msgs)
            if self.state not in _DRAINING:
                return
        if self.framer.failed is not None:
            self._framing_error(self.framer.failed)
            return
        self._deliver()
        if self.state in _DRAINING:
            self._account()

    def _framing_error(self, exc: FramingError) -> None:
        self.owner.stats.incr("framing_errors")
        self.event(E.FRAMING_ERROR, exc.code, str(exc))

    def _account(self) -> None:
        now = self.pending_bytes + self.framer.buffered
        delta = now - self.accounted
        if delta:
            self.accounted = now
            self.owner.budget.adjust(delta)

    def _drop_pending(self) -> None:
        self.pending.clear()
        self.pending_bytes = 0
        if self.accounted:
            delta, self.accounted = -self.accounted, 0
            self.owner.budget.adjust(delta)

    def _update_reading(self) -> None:
        if self.state is not S.OPEN:
            return
        budget = self.owner.budget
        pause = bool(self.pending) or self.accounted > self._max_buffered or self.link_blocked
        if not pause and budget.over and self.accounted:
            # holds a partial message while the agent is over its total: stop
            # it growing (the mux closes the largest such holder if that stalls)
            budget.paused.add(self)
            pause = True
        if pause and not self.reading_paused and self.transport is not None:
            self.owner.stats.incr("read_pauses")  # backpressure pauses only
        self._pause(pause)

    def _pause(self, pause: bool) -> None:
        if pause == self.reading_paused or self.transport is None:
            return
        self.reading_paused = pause
        if pause:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()
