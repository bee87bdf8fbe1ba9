"""The agent: listeners, connections, and the mux onto the link's queues.

Theory of operation
-------------------
The agent owns one *port* (one xport link) per transport queue. Connection
``c`` rides queue ``c % queues`` for everything about it (NEW_CONNECTION,
CONNECTED, DATA, CREDIT, CLOSED), so that its messages stay in order; link-wide
messages (HELLO) ride queue 0. Messages from the host are demultiplexed by
``conn_id`` with a dict (aioquic's server does the same); whatever queue they
arrive on.

Listeners and queues. A LISTEN is answered (LISTEN_RESULT) on the queue it
came on, and its listener is known by ``(queue, listener_id)``. A LISTEN on
queue 0 alone is the usual case, one host over every queue: its connections
spread over all queues (``c % queues``). Several host processes, one per
queue (``mux-rpc serve --workers N``), each LISTEN on their own queue for the
same address: the second and later LISTENs for a bound ``bind:port`` (same
framer spec and TLS setting) *join* the first one's TCP server (a listen
group, much like ``SO_REUSEPORT``), and once any member is on a queue other
than 0, each new connection goes round robin to one member and gets an id on
that member's queue, so that its NEW_CONNECTION, DATA and CLOSED all reach
the process that listened there.

Sending never awaits: a connection's data path calls ``port.send`` and the
mux marks that queue dirty; one ``loop.call_soon`` callback per event-loop
iteration flushes every dirty port. At low load a message therefore leaves in
the same iteration it was parsed (no added latency); under load everything
parsed in one iteration shares frames. The other way round, the replies a
connection gets in one received batch go to its client in one ``write`` at the
end of the batch, and a credit grant the host does not need yet waits (up to
``credit_delay``) to ride the next frame instead of taking one of its own.

Link life (docs/protocol.md §3.1). Each queue's xport link runs the
handshake itself: HELLO resent until acknowledged, duplicates absorbed, and
a HELLO with a new session from a host it knew means that host restarted --
the link has then reset its own state (credit, sequence, reassembly, queue)
and tells us once (``Link.on_peer_hello(hello, restarted=True)``). We then
reset the connections and close the listeners of that queue with reason
``peer_restarted`` (a new host process re-issues its LISTENs). Nothing is
decided by timing. The host's HELLO also gives the per-connection window it
grants us and its largest message: our send windows use them.

The links' keepalive declaring the host lost (nothing for
``keepalive_timeout``) resets every connection with ``link_lost`` and closes
the listeners (no client waits on a host that is gone). The links stay: the
same host coming back just goes on; a new one says HELLO with a new session.

Housekeeping runs on a timer with time passed in (:meth:`Agent.tick`), so it
is tested without sleeping: keepalives, link-lost detection, connections
whose client does not drain its replies, half-closed connections whose host
stays silent (``half_close_timeout``), and the buffer-stall rule of
:mod:`agent._conn`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

from framing import FramingError
from xport import _protocol as P
from xport._backend import FrameBackend
from xport._link import new_session

from ._accept import Listener
from ._codec import make_framer
from ._config import AgentConfig
from ._conn import Budget, Connection
from ._ports import LinkPort
from ._state import ConnEvent, ConnState
from ._stats import AgentStats
from ._tls import client_context, is_loopback, server_context

__all__ = ["HOST_CONN_ID_BASE", "Agent", "status_for"]

log = logging.getLogger("agent")

#: connection ids at or above this are the host's (CONNECT); the agent's are below
HOST_CONN_ID_BASE = 0x8000_0000

_STATUS_FOR_REASON: dict[str, int] = {
    "peer_closed": P.Status.PEER_CLOSED,
    "closed_by_host": P.Status.LOCAL_CLOSE,
    "peer_reset": P.Status.RESET,
    "frame_too_long": P.Status.TOO_LARGE,
    "credit_exceeded": P.Status.CREDIT_VIOLATION,
    "link_lost": P.Status.LINK_LOST,
    "peer_restarted": P.Status.LINK_LOST,
    "connect_failed": P.Status.OS_ERROR,
    "tls_error": P.Status.TLS_ERROR,
    "unknown_connection": P.Status.UNKNOWN,
}


#: connection states with a timer (Connection.check_timeouts)
_TIMED_STATES = (ConnState.CLOSING, ConnState.HALF_CLOSED)  # a tuple: identity compares


def status_for(reason: str) -> int:
    """The CLOSED/CONNECTED status code carrying ``reason`` (the reason string
    itself travels first in the text)."""
    st = _STATUS_FOR_REASON.get(reason)
    if st is not None:
        return int(st)
    if reason.startswith(("bad_", "malformed", "truncated", "unknown_pdu", "framing",
                          "encode_error")):
        return int(P.Status.FRAMING_ERROR)
    return int(P.Status.INTERNAL)


class _Listener:
    __slots__ = ("bind", "group", "listener_id", "port", "queue", "server", "spec", "tls")

    def __init__(self, listener_id: int, bind: str, spec: str, tls: bool, queue: int = 0) -> None:
        self.listener_id = listener_id
        self.bind = bind
        self.port = 0
        self.spec = spec
        self.tls = tls
        self.queue = queue
        #: the TCP server, shared by every member of the group
        self.server: Listener | None = None
        self.group: _ListenGroup | None = None


class _ListenGroup:
    """Listeners of one address, one per queue (see the module doc): one TCP
    server; its connections go round robin to the members."""

    __slots__ = ("members", "turn")

    def __init__(self, first: _Listener) -> None:
        self.members: list[_Listener] = [first]
        self.turn = 0

    def pick(self) -> _Listener:
        self.turn = (self.turn + 1) % len(self.members)
        return self.members[self.turn]

    @property
    def per_queue(self) -> bool:
        """Connections go to their member's queue (else: spread over all queues)."""
        return any(m.queue for m in self.members)


class _Refused(asyncio.Protocol):
    """Accepted beyond ``max_connections``: closed at once, never announced."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        cast(asyncio.Transport, transport).abort()


BackendSource = Sequence[FrameBackend] | Callable[[int], FrameBackend]


class Agent:
    """The offload agent. ``await agent.start()``, then it serves until
    ``await agent.close()``; ``statistics()`` at any time.

    ``backends`` gives one frame backend per queue: a sequence, or a factory
    ``backend(queue) -> FrameBackend`` called in :meth:`start` (AF_XDP in
    production, ``xport.testing.memory_backend_pair`` or shared memory in
    tests). The agent builds an xport link over each and closes the backends
    in :meth:`close`.
    """

    def __init__(self, backends: BackendSource, config: AgentConfig | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 tick_interval: float | None = 0.05) -> None:
        if config is None:
            n = len(backends) if not callable(backends) else 1
            config = AgentConfig(queues=n)
        self.config = config
        self._backends = backends
        self.stats = AgentStats()
        self.budget = Budget(self.config.max_buffered_total)
        self.batch_writes: list[Connection] | None = None  # see _on_batch
        self._nq = self.config.queues
        self._ports: list[LinkPort] = []
        self._clock = clock
        self._tick_interval = tick_interval
        self.conns: dict[int, Connection] = {}
        #: accepted, connection_made not yet called (TLS handshake running)
        self._embryonic: dict[int, Connection] = {}
        #: by (queue the LISTEN came on, listener id)
        self.listeners: dict[tuple[int, int], _Listener] = {}
        self._next_id = 1
        self._dirty = [False] * self._nq
        self._link_blocked = [False] * self._nq
        self._flush_handle: asyncio.Handle | None = None
        #: per queue: credit the host does not need yet, by connection
        #: (to_host_credit), sent with the queue's next frame or after
        #: config.credit_delay
        self._lazy_credit: list[dict[int, list[int]]] = [{} for _ in range(self._nq)]
        self._lazy_timer: asyncio.TimerHandle | None = None
        self._drain_watch: set[Connection] = set()
        self._tasks: list[asyncio.Task[Any]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._host_hello: P.Hello | None = None
        self._link_up = True
        self._stall_since: float | None = None
        #: the window the host grants per connection (its HELLO, §3.1); until
        #: then (no connection can exist before it) one message of any size
        self.host_window = (1, self.config.max_message_size)
        self.host_max_message = self.config.max_message_size
        #: one session for every link of this agent process (§3.1)
        self.session = new_session()
        self._restarted_queues: set[int] = set()
        # hot counters as attributes (Counter lookups cost on the data path)
        self.messages_to_host = 0
        self.bytes_to_host = 0
        self.messages_from_host = 0
        self.bytes_from_host = 0

    # -- lifecycle ---------------------------------------------------------------
    async def start(self) -> Agent:
        self._loop = loop = asyncio.get_running_loop()
        cfg = self.config
        src = self._backends
        try:
            for q in range(self._nq):
                backend = src(q) if callable(src) else src[q]
                self._ports.append(LinkPort(
                    q, backend, max_message_size=cfg.max_message_size,
                    keepalive_interval=cfg.keepalive_interval,
                    peer_timeout=cfg.keepalive_timeout, on_messages=self._on_batch,
                    on_hello=self._on_hello, clock=self._clock, session=self.session,
                    window=(cfg.initial_window_messages, cfg.initial_window_bytes)))
        except BaseException:
            for port in self._ports:
                port.close()
            raise
        for port in self._ports:
            port.flush()  # the links' HELLOs go out now
        if self._tick_interval:
            self._tasks.append(loop.create_task(self._timer(), name="agent-timer"))
        log.info("agent started: %d queue(s)", self._nq)
        return self

    async def close(self, reason: str = "agent_shutdown") -> None:
        """Close every connection (CLOSED with ``reason`` told to the host when
        the link is up), every listener, the links and backends. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for lst in list(self.listeners.values()):
            self._close_listener(lst)
        for conn in list(self.conns.values()):
            conn.event(ConnEvent.SHUTDOWN, reason)
        self._flush()
        # the CLOSEDs may need a few rounds of link credit: wait a little, bounded
        for _ in range(20):
            if not any(p.link.queued_messages for p in self._ports):
                break
            await asyncio.sleep(0.01)
            for port in self._ports:
                with contextlib.suppress(OSError):
                    port.flush()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._lazy_timer is not None:
            self._lazy_timer.cancel()
            self._lazy_timer = None
        for port in self._ports:
            try:
                port.close()
            except Exception as exc:  # noqa: BLE001 - keep closing the others, reported
                log.warning("closing queue %d: %s", port.queue, exc)
        log.info("agent closed")

    async def __aenter__(self) -> Agent:  # noqa: PYI034 - start() returns self
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def statistics(self) -> dict[str, object]:
        """Every counter, as one JSON-able dict."""
        return {
            "role": "agent",
            "queues": self._nq,
            "connections_open": len(self.conns),
            "connections_handshaking": len(self._embryonic),
            "listeners": {(f"q{q}:{lid}" if q else str(lid)):
                          f"{l.bind}:{l.port} {l.spec}{' tls' if l.tls else ''}"
                          for (q, lid), l in self.listeners.items()},
            "buffered_bytes": self.budget.used,
            "link_up": self._link_up,
            "messages_to_host": self.messages_to_host,
            "bytes_to_host": self.bytes_to_host,
            "messages_from_host": self.messages_from_host,
            "bytes_from_host": self.bytes_from_host,
            **self.stats.as_dict(),
            "links": [_link_summary(p) for p in self._ports],
        }

    # -- ConnOwner (called by connections) --------------------------------------------
    def now(self) -> float:
        return self._clock()

    def _send(self, q: int, msg: P.Message) -> None:
        if not self._ports:
            return
        if self._lazy_credit[q]:
            self._send_lazy(q)  # before a CLOSED that may follow them
        self._ports[q].send(msg)
        if not self._dirty[q]:
            self._dirty[q] = True
            if self._flush_handle is None and self._loop is not None:
                self._flush_handle = self._loop.call_soon(self._flush)

    def to_host_data(self, conn_id: int, wire: bytes, header_length: int) -> None:
        self.messages_to_host += 1
        self.bytes_to_host += len(wire)
        q = conn_id % self._nq
        self._ports[q].send_data(conn_id, wire, header_length)
        if not self._dirty[q]:
            self._dirty[q] = True
            if self._flush_handle is None and self._loop is not None:
                self._flush_handle = self._loop.call_soon(self._flush)

    def lazy_credit(self, conn_id: int) -> tuple[int, int]:
        """Credit granted to the host for ``conn_id`` that it has not been sent yet."""
        held = self._lazy_credit[conn_id % self._nq].get(conn_id)
        return (held[0], held[1]) if held is not None else (0, 0)

    def to_host_credit(self, conn_id: int, messages: int, nbytes: int,
                       urgent: bool = True) -> None:
        q = conn_id % self._nq
        lazy = self._lazy_credit[q]
        delay = self.config.credit_delay
        if urgent or delay <= 0 or self._loop is None:
            held = lazy.pop(conn_id, None)
            if held is not None:  # one CREDIT for all of it
                messages += held[0]
                nbytes += held[1]
            self.stats.incr("credits_sent")
            self._send(q, P.Credit(conn_id, messages, nbytes))
            return
        # the host holds enough credit meanwhile: let the grant ride the
        # queue's next frame (the client's next request) rather than wake the
        # host for a frame of its own; credit_delay bounds the wait
        held = lazy.get(conn_id)
        if held is None:
            lazy[conn_id] = [messages, nbytes]
        else:
            held[0] += messages
            held[1] += nbytes
        if self._lazy_timer is None:
            self._lazy_timer = self._loop.call_later(delay, self._lazy_due)

    def _send_lazy(self, q: int) -> None:
        lazy, self._lazy_credit[q] = self._lazy_credit[q], {}
        port = self._ports[q]
        for conn_id, (messages, nbytes) in lazy.items():
            self.stats.incr("credits_sent")
            port.send(P.Credit(conn_id, messages, nbytes))

    def _lazy_due(self) -> None:
        self._lazy_timer = None
        for q in range(self._nq):
            if self._lazy_credit[q]:
                self._send_lazy(q)
                self._dirty[q] = True
        self._flush()

    def to_host_eof(self, conn: Connection) -> None:
        self.stats.incr("half_closes")
        log.debug("connection %d (%s:%d) half-closed by the client: EOF to the host",
                  conn.conn_id, conn.peer[0], conn.peer[1])
        self._send(conn.conn_id % self._nq, P.Eof(conn.conn_id))

    def to_host_connected(self, conn: Connection, ok: bool, reason: str, text: str) -> None:
        if ok:
            self.stats.incr("connections_connected")
            self._send(conn.conn_id % self._nq, P.Connected(conn.conn_id, P.Status.OK, ""))
        else:
            self.stats.incr("connect_failed")
            self._send(conn.conn_id % self._nq, P.Connected(
                conn.conn_id, status_for(reason), _text(reason, text)))

    def to_host_new_connection(self, conn: Connection) -> None:
        if self._embryonic.pop(conn.conn_id, None) is not conn or self._closed:
            # expired or shut down meanwhile: never announced
            conn.event(ConnEvent.LINK_LOST, "refused")
            return
        conn.link_blocked = self._link_blocked[conn.conn_id % self._nq]
        self.conns[conn.conn_id] = conn
        self.stats.incr("connections_accepted")
        self._send(conn.conn_id % self._nq, P.NewConnection(
            conn.conn_id, conn.listener_id, conn.peer[0], conn.peer[1]))

    def watch_drain(self, conn: Connection) -> None:
        self._drain_watch.add(conn)

    def finished(self, conn: Connection, reason: str, text: str, report: bool) -> None:
        if self.conns.get(conn.conn_id) is conn:
            del self.conns[conn.conn_id]
        self._drain_watch.discard(conn)
        self.budget.paused.discard(conn)
        self.stats.closed[reason] += 1
        level = logging.DEBUG if reason in ("peer_closed", "closed_by_host", "agent_shutdown",
                                            "link_lost", "peer_restarted") else logging.INFO
        log.log(level, "connection %d (%s:%d) closed: %s%s", conn.conn_id, conn.peer[0],
                conn.peer[1], reason, f" ({text})" if text else "")
        if report and self._link_up:
            self._send(conn.conn_id % self._nq,
                       P.Closed(conn.conn_id, status_for(reason), _text(reason, text)))

    # -- flushing and housekeeping -----------------------------------------------------
    def _flush(self) -> None:
        self._flush_handle = None
        if self._drain_watch:
            self._check_drains()
        dirty = self._dirty
        lazy = self._lazy_credit
        for q in range(self._nq):
            if dirty[q]:
                dirty[q] = False
                if lazy[q]:
                    self._send_lazy(q)  # they ride this frame
                port = self._ports[q]
                try:
                    more = port.flush()
                except OSError as exc:
                    more = False
                    self.stats.incr("send_failed")
                    log.warning("flush on queue %d failed: %s", q, exc)
                if more:  # a big burst: the rest goes next iteration, not at the next tick
                    dirty[q] = True
                    if self._flush_handle is None and self._loop is not None:
                        self._flush_handle = self._loop.call_soon(self._flush)
                if not port.writable and not self._link_blocked[q]:
                    self._set_link_blocked(q, True)

    def _set_link_blocked(self, q: int, blocked: bool) -> None:
        """The link's queue on ``q`` is over its limit (the host does not take
        frames): stop reading every client on that queue until it drains, so
        that what waits for the link stays bounded."""
        self._link_blocked[q] = blocked
        if blocked:
            self.stats.incr("link_backpressure")
        nq = self._nq
        for conn in list(self.conns.values()):
            if conn.conn_id % nq == q:
                conn.link_blocked = blocked
                conn._update_reading()

    def _check_link_blocked(self) -> None:
        for q, port in enumerate(self._ports):
            if self._link_blocked[q] and port.writable:
                self._set_link_blocked(q, False)

    def _check_drains(self) -> None:
        watch, self._drain_watch = self._drain_watch, set()
        for conn in watch:
            if conn.state is not ConnState.CLOSED:
                conn.check_drain()  # re-adds itself while something is buffered

    def tick(self, now: float | None = None) -> None:
        """Housekeeping at time ``now`` (see the module docstring)."""
        if now is None:
            now = self._clock()
        if self._drain_watch:
            self._check_drains()
        timed = _TIMED_STATES
        for conn in [c for c in self.conns.values() if c.state in timed]:
            conn.check_timeouts(now)
        self._check_budget_stall(now)
        self._check_link_blocked()
        lost = False
        for port in self._ports:
            lost = port.tick(now) or lost
        if lost and self._link_up:
            self._lose_link("link_lost", f"nothing from the host for "
                                         f"{self.config.keepalive_timeout:.1f} s")
        elif not lost and not self._link_up and self._host_hello is not None:
            self._link_up = True  # the same host is heard again (keepalives)
            self.stats.incr("links_recovered")

    def _check_budget_stall(self, now: float) -> None:
        b = self.budget
        if not b.paused or b.used <= b.limit // 2:
            self._stall_since = None
            return
        if self._stall_since is None:
            self._stall_since = now
            return
        if now - self._stall_since < self.config.buffer_stall_timeout:
            return
        holders = [c for c in self.conns.values()
                   if c.state is ConnState.OPEN and not c.pending and c.accounted]
        if holders:
            victim = max(holders, key=lambda c: c.accounted)
            b.paused.discard(victim)
            self.stats.incr("buffer_stall_closes")
            victim.event(ConnEvent.LIMIT_EXCEEDED, "buffer_limit",
                         f"agent buffers {b.used} bytes (limit {b.limit}); "
                         f"this connection holds a {victim.accounted}-byte partial message")
        self._stall_since = now

    async def _timer(self) -> None:
        assert self._tick_interval
        while True:
            await asyncio.sleep(self._tick_interval)
            try:
                self.tick()
            except Exception:  # housekeeping must not die
                log.exception("agent tick")

    # -- link life -----------------------------------------------------------------------
    def _on_hello(self, q: int, m: P.Hello, restarted: bool) -> None:
        """The first HELLO of a host session on queue ``q`` (the link absorbed
        duplicates); ``restarted``: the link knew another session (§3.1.4)."""
        if m.role != P.Role.HOST or m.protocol_version != P.PROTOCOL_VERSION:
            self.stats.host_errors["bad_hello"] += 1
            return
        self._host_hello = m
        # §5: the host's window and largest message bound what we send it
        self.host_window = (m.window_messages, m.window_bytes)
        self.host_max_message = min(self.config.max_message_size, m.max_message_size)
        self._link_up = True
        if not restarted:
            return
        # one host process restarting says HELLO anew on each of its queues: count it once
        if not self._restarted_queues or q in self._restarted_queues:
            self.stats.incr("host_restarts")
            self._restarted_queues.clear()
        self._restarted_queues.add(q)
        log.warning("host restarted on queue %d (new session): resetting its connections "
                    "and listeners", q)
        # the link dropped what was queued for the old host: nothing is blocked
        if self._link_blocked[q]:
            self._set_link_blocked(q, False)
        self._reset_all(ConnEvent.PEER_RESTARTED, "peer_restarted", queue=q)

    def _lose_link(self, reason: str, text: str) -> None:
        if not self._link_up:
            return
        self.stats.incr("links_lost")
        log.warning("link to the host lost: %s", text)
        self._link_up = False
        self._reset_all(ConnEvent.LINK_LOST, reason)

    def _reset_all(self, ev: ConnEvent, reason: str, *, queue: int | None = None) -> None:
        """Reset the connections and close the listeners of ``queue`` (None: all)."""
        nq = self._nq
        for cid in [c for c in self._embryonic if queue is None or c % nq == queue]:
            del self._embryonic[cid]  # their connection_made will find them gone
        for lst in list(self.listeners.values()):
            if queue is None or lst.queue == queue:
                self._close_listener(lst)
        for conn in list(self.conns.values()):
            if queue is None or conn.conn_id % nq == queue:
                conn.event(ev, reason)

    # -- receiving -------------------------------------------------------------------------
    def _on_batch(self, q: int, msgs: list[P.Message]) -> None:
        # replies are held per connection and written once at the end of the
        # batch (Connection.flush_writes): a client with several replies in the
        # batch costs one send(), and reads them in one go
        writes: list[Connection] = []
        self.batch_writes = writes
        try:
            for m in msgs:
                try:
                    self.on_message(q, m)
                except Exception:  # one bad message must not stop the queue
                    self.stats.incr("internal_errors")
                    log.exception("handling %r from the host", m)
        finally:
            self.batch_writes = None
            for conn in writes:
                try:
                    conn.flush_writes()
                except Exception:  # one client's failed write must not stop the others
                    self.stats.incr("internal_errors")
                    log.exception("writing to %r", conn)

    def on_message(self, q: int, m: P.Message) -> None:
        """Handle one transport message from the host (any queue)."""
        if not self._link_up:
            # the host is back (a stall, or a restart whose HELLO follows)
            self._link_up = True
            self.stats.incr("links_recovered")
        if isinstance(m, P.Data):
            conn = self.conns.get(m.conn_id)
            self.messages_from_host += 1
            self.bytes_from_host += len(m.payload)
            if conn is None:
                self.stats.host_errors["data_unknown_conn"] += 1
                return
            conn.host_data(m.payload, m.header_length)
        elif isinstance(m, P.Credit):
            conn = self.conns.get(m.conn_id)
            if conn is None:
                self.stats.host_errors["credit_unknown_conn"] += 1
                return
            conn.on_credit(m.messages, m.bytes)
        elif isinstance(m, P.Close):
            conn = self.conns.get(m.conn_id)
            if conn is None:
                # crossed our CLOSED, or never existed: confirm so the host stops waiting
                self.stats.host_errors["close_unknown_conn"] += 1
                self._send(m.conn_id % self._nq, P.Closed(
                    m.conn_id, P.Status.LOCAL_CLOSE, "unknown_connection"))
                return
            conn.host_close(m.abort)
        elif isinstance(m, P.Listen):
            self._on_listen(q, m)
        elif isinstance(m, P.Connect):
            self._on_connect(m)
        elif isinstance(m, P.Error):
            self.stats.host_errors["error_from_host"] += 1
            log.warning("host reports error (conn %d): code %d %s", m.conn_id, m.code, m.text)
        else:
            self.stats.host_errors[f"unexpected_{type(m).__name__.lower()}"] += 1

    # -- listeners ---------------------------------------------------------------------------
    def _on_listen(self, q: int, m: P.Listen) -> None:
        self.stats.incr("listen_requests")
        old = self.listeners.get((q, m.listener_id))
        if old is not None:
            self._close_listener(old)
        loop = self._loop
        assert loop is not None
        loop.create_task(self._listen(q, m))

    async def _listen(self, q: int, m: P.Listen) -> None:
        cfg = self.config
        bind = m.bind_address or "127.0.0.1"

        def fail(status: int, text: str) -> None:
            self.stats.incr("listen_failed")
            log.warning("LISTEN %d %s:%d %r refused: %s", m.listener_id, bind, m.port,
                        m.framer, text)
            self._send(q, P.ListenResult(m.listener_id, status, 0, text))

        if not cfg.allow_non_loopback and not is_loopback(bind):
            fail(P.Status.OS_ERROR, f"address {bind} is not loopback (allow_non_loopback off)")
            return
        try:
            make_framer(m.framer, cfg.max_message_size)
        except (FramingError, ValueError, TypeError) as exc:
            fail(P.Status.UNKNOWN, f"bad framer spec {m.framer!r}: {exc}")
            return
        ctx: ssl.SSLContext | None = None
        if m.tls:
            cert = m.cert_path or cfg.tls_certfile
            key = m.key_path or cfg.tls_keyfile
            if not cert or not key:
                fail(P.Status.TLS_ERROR, "TLS asked for but no certificate/key given")
                return
            try:
                ctx = server_context(cert, key)
            except (ssl.SSLError, OSError) as exc:
                fail(P.Status.TLS_ERROR, f"cannot load certificate/key: {exc}")
                return
        lst = _Listener(m.listener_id, bind, m.framer, ctx is not None, q)
        lkey = (q, m.listener_id)
        other = next((o for o in self.listeners.values() if m.port and o.port == m.port
                      and o.bind == bind and o.queue != q and o.server is not None), None)
        if other is not None and other.group is not None:
            # another queue's host listens there: join its TCP server (a listen group)
            if other.spec != m.framer or other.tls != lst.tls:
                fail(P.Status.OS_ERROR, f"{bind}:{m.port} is served by queue {other.queue} "
                                        f"with framer {other.spec!r}{' (TLS)' if other.tls else ''}")
                return
            if self._closed or self.listeners.get(lkey) is not None:
                return
            lst.server, lst.port, lst.group = other.server, other.port, other.group
            other.group.members.append(lst)
            self.listeners[lkey] = lst
            log.info("listener %d of queue %d joins %s:%d (queue(s) %s)", m.listener_id, q,
                     bind, lst.port, sorted(x.queue for x in lst.group.members))
            self._send(q, P.ListenResult(m.listener_id, P.Status.OK, lst.port, ""))
            return
        group = lst.group = _ListenGroup(lst)
        try:
            # not loop.create_server: uvloop accepts one connection per loop
            # iteration there, which starves bursts of clients (agent/_accept.py)
            server = await Listener.start(
                lambda: self._accept(group), bind, m.port, ssl_context=ctx, backlog=1024,
                ssl_handshake_timeout=cfg.tls_handshake_timeout)
        except OSError as exc:
            fail(P.Status.OS_ERROR, f"bind {bind}:{m.port}: {exc.strerror or exc}")
            return
        if self._closed or self.listeners.get(lkey) is not None:
            server.close()
            return
        lst.server = server
        lst.port = server.port
        self.listeners[lkey] = lst
        log.info("listening on %s:%d (listener %d of queue %d, framer %r%s)", bind, lst.port,
                 m.listener_id, q, m.framer, ", TLS" if ctx else "")
        self._send(q, P.ListenResult(m.listener_id, P.Status.OK, lst.port, ""))

    def _close_listener(self, lst: _Listener) -> None:
        key = (lst.queue, lst.listener_id)
        if self.listeners.get(key) is lst:
            del self.listeners[key]
        group, server = lst.group, lst.server
        lst.group = lst.server = None
        if group is not None and lst in group.members:
            group.members.remove(lst)
            if group.members:
                return  # the other members still serve the address
        if server is not None:
            server.close()

    def _new_id(self, queue: int | None = None) -> int:
        """A free connection id below HOST_CONN_ID_BASE, increasing; on ``queue``
        (``id % queues == queue``) when given."""
        while True:
            cid = self._next_id
            if queue is not None:
                cid += (queue - cid) % self._nq
            if cid >= HOST_CONN_ID_BASE:
                self._next_id = 1
                continue
            self._next_id = cid + 1
            if cid not in self.conns and cid not in self._embryonic:
                return cid

    def _accept(self, group: _ListenGroup) -> asyncio.Protocol:
        """Protocol factory of a listener. The connection is *embryonic* until
        ``connection_made`` (immediately for TCP; after the handshake for TLS,
        and never if the handshake fails -- asyncio then never calls the
        protocol again, so an expiry timer forgets it)."""
        if (len(self.conns) + len(self._embryonic) >= self.config.max_connections
                or self._closed or not self._link_up):
            self.stats.incr("too_many_connections" if self._link_up else "refused_link_down")
            return _Refused()
        if not group.members:
            return _Refused()
        lst = group.pick()
        cid = self._new_id(lst.queue if group.per_queue else None)
        framer = make_framer(lst.spec, self.host_max_message)
        conn = Connection(self, cid, framer, host_window=self.host_window,
                          host_max_message=self.host_max_message,
                          listener_id=lst.listener_id, now=self._clock())
        self._embryonic[cid] = conn
        if lst.tls and self._loop is not None:
            self._loop.call_later(self.config.tls_handshake_timeout + 0.5,
                                  self._expire_embryonic, conn)
        return conn

    def _expire_embryonic(self, conn: Connection) -> None:
        if self._embryonic.get(conn.conn_id) is conn:
            del self._embryonic[conn.conn_id]
            self.stats.incr("tls_handshake_failed")
            log.info("connection %d: TLS handshake did not complete", conn.conn_id)

    # -- outbound connections ------------------------------------------------------------------
    def _on_connect(self, m: P.Connect) -> None:
        cfg = self.config
        cid = m.conn_id

        def fail(status: int, text: str) -> None:
            self.stats.incr("connect_failed")
            self._send(cid % self._nq, P.Connected(cid, status, text))

        if cid in self.conns or cid in self._embryonic:
            fail(P.Status.UNKNOWN, f"connection id {cid:#x} is in use")
            return
        if len(self.conns) >= cfg.max_connections:
            fail(P.Status.INTERNAL, "too_many_connections")
            return
        if not cfg.allow_non_loopback and not is_loopback(m.host):
            fail(P.Status.OS_ERROR, f"address {m.host} is not loopback (allow_non_loopback off)")
            return
        try:
            framer = make_framer(m.framer, self.host_max_message)
        except (FramingError, ValueError, TypeError) as exc:
            fail(P.Status.UNKNOWN, f"bad framer spec {m.framer!r}: {exc}")
            return
        conn = Connection(self, cid, framer, host_window=self.host_window, outbound=True,
                          host_max_message=self.host_max_message,
                          now=self._clock())
        conn.link_blocked = self._link_blocked[cid % self._nq]
        self.conns[cid] = conn
        loop = self._loop
        assert loop is not None
        conn.connect_task = loop.create_task(self._connect(conn, m))

    async def _connect(self, conn: Connection, m: P.Connect) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        ctx = client_context(cfg.tls_client_cafile) if m.tls else None
        try:
            await asyncio.wait_for(loop.create_connection(
                lambda: conn, m.host, m.port, ssl=ctx,
                server_hostname=m.host if ctx is not None else None,
                family=socket.AF_UNSPEC), cfg.connect_timeout)
        except asyncio.CancelledError:
            return
        except (TimeoutError, OSError, ssl.SSLError) as exc:
            if conn.state is ConnState.CONNECTING:
                reason = "tls_error" if isinstance(exc, ssl.SSLError) else "connect_failed"
                conn.event(ConnEvent.CONNECT_FAILED, reason,
                           f"{m.host}:{m.port}: {exc or type(exc).__name__}")
        finally:
            conn.connect_task = None


def _link_summary(port: LinkPort) -> dict[str, object]:
    st = port.link.stats
    return {"queue": port.queue, "frames_out": st.frames_out, "frames_in": st.frames_in,
            "messages_out": st.messages_out, "messages_in": st.messages_in,
            "credit_stalls": st.credit_stalls, "dropped": dict(st.dropped),
            "peer_restarts": port.link.peer_restarts, "established": port.link.established,
            "peer_lost": port.link.peer_lost}


def _text(reason: str, text: str) -> str:
    return f"{reason}: {text}" if text else reason
