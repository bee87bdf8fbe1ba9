"""Offloaded sockets: listen, accept, connect, send and receive whole messages
through the offload agent.

Theory of operation
-------------------
A :class:`Host` owns the link to the agent: one *port* per transport queue
(an :class:`xport.AsyncLink` over a frame backend, adapted by
:class:`LinkPort`). Connection ``c`` rides queue ``c % queues``; LISTEN and
other link-wide messages ride queue 0. Every received batch goes to
:meth:`Host._on_batch` - on the link's read callback when the port takes a
receiver, else from one reader task per port - and each message to
:meth:`Host._on_message` (DATA for open connections inline), which is synchronous:
it demultiplexes by ``conn_id`` with a dict (aioquic) and drives the
connection's lifecycle table (:mod:`mux_rpc._connstate`). Messages to the
agent go through a per-port outbox drained by one writer task, so nothing
that runs on the receive path ever awaits.

Startup and restarts (docs/protocol.md §3.1): the links run the handshake
(HELLO resent until acknowledged, duplicates absorbed) and hand the host the
first HELLO of each agent session in-band, in order with the messages. The
host waits for it in :meth:`Host.start`. A HELLO with another session than
the agent's known one means the agent restarted (the links have reset their
own state): every connection breaks with ``peer_restarted`` and LISTEN is
re-issued for every open listener. Nothing is decided by timing. The agent's
HELLO carries the window it grants per connection: the host's send windows
start from it. Nothing heard from the
agent for ``keepalive_timeout`` (checked by :meth:`Host.tick`, time passed in)
means the link is lost: every connection breaks with ``link_lost`` and every
waiting call raises :class:`LinkLostError`.

Flow control, agent → host: the host grants each connection a window of
``window_messages`` messages and ``window_bytes`` bytes. A message counts
against it from the moment it arrives until the application reports it done
with :meth:`OffloadConnection.on_consumed` (explicit, as the
:class:`mux_rpc.MessageConnection` contract says; the streams face and
``auto_consume=True`` call it when ``recv`` returns). So the host holds at most
one window per connection; an agent that sends more breaks the connection
(``credit_violation``) and never makes the host allocate. Consumed credit goes
back in CREDIT messages, batched: sent when half a window has accumulated, or
at once when the connection's receive queue runs empty (so a sender that is
blocked on a large message never waits for a batch that cannot fill).

Flow control, host → agent: ``send`` waits (FIFO) until the agent's window
allows the message; CREDIT from the agent refills it. A message larger than
the whole window may go when nothing is outstanding, so it cannot deadlock.

Half-close (docs/protocol.md §3.13): the agent's EOF for a connection follows
its last DATA; the connection goes HALF_CLOSED: ``recv()`` returns what is
queued, then ``None``, while ``send()`` goes on (through ``send()``, not the
``*_nowait`` fast path, which serves OPEN connections only: no DATA arrives
after EOF, so nothing on the per-message paths changes) until ``close()``.

Errors (trio's exact meanings): :class:`ConnectionClosedError` closed by you;
:class:`ConnectionBrokenError` broken by the client, agent or link with the
agent's reason chained as ``__cause__``; :class:`LinkLostError`;
:class:`BusyError` when two tasks ``recv`` at once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from xport import _protocol as P
from xport._flow import FlowControlError, ReceiveWindow, SendWindow
from xport._link import new_session

from ._conn import ListenerClosedError, Message
from ._connstate import Action, ConnEvent, ConnState, transition
from ._dispatch import _rpcfast
from ._offload_errors import (
    BusyError,
    ConnectionBrokenError,
    ConnectionClosedError,
    LinkLostError,
    OffloadRequestError,
    broken,
)

__all__ = [
    "Host",
    "HostConfig",
    "HostStats",
    "LinkPort",
    "OffloadConnection",
    "OffloadListener",
    "RunSpec",
    "reason_code",
]

log = logging.getLogger("mux_rpc.offload")

#: host-assigned connection ids (CONNECT) have the high bit set; the agent's don't
HOST_CONN_ID_BASE = 0x8000_0000

#: :meth:`OffloadConnection.set_message_hook` answers
HOOK_DEFER = 0
HOOK_DONE = 1
HOOK_OWNED = 2

#: :meth:`OffloadConnection.set_batch_hook`'s hook: ``hook(payloads) -> (taken,
#: owned, owned_bytes)``
BatchHook = Callable[[list[bytes]], tuple[int, int, int]]

#: a run of raw DATA as a receiving port hands it over (``Link.raw_runs``):
#: ``(conn_id, [payload, ...])``, consecutive DATA without a ULP header of one
#: connection, in order
RawRun = tuple[int, list[bytes]]

#: what finishes a run after ``Dispatcher.dispatch_many``: ``finish(payloads,
#: replies, stop) -> (taken, owned, owned_bytes)``, the batch hook's answer
RunFinish = Callable[[list[bytes], list[bytes], int], tuple[int, int, int]]


#: framers whose replies the agent writes as they are (no framing added) and
#: whose messages delimit themselves: their replies may be joined (coalesce)
_SELF_DELIMITING_FRAMERS = frozenset({"msgpack-rpc"})


def coalesce(payloads: list[bytes], limit: int) -> list[bytes]:
    """``payloads`` joined, in order, into as few messages as a greedy pass
    makes of at most ``limit`` bytes each: each message takes the next
    payloads while their total fits; a payload longer than ``limit`` is a
    message of its own. The concatenation never changes. ``payloads``
    itself when nothing joins (``limit`` <= 0, or no two neighbours fit).
    The run engine (mux_rpc/_rpcfast.c ``coalesce_list``) does the same."""
    if limit <= 0 or len(payloads) < 2:
        return payloads
    out: list[bytes] = []
    cur: list[bytes] = []
    size = 0
    for p in payloads:
        n = len(p)
        if cur and size + n <= limit:
            cur.append(p)
            size += n
            continue
        if cur:
            out.append(cur[0] if len(cur) == 1 else b"".join(cur))
        cur = [p]
        size = n
    out.append(cur[0] if len(cur) == 1 else b"".join(cur))
    return payloads if len(out) == len(payloads) else out


class RunSpec(NamedTuple):
    """What the run engine (``mux_rpc/_rpcfast.c``, :meth:`Host._on_batch`)
    needs to serve a connection's runs in C: set by the server with its batch
    hook (:meth:`OffloadConnection.set_batch_hook`) when its dispatcher is
    accelerated. The engine does what the batch hook's checks, dispatch and
    common outcome do; ``finish`` is the hook's own rest, which the engine
    calls (through :meth:`OffloadConnection._run_tail`) for anything else."""

    core: Any
    """The dispatcher's C core (``mux_rpc._rpcfast.Core``)."""
    limits: Any
    """The server's :class:`~mux_rpc._limits.InflightLimits`."""
    key: int
    """The connection's key in ``limits``."""
    stats: Any
    """The server's stats (``messages`` counts calls)."""
    finish: RunFinish
    """The batch hook after its dispatch (the run's "tail")."""


def reason_code(status: int) -> str:
    """The machine reason string of a CLOSED/CONNECTED/ERROR status code."""
    special = {
        P.Status.PEER_CLOSED: "peer_closed",
        P.Status.LOCAL_CLOSE: "closed_by_host",
        P.Status.RESET: "peer_reset",
        P.Status.TOO_LARGE: "message_too_large",
    }
    try:
        st = P.Status(status)
    except ValueError:
        return f"code_{status}"
    return special.get(st, st.name.lower())


@dataclass(frozen=True, slots=True)
class HostConfig:
    """Limits and timers of a :class:`Host`. Every limit has a safe default."""

    window_messages: int = 64
    """Messages per connection the host lets the agent send ahead of the
    application (the most it ever buffers per connection)."""
    window_bytes: int = 2 << 20
    """Bytes per connection, likewise (payload plus ULP header); at least
    ``max_message_size`` (docs/protocol.md §5.1). Both windows are announced
    in HELLO: a link built by :func:`mux_rpc._linkport.link_port` must be
    given the same values (checked by :class:`Host`)."""
    max_message_size: int = 1 << 20
    """Largest message the host accepts or sends; announced in HELLO."""
    keepalive_interval: float = 1.0
    """Seconds between KEEPALIVEs when the host has sent nothing else."""
    keepalive_timeout: float = 5.0
    """Seconds without anything from the agent before the link is declared lost."""
    hello_timeout: float = 10.0
    """Seconds :meth:`Host.start` waits for the agent's HELLO."""
    request_timeout: float = 10.0
    """Seconds LISTEN and CONNECT wait for the agent's answer."""
    close_timeout: float = 2.0
    """Seconds ``close()`` waits for the agent's CLOSED before forgetting the id."""
    accept_backlog: int = 1024
    """Connections accepted by the agent but not yet by the application, per
    listener; beyond it new connections are closed at once (counted)."""
    max_early_connections: int = 1024
    """Connection ids with messages that arrived before their NEW_CONNECTION
    (possible when they ride another queue); beyond it the oldest is dropped."""
    tick_interval: float = 0.25
    """Seconds between keepalive checks of the host's timer task."""

    credit_delay: float = 0.002
    """Seconds a connection served inline (the batch fast path, see
    :meth:`OffloadConnection.set_message_hook`) may hold consumed credit below
    half a window while the agent's byte credit is below one maximum-size
    message (it may be waiting to send one) before it goes back anyway. While
    the agent holds more than that, credit goes back at half a window or when
    the agent is out of message credit (:func:`inline_grant_rule`)."""

    coalesce_replies: int = 1024
    """Bytes: the replies a msgpack-rpc connection's run of calls gets at
    once go to the agent joined into DATA messages of up to this size
    (:func:`coalesce`; at most ``max_message_size`` of the agent), one per
    run usually instead of one per reply. msgpack values delimit
    themselves and the agent writes msgpack-rpc DATA to the client as it
    comes, so the client reads the same bytes. 0: one DATA per reply. The
    default keeps a joined DATA within one link frame."""

    def __post_init__(self) -> None:
        if self.window_messages < 1 or self.window_bytes < 1:
            raise ValueError("windows must be positive")
        if self.coalesce_replies < 0:
            raise ValueError("coalesce_replies must be >= 0")
        if self.window_bytes < self.max_message_size:
            raise ValueError(
                f"window_bytes ({self.window_bytes}) must be >= max_message_size "
                f"({self.max_message_size}): a largest message from the agent could never "
                "fit the window (docs/protocol.md §5.1)")
        if not 0 < self.keepalive_interval < self.keepalive_timeout:
            raise ValueError("need 0 < keepalive_interval < keepalive_timeout")


@dataclass(slots=True)
class HostStats:
    """Counters of a :class:`Host` (cumulative)."""

    connections_accepted: int = 0
    connections_connected: int = 0
    connections_closed: int = 0
    connections_broken: int = 0
    messages_in: int = 0
    bytes_in: int = 0
    messages_out: int = 0
    bytes_out: int = 0
    credits_sent: int = 0
    credits_received: int = 0
    backlog_overflow: int = 0
    early_dropped: int = 0
    unknown_conn: int = 0
    #: CLOSED confirmations that came after ``close()`` stopped waiting for
    #: them (``HostConfig.close_timeout``; the agent may flush to a slow
    #: client for longer): expected, so not counted in ``unknown_conn``
    late_closed: int = 0
    protocol_errors: int = 0
    credit_violations: int = 0
    agent_errors: int = 0
    links_lost: int = 0
    peer_restarts: int = 0
    dropped_while_closing: int = 0
    peer_half_closes: int = 0
    close_reasons: dict[str, int] = field(default_factory=dict)


class LinkPort(Protocol):
    """What the host needs of one queue's link (an AsyncLink adapter, or a test double).

    ``link_managed`` ports (the xport link) run the handshake and keepalive
    themselves: they pass the first HELLO of each agent session in-band (as a
    received message) and report liveness from :meth:`tick`. Other ports
    carry every HELLO and KEEPALIVE like any message and the host sends its
    own HELLO and KEEPALIVEs.
    """

    link_managed: bool

    def peer_hello(self) -> P.Hello | None:
        """The latest HELLO the link consumed (a new object when the peer restarts)."""
        ...

    def tick(self, now: float) -> bool:
        """Keepalive duty of a managed link at ``now``; True when the peer is lost."""
        ...

    async def send(self, msgs: Sequence[P.Message]) -> None:
        """Send messages in order; may wait for link-level credit."""
        ...

    async def recv(self) -> Sequence[P.Message]:
        """Wait for the next received messages (at least one). Raises
        ``EOFError``/``OSError`` when the link is gone for good."""
        ...

    async def aclose(self) -> None:
        """Release the port (idempotent)."""
        ...


# -- connections --------------------------------------------------------------------


GRANT_NOW = "now"
GRANT_LATER = "later"
GRANT_HOLD = "hold"


def inline_grant_rule(pending_messages: int, pending_bytes: int, window_messages: int,
                      window_bytes: int, outstanding_messages: int, outstanding_bytes: int,
                      max_message_size: int) -> str:
    """When consumed credit of inline-served messages goes back (docs/protocol.md §5.2).

    :data:`GRANT_NOW` at half a window pending (messages or bytes) or when the
    agent is out of message credit; :data:`GRANT_LATER` (after
    ``HostConfig.credit_delay``, batched by ``Host._credit_sweep``) when its
    byte credit is below one maximum-size message, since its next message may
    be that large; else :data:`GRANT_HOLD`: the agent holds at least one
    message and one largest message's bytes of credit, so this connection's
    sender cannot be blocked by what stays pending, and the credit rides a
    later grant (at the latest when half a window is pending). Holding is what
    keeps a steadily pipelining client at one CREDIT per half window instead of
    one per ``credit_delay``. No deadlock: pending + outstanding + buffered is
    the window, so a sender that is blocked on messages or bytes drives the
    rule, at its last consumed message, to NOW or LATER.
    """
    if (pending_messages * 2 >= window_messages or pending_bytes * 2 >= window_bytes
            or outstanding_messages < 1):
        return GRANT_NOW
    if outstanding_bytes < max_message_size:
        return GRANT_LATER
    return GRANT_HOLD


class _HostReceiveWindow(ReceiveWindow):
    """``xport._flow.ReceiveWindow`` with a grant rule that batches at small sizes.

    The base rule also grants whenever the agent's byte credit is below one
    maximum-size message; with the default window (1 MiB) equal to the maximum
    message size that is *always*, i.e. one CREDIT per message. Here credit
    goes back when half a window is pending (messages or bytes), when the
    agent is out of message credit, or when the application holds nothing
    from this connection any more (``buffered == 0``). No deadlock: if the
    agent is blocked, the application eventually consumes everything it was
    given, and that last ``on_consumed`` returns all that is pending.
    """

    __slots__ = ()

    def _grant_due(self) -> bool:
        return (self.buffered_messages == 0
                or self.pending_messages * 2 >= self.window_messages
                or self.pending_bytes * 2 >= self.window_bytes
                or self.outstanding_messages < 1)



class OffloadConnection:
    """One offloaded TCP connection, as whole messages (a ``MessageConnection``).

    ``recv()`` returns the next :class:`Message`, or ``None`` once the client
    closed cleanly and everything before the close was received. A client
    that only half-closed (TCP FIN: the agent's EOF) is still answered:
    ``recv()`` returns ``None`` after its last message, ``send()`` keeps
    working, and ``close()`` then flushes the replies and closes. After a
    break, messages that had already arrived are still returned, then
    :class:`ConnectionBrokenError` is raised. After your own ``close()`` every
    call raises :class:`ConnectionClosedError`.
    """

    # slots: the run engine (mux_rpc/_rpcfast.c) reads _state, _fast and
    # _rx_waiter of every run it serves, in place, as it does the windows'
    __slots__ = ("conn_id", "peer", "framer", "queue", "auto_consume", "_host", "_state",
                 "_loop", "_rx", "_rx_waiter", "_recv_busy", "_rwin", "_swin", "_send_lock",
                 "_send_waiter", "_hook", "_batch_hook", "_fast", "_coalesce", "_cause", "_done",
                 "_opened")

    def __init__(self, host: Host, conn_id: int, peer: tuple[str, int] | None, framer: str,
                 state: ConnState, *, auto_consume: bool = False) -> None:
        self.conn_id = conn_id
        self.peer = peer
        self.framer = framer
        self.queue = conn_id % len(host._ports)
        self.auto_consume = auto_consume
        self._host = host
        self._state = state
        self._loop = asyncio.get_running_loop()
        self._rx: collections.deque[Message] = collections.deque()
        self._rx_waiter: asyncio.Future[None] | None = None
        self._recv_busy = False
        cfg = host.config
        # agent -> host: the window granted in our HELLO counts as the initial grant
        self._rwin = _HostReceiveWindow(cfg.window_messages, cfg.window_bytes,
                                   max_message_size=cfg.max_message_size)
        self._rwin.initial_grant()
        # host -> agent: the agent's HELLO window, refilled by its CREDITs
        self._swin = SendWindow(host._agent_window[0], host._agent_window[1],
                                max_message_size=host.max_send_size)
        self._send_lock = asyncio.Lock()
        self._send_waiter: asyncio.Future[None] | None = None
        self._hook: Callable[[bytes], int] | None = None
        self._batch_hook: BatchHook | None = None
        # what the run engine reads per run: the server's RunSpec, then this
        # connection's and the limits' objects that never change (see
        # set_batch_hook); None: not served by the engine
        self._fast: tuple[Any, ...] | None = None
        # HostConfig.coalesce_replies for a framer whose replies may be joined
        self._coalesce = (cfg.coalesce_replies if framer.split(":", 1)[0].strip()
                          in _SELF_DELIMITING_FRAMERS else 0)
        self._cause: tuple[str, str] | None = None
        self._done = self._loop.create_future()  # set when CLOSED/BROKEN
        self._opened = self._loop.create_future()  # CONNECTING -> OPEN

    # -- public -----------------------------------------------------------------
    @property
    def state(self) -> ConnState:
        return self._state

    @property
    def buffered(self) -> tuple[int, int]:
        """(messages, bytes) received from the agent and not yet consumed."""
        return self._rwin.buffered_messages, self._rwin.buffered_bytes

    @property
    def can_send(self) -> bool:
        """False once nothing more can be sent: closed, broken, or the client
        closed both ways (PEER_CLOSED). True after a half-close (HALF_CLOSED)."""
        return self._state in (ConnState.OPEN, ConnState.HALF_CLOSED, ConnState.CONNECTING)

    @property
    def send_credit(self) -> tuple[int, int]:
        """(messages, bytes) the agent currently lets this side send."""
        return self._swin.messages, self._swin.bytes

    def __repr__(self) -> str:
        return f"<OffloadConnection {self.conn_id:#x} {self._state.value} peer={self.peer}>"

    async def recv(self) -> Message | None:
        if self._recv_busy:
            raise BusyError(f"another task is already in recv() on connection {self.conn_id:#x}")
        self._recv_busy = True
        try:
            while True:
                st = self._state
                if st in (ConnState.CLOSING, ConnState.CLOSED):
                    raise ConnectionClosedError(f"connection {self.conn_id:#x} was closed")
                if self._rx:
                    msg = self._rx.popleft()
                    if self.auto_consume:
                        self.on_consumed(msg.nbytes)
                    return msg
                if st is ConnState.HALF_CLOSED or st is ConnState.PEER_CLOSED:
                    return None
                if st is ConnState.BROKEN:
                    raise self._broken_error()
                fut = self._loop.create_future()
                self._rx_waiter = fut
                try:
                    await fut
                finally:
                    self._rx_waiter = None
        finally:
            self._recv_busy = False

    def recv_nowait(self) -> Message | None:
        """A message if one is queued, else None (never waits, never raises Busy)."""
        if self._rx and self._state not in (ConnState.CLOSING, ConnState.CLOSED):
            msg = self._rx.popleft()
            if self.auto_consume:
                self.on_consumed(msg.nbytes)
            return msg
        return None

    async def send(self, payload: bytes, *, header: bytes | None = None) -> None:
        n = len(payload) + (len(header) if header is not None else 0)
        if n > self._host.max_send_size:
            raise ValueError(f"message of {n} bytes exceeds the maximum "
                             f"{self._host.max_send_size}")
        self._check_can_send()
        async with self._send_lock:  # FIFO: asyncio.Lock wakes waiters in order
            while not self._swin.can_send(n):
                self._check_can_send()
                fut = self._loop.create_future()
                self._send_waiter = fut
                try:
                    await fut
                finally:
                    self._send_waiter = None
            self._check_can_send()
            self._swin.consume(n)
            body = payload if header is None else header + payload
            self._host._send_data(self, body, 0 if header is None else len(header), n)

    async def close(self) -> None:
        """Close: the agent flushes what was sent, closes the TCP connection and
        confirms; waits for that (at most ``HostConfig.close_timeout``). Idempotent."""
        self._event(ConnEvent.LOCAL_CLOSE)
        if not self._done.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._done),
                                       self._host.config.close_timeout)
            except TimeoutError:
                log.warning("connection %#x: no CLOSED from the agent within %.1f s",
                            self.conn_id, self._host.config.close_timeout)
                self._finish(closed=True)
                self._host._expect_late_closed(self.conn_id)

    def on_consumed(self, nbytes: int) -> None:
        """One received message of ``nbytes`` is done with: its credit may go back."""
        w = self._rwin
        if w.buffered_messages < 1:
            return  # more reports than messages: ignore rather than over-grant
        grant = w.on_consumed(min(nbytes, w.buffered_bytes))
        if grant is not None and self._state in (ConnState.OPEN, ConnState.CONNECTING):
            self._host._send_credit(self.queue, self.conn_id, grant[0], grant[1])

    # -- the batch fast path ------------------------------------------------------
    def set_message_hook(self, hook: Callable[[bytes], int] | None) -> None:
        """Let ``hook(payload)`` see each arriving message first, synchronously,
        on the receive path (``None`` removes it). Only while the receiver is
        parked in ``recv()`` with nothing queued - so no earlier message of the
        connection is still waiting - and never for messages with a ULP header.
        ``hook`` returns :data:`HOOK_DEFER` (0: queue it for ``recv()`` as
        usual), :data:`HOOK_DONE` (1: handled and finished; its credit goes
        back, batched) or :data:`HOOK_OWNED` (2: the hook calls
        :meth:`on_consumed` later itself)."""
        self._hook = hook

    def set_batch_hook(self, hook: BatchHook | None, *, fast: RunSpec | None = None) -> None:
        """Let ``hook(payloads)`` see a *run* first: two or more consecutive
        messages of this connection, without ULP header, from one received
        batch (``None`` removes it; a run of one goes to the message hook of
        :meth:`set_message_hook`). Same conditions as the message hook: only
        while the receiver is parked in ``recv()`` with nothing queued, and
        the run's messages have been counted against the receive window
        first (a run that would overrun it is delivered message by message,
        so the same message breaks the connection).

        ``hook`` returns ``(taken, owned, owned_bytes)``: it handled the first
        ``taken`` messages; ``owned`` of them (``owned_bytes`` in all) it
        reports later itself with :meth:`on_consumed`, the others are finished
        and their credit goes back with one update for the run (the rule of
        :meth:`set_message_hook`). ``payloads[taken:]`` are queued for
        ``recv()`` in order, as if no hook were set.

        ``fast``: the same hook as the run engine can run it in C (see
        :class:`RunSpec`); set and cleared with ``hook``."""
        self._batch_hook = hook
        if hook is None or fast is None:
            self._fast = None
        else:
            lim = fast.limits
            self._fast = (*fast, self._rwin, self._swin, self._rx, self._send_lock,
                          lim._waiters, lim._by_conn, lim.total, lim.per_connection,
                          self._coalesce)

    def coalesce_replies(self, payloads: list[bytes]) -> list[bytes]:
        """``payloads`` (replies, in order) as the DATA messages to send them
        in: joined up to ``HostConfig.coalesce_replies`` bytes each (and the
        agent's maximum message size) on a connection whose framer allows
        it (msgpack-rpc), else as they are. See :func:`coalesce`."""
        limit = self._coalesce
        return coalesce(payloads, min(limit, self._host.max_send_size)) if limit else payloads

    def send_nowait(self, payload: bytes) -> bool:
        """Send ``payload`` at once if nothing waits to send on this connection
        and the agent's window allows it; else send nothing and return False
        (use ``await send()``)."""
        sw = self._swin
        n = len(payload)
        if (self._state is not ConnState.OPEN or sw.messages < 1 or n > sw.bytes
                or n > self._host.max_send_size or self._send_lock.locked()):
            return False
        sw.messages -= 1
        sw.bytes -= n
        host = self._host
        st = host.stats
        st.messages_out += 1
        st.bytes_out += n
        q = self.queue
        direct = host._direct[q]
        if direct is None or host._outboxes[q].items or not direct(self.conn_id, payload, 0):
            host._send_ctl(q, P.Data(self.conn_id, payload, 0))  # Host._send_data's slow path
        return True

    def send_many_nowait(self, payloads: Sequence[bytes]) -> int:
        """:meth:`send_nowait` over ``payloads`` in order, with one window
        update: send the longest prefix the agent's window allows (all of them
        usually) and return its length; the caller sends ``payloads[sent:]``
        with ``await send()``. 0 when anything else waits to send."""
        sw = self._swin
        if self._state is not _OPEN or self._send_lock.locked():
            return 0
        host = self._host
        mx = host.max_send_size
        k = len(payloads)
        nb = sum(map(len, payloads))
        if k > sw.messages or nb > sw.bytes or (nb > mx and max(map(len, payloads)) > mx):
            # only a prefix fits: the same test as send_nowait's, message by message
            m, b, k, nb = sw.messages, sw.bytes, 0, 0
            for p in payloads:
                n = len(p)
                if m < 1 or n > b or n > mx:
                    break
                m -= 1
                b -= n
                k += 1
                nb += n
            if not k:
                return 0
            payloads = payloads[:k]
        sw.messages -= k
        sw.bytes -= nb
        st = host.stats
        st.messages_out += k
        st.bytes_out += nb
        q = self.queue
        cid = self.conn_id
        direct = host._direct_many[q]
        if direct is not None and not host._outboxes[q].items and direct(cid, payloads, nb):
            return k  # all queued on the link (AsyncLink.try_send_many)
        # the link pushes back (or something is queued before): all of them,
        # in order, through the writer task (Host._send_data's slow path)
        host._send_ctl_many(q, [P.Data(cid, p, 0) for p in payloads])
        return k

    def _consumed_inline(self, n: int, count: int = 1) -> None:
        # on_consumed for ``count`` messages (``n`` bytes) the hook finished,
        # by inline_grant_rule (once per run)
        w = self._rwin
        w.buffered_messages -= count
        w.buffered_bytes -= n
        pm = w.pending_messages = w.pending_messages + count
        pb = w.pending_bytes = w.pending_bytes + n
        rule = inline_grant_rule(pm, pb, w.window_messages, w.window_bytes,
                                 w.outstanding_messages, w.outstanding_bytes,
                                 w.max_message_size)
        if rule is GRANT_NOW:
            self._grant_pending()
        elif rule is GRANT_LATER:
            host = self._host
            host._credit_dirty.add(self)
            if host._credit_timer is None:
                host._start_credit_timer()

    def _grant_pending(self) -> None:
        """Grant everything pending now (one CREDIT), if anything is."""
        m, b = self._rwin.take_pending()
        if m or b:
            self._host._send_credit(self.queue, self.conn_id, m, b)

    # -- internals ----------------------------------------------------------------

    def _check_can_send(self) -> None:
        st = self._state
        if st in (ConnState.CLOSING, ConnState.CLOSED):
            raise ConnectionClosedError(f"connection {self.conn_id:#x} was closed")
        if st is ConnState.BROKEN:
            raise self._broken_error()
        if st is ConnState.PEER_CLOSED:
            raise self._broken_error()

    def _broken_error(self) -> ConnectionBrokenError:
        code, text = self._cause or ("unknown", "")
        return broken(f"connection {self.conn_id:#x}", code, text)

    def _wake_rx(self) -> None:
        w = self._rx_waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _wake_tx(self) -> None:
        w = self._send_waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _finish(self, *, closed: bool) -> None:
        if closed and self._state is not ConnState.CLOSED:
            self._state = ConnState.CLOSED
        self._host._forget(self)
        if not self._done.done():
            self._done.set_result(None)
        if not self._opened.done():
            self._opened.set_result(None)
        if closed:
            self._rx.clear()
        self._wake_rx()
        self._wake_tx()

    def _event(self, event: ConnEvent, msg: P.Message | None = None, *,
               cause: tuple[str, str] | None = None) -> None:
        """Run one lifecycle step: look the pair up, apply the action."""
        action, nxt = transition(self._state, event)
        self._state = nxt
        host = self._host
        if action is Action.NONE or action is Action.IGNORE:
            return
        if action is Action.DELIVER:
            assert isinstance(msg, P.Data)
            self._deliver(msg)
        elif action is Action.ADD_CREDIT:
            assert isinstance(msg, P.Credit)
            self._add_credit(msg)
        elif action is Action.OPENED:
            if not self._opened.done():
                self._opened.set_result(None)
        elif action is Action.SEND_CLOSE:
            host._send_ctl(self.queue, P.Close(self.conn_id))
            self._rx.clear()
            self._wake_rx()
            self._wake_tx()
        elif action is Action.HALF_EOF:
            host.stats.peer_half_closes += 1
            self._wake_rx()
        elif action is Action.EOF:
            self._cause = cause
            host._count_close(cause)
            self._wake_rx()
            self._wake_tx()
        elif action in (Action.BREAK, Action.BREAK_AND_CLOSE, Action.CONNECT_FAILED):
            self._cause = cause
            host._count_close(cause)
            host.stats.connections_broken += 1
            if action is Action.BREAK_AND_CLOSE:
                host._send_ctl(self.queue, P.Close(self.conn_id, abort=True))
            self._finish(closed=False)
        elif action is Action.FORGET:
            host.stats.connections_closed += 1
            self._finish(closed=True)
        elif action is Action.DROP:
            host.stats.dropped_while_closing += 1
        elif action is Action.PROTOCOL_ERROR:
            host.stats.protocol_errors += 1
            log.debug("connection %#x: %s in state %s ignored", self.conn_id, event.value,
                      self._state.value)

    def _add_credit(self, msg: P.Credit) -> None:
        host = self._host
        host.stats.credits_received += 1
        try:
            self._swin.grant(msg.messages, msg.bytes)
        except FlowControlError as exc:
            host.stats.protocol_errors += 1
            log.warning("connection %#x: bad CREDIT from the agent: %s", self.conn_id, exc)
        w = self._send_waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _deliver(self, d: P.Data) -> None:
        self._deliver_payload(d.payload, d.header_length)

    def _deliver_payload(self, payload: bytes | bytearray | memoryview, header_length: int) -> None:
        n = len(payload)
        # contract: the agent stays within the window the host granted (§5.3)
        w = self._rwin
        if w.outstanding_messages < 1 or n > w.outstanding_bytes or n > w.max_message_size:
            try:
                w.on_received(n)  # raises: the agent overran its window
            except FlowControlError as exc:
                self._host.stats.credit_violations += 1
                self._event(ConnEvent.OVERRUN, cause=(exc.reason, str(exc)))
                return
        else:  # ReceiveWindow.on_received, inline
            w.outstanding_messages -= 1
            w.outstanding_bytes -= n
            w.buffered_messages += 1
            w.buffered_bytes += n
        hook = self._hook
        if (hook is not None and self._rx_waiter is not None and not self._rx
                and not header_length):
            if not isinstance(payload, bytes):
                payload = bytes(payload)  # the link's are bytes already
            st = self._host.stats
            st.messages_in += 1
            st.bytes_in += n
            r = hook(payload)
            if r == HOOK_DONE:
                self._consumed_inline(n)
                return
            if r == HOOK_OWNED:
                return
            st.messages_in -= 1
            st.bytes_in -= n
        if header_length:
            mv = memoryview(payload)
            m = Message(bytes(mv[header_length:]), bytes(mv[:header_length]))
        else:
            m = Message(bytes(payload))
        self._host.stats.messages_in += 1
        self._host.stats.bytes_in += n
        self._rx.append(m)
        self._wake_rx()

    def _deliver_run(self, payloads: list[bytes]) -> None:
        """A run of headerless DATA (two or more, in order) for an OPEN
        connection, from :meth:`Host._on_batch`: one window check and update,
        one batch hook call, one credit update, one queue extend."""
        hook = self._batch_hook
        k = len(payloads)
        nb = sum(map(len, payloads))
        w = self._rwin
        # contract: the agent stays within the window the host granted (§5.3);
        # a run that would overrun it goes message by message, so the same
        # message breaks the connection as without runs (and so does a run
        # for a message hook without a batch hook)
        if (k > w.outstanding_messages or nb > w.outstanding_bytes
                or (hook is None and self._hook is not None)
                or (nb > w.max_message_size
                    and max(map(len, payloads)) > w.max_message_size)):
            self._deliver_each(payloads)
            return
        w.outstanding_messages -= k
        w.outstanding_bytes -= nb
        w.buffered_messages += k
        w.buffered_bytes += nb
        st = self._host.stats
        st.messages_in += k
        st.bytes_in += nb
        if hook is None or self._rx_waiter is None or self._rx:
            self._rx.extend(map(Message, payloads))
            self._wake_rx()
            return
        self._after_hook(payloads, nb, *hook(payloads))

    def _run_tail(self, finish: RunFinish, payloads: list[bytes], nb: int, replies: list[bytes],
                  stop: int) -> None:
        """The run engine's way back to Python: the run (``nb`` bytes) went
        through :meth:`_deliver_run` up to the batch hook's dispatch, which
        gave ``(replies, stop)``; finish it as the hook (``finish``: its
        :attr:`RunSpec.finish`) and :meth:`_deliver_run` do - one statement
        of the rules for both paths."""
        self._after_hook(payloads, nb, *finish(payloads, replies, stop))

    def _after_hook(self, payloads: list[bytes], nb: int, taken: int, owned: int,
                    owned_bytes: int) -> None:
        # _deliver_run after its batch hook answered (taken, owned, owned_bytes)
        k = len(payloads)
        if taken:
            done = taken - owned
            if done:
                tb = nb if taken == k else sum(map(len, payloads[:taken]))
                self._consumed_inline(tb - owned_bytes, done)
            if taken == k:
                return
            payloads = payloads[taken:]
        if self._state is _OPEN:
            self._rx.extend(map(Message, payloads))
            self._wake_rx()
            return
        # the hook closed the connection: the rest meets the state table, as
        # each would have without runs
        st = self._host.stats
        st.messages_in -= len(payloads)
        st.bytes_in -= sum(map(len, payloads))
        for p in payloads:
            self._event(ConnEvent.DATA, P.Data(self.conn_id, p))

    def _deliver_each(self, payloads: list[bytes]) -> None:
        # a run, message by message, as Host._on_batch delivers single messages
        for p in payloads:
            if self._state is _OPEN:
                self._deliver_payload(p, 0)
            else:
                self._host._on_message(self.queue, P.Data(self.conn_id, p))


class OffloadListener:
    """A TCP listener in the agent (a ``MessageListener``): ``accept()`` returns
    :class:`OffloadConnection` objects. ``port`` is the bound port."""

    def __init__(self, host: Host, listener_id: int, bind: str, port: int, framer: str,
                 tls: tuple[str, str] | None, auto_consume: bool) -> None:
        self._host = host
        self.listener_id = listener_id
        self.bind = bind
        self.requested_port = port
        self.port = port
        self.framer = framer
        self.tls = tls
        self.auto_consume = auto_consume
        self._backlog: collections.deque[OffloadConnection] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._lost: tuple[str, str] | None = None

    @property
    def address(self) -> tuple[str, int]:
        return self.bind, self.port

    def __repr__(self) -> str:
        return f"<OffloadListener {self.listener_id} {self.bind}:{self.port} {self.framer}>"

    async def accept(self) -> OffloadConnection:
        while True:
            if self._closed:
                raise ListenerClosedError(f"listener {self.listener_id} is closed")
            if self._backlog:
                return self._backlog.popleft()
            if self._lost is not None:
                raise broken(f"listener {self.listener_id}", *self._lost)
            fut = asyncio.get_running_loop().create_future()
            self._waiter = fut
            try:
                await fut
            finally:
                self._waiter = None

    async def close(self) -> None:
        """Stop accepting: connections still in the backlog are closed; the
        agent's TCP listener is released when the host closes (the transport
        has no unlisten message), and new clients are refused meanwhile."""
        if self._closed:
            return
        self._closed = True
        self._host._listeners.pop(self.listener_id, None)
        pending = list(self._backlog)
        self._backlog.clear()
        self._wake()
        for c in pending:
            c._event(ConnEvent.LOCAL_CLOSE)

    async def __aenter__(self) -> OffloadListener:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _offer(self, conn: OffloadConnection) -> bool:
        if self._closed or len(self._backlog) >= self._host.config.accept_backlog:
            return False
        self._backlog.append(conn)
        self._wake()
        return True


# -- the host -------------------------------------------------------------------------


class _Outbox:
    """Messages waiting for one port's writer task (bounded by connection windows)."""

    def __init__(self) -> None:
        self.items: collections.deque[P.Message] = collections.deque()
        self.event = asyncio.Event()


class Host:
    """The host side of the offload link. Use ``async with Host(ports) as host``
    (or ``await host.start()`` / ``await host.close()``).

    ``run_engine``: serve received runs with the C run engine (one call per
    received batch; see :meth:`_on_batch`): None (default) when
    ``mux_rpc._rpcfast`` is built and not forced off (``MUX_RPC_PURE_PYTHON``)
    and every port has ``run_sender()``; False never (the Python chain, the
    reference); True requires it (RuntimeError without)."""

    def __init__(self, ports: Sequence[LinkPort], config: HostConfig | None = None, *,
                 clock: Callable[[], float] = time.monotonic, run_timer: bool = True,
                 run_engine: bool | None = None) -> None:
        if not ports:
            raise ValueError("need at least one port")
        self.config = config or HostConfig()
        self.stats = HostStats()
        self._ports = list(ports)
        self._clock = clock
        self._run_timer = run_timer
        self._outboxes = [_Outbox() for _ in self._ports]
        self._conns: dict[int, OffloadConnection] = {}
        self._listeners: dict[int, OffloadListener] = {}
        self._listen_waits: dict[int, asyncio.Future[P.ListenResult]] = {}
        self._early: collections.OrderedDict[int, list[P.Message]] = collections.OrderedDict()
        # ids of connections gone, the oldest first (bounded); True: close()
        # gave up waiting for the agent's CLOSED, which may still come
        self._forgotten: collections.OrderedDict[int, bool] = collections.OrderedDict()
        self._listener_ids = itertools.count(1)
        self._host_conn_ids = itertools.count(HOST_CONN_ID_BASE)
        self._tasks: list[asyncio.Task[None]] = []
        self._agent_hello: P.Hello | None = None
        self._managed = all(getattr(p, "link_managed", False) for p in self._ports)
        self._hello_event: asyncio.Event | None = None
        #: the host's session, in the HELLOs of ports that are not link-managed
        self.session = new_session()
        #: the agent session each queue's HELLO named (0: none yet), and the
        #: queues that said HELLO anew since the last counted restart
        self._agent_sessions = [0] * len(self._ports)
        self._restarted_queues: set[int] = set()
        # §5: until the agent's HELLO (no connection exists before it), one message
        self._agent_window = (1, self.config.max_message_size)
        self._announce_window()
        self.max_send_size = self.config.max_message_size
        self._lost: tuple[str, str] | None = None
        self._closed = False
        now = clock()
        self._last_rx = now
        self._last_tx = [now] * len(self._ports)
        # the batch fast path: DATA straight to the link when nothing is queued
        # before it, and consumed credit granted late (HostConfig.credit_delay)
        self._direct: list[Callable[[int, bytes, int], bool] | None] = []
        self._direct_credit: list[Callable[[int, int, int], bool] | None] = []
        self._direct_many: list[Callable[[int, Sequence[bytes], int], int] | None] = []
        for p in self._ports:
            senders = getattr(p, "direct_senders", None)
            d, c, m = senders() if senders is not None else (None, None, None)
            self._direct.append(d)
            self._direct_credit.append(c)
            self._direct_many.append(m)
        self._credit_dirty: set[OffloadConnection] = set()
        self._credit_timer: asyncio.TimerHandle | None = None
        # the run engine (mux_rpc/_rpcfast.c): each received batch's runs on
        # the fast path in C, one call per batch; the rest in _on_batch's loop
        self._engine: Callable[[int, list[Any]], list[Any]] | None = None
        self._run_engine: Any = None
        senders = [getattr(p, "run_sender", None) for p in self._ports]
        if run_engine is None:
            run_engine = _rpcfast is not None and all(s is not None for s in senders)
        if run_engine:
            if _rpcfast is None or not all(s is not None for s in senders):
                raise RuntimeError("the run engine needs mux_rpc._rpcfast (scripts/setup.sh, "
                                   "MUX_RPC_PURE_PYTHON unset) and ports with run_sender()")
            self._run_engine = _rpcfast.RunEngine(
                self, [s() for s in senders if s is not None], _OPEN, P.Credit,
                (P.Data, P.Closed, P.Eof, P.Connected, P.Error, P.NewConnection),
                (P.Keepalive,))
            self._engine = self._run_engine.run

    def _announce_window(self) -> None:
        """Managed links announce the window in their HELLO (§3.1): make it
        HostConfig's, or fail clearly if a HELLO with another one went out."""
        want = (self.config.window_messages, self.config.window_bytes)
        for port in self._ports:
            announced = getattr(port, "local_window", None)
            if announced is None or announced() == want:
                continue
            try:
                port.set_local_window(*want)  # type: ignore[attr-defined]
            except (RuntimeError, AttributeError):
                raise ValueError(
                    f"the link announced a window of {announced()} (messages, bytes) but "
                    f"HostConfig grants {want}: build the ports with link_port(..., "
                    "window_messages=, window_bytes=) from the same HostConfig") from None

    # -- lifecycle ----------------------------------------------------------------
    @property
    def queues(self) -> int:
        return len(self._ports)

    @property
    def agent_hello(self) -> P.Hello | None:
        return self._agent_hello

    @property
    def link_lost(self) -> bool:
        return self._lost is not None

    async def start(self) -> Host:
        """Send HELLO on every queue, start the port tasks, wait for the agent's HELLO."""
        loop = asyncio.get_running_loop()
        self._hello_event = asyncio.Event()
        for q, port in enumerate(self._ports):
            set_receiver = getattr(port, "set_receiver", None)
            if set_receiver is not None:
                # batches are handled on the link's read callback (no task
                # hop); the reader task then only notices the link's end
                set_receiver(self._receiver(q))
            self._tasks.append(loop.create_task(self._reader(q, port), name=f"host-rx-{q}"))
            self._tasks.append(loop.create_task(self._writer(q, port), name=f"host-tx-{q}"))
        if self._run_timer:
            self._tasks.append(loop.create_task(self._timer(), name="host-timer"))
        if not self._managed:
            self._send_hello()  # a managed link sent its HELLO when it was built
        try:
            await asyncio.wait_for(self._wait_hello(), self.config.hello_timeout)
        except TimeoutError:
            await self.close()
            raise LinkLostError(f"no HELLO from the agent within {self.config.hello_timeout} s",
                                "link_lost") from None
        return self

    async def _wait_hello(self) -> None:
        assert self._hello_event is not None
        await self._hello_event.wait()  # set by _on_hello (in-band on every kind of port)

    async def close(self) -> None:
        """Close every connection (best effort: CLOSE sent), stop the tasks, close ports."""
        if self._closed:
            return
        self._closed = True
        self._stop_credit_timer()
        for conn in list(self._conns.values()):
            conn._event(ConnEvent.LOCAL_CLOSE)
            conn._finish(closed=True)
        for lst in list(self._listeners.values()):
            await lst.close()
        # let the writers hand the CLOSEs to the links (bounded), then flush
        for ob in self._outboxes:
            ob.event.set()
        for _ in range(100):
            await asyncio.sleep(0)
            if not any(ob.items for ob in self._outboxes) or self._lost is not None:
                break
        for t in self._tasks:
            t.cancel()
        # their outcome no longer matters: they were cancelled on purpose
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for port in self._ports:
            try:
                await port.aclose()
            except Exception as exc:  # noqa: BLE001 - teardown goes on, reported
                log.warning("closing port: %s", exc)

    async def abort(self) -> None:
        """Drop everything without telling the agent (as a crash would): no
        CLOSE is sent. For tests of the agent's restart handling."""
        if self._closed:
            return
        self._closed = True
        self._stop_credit_timer()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for conn in list(self._conns.values()):
            conn._cause = ("host_aborted", "")
            conn._state = ConnState.CLOSED
            conn._finish(closed=True)
        for port in self._ports:
            with contextlib.suppress(Exception):
                await port.aclose()

    async def __aenter__(self) -> Host:
        if not self._tasks:
            await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- requests ------------------------------------------------------------------
    async def listen(self, port: int = 0, framer: str = "length", *, bind: str = "127.0.0.1",
                     tls: tuple[str, str] | None = None,
                     auto_consume: bool = False) -> OffloadListener:
        """Ask the agent to listen on ``bind:port`` (0 = any) with ``framer``.

        ``tls`` is ``(certfile, keyfile)`` paths on the agent's machine, or None.
        ``auto_consume``: connections return credit as soon as ``recv`` returns.
        Raises :class:`OffloadRequestError` if the agent refuses."""
        self._check_usable()
        lid = next(self._listener_ids)
        lst = OffloadListener(self, lid, bind, port, framer, tls, auto_consume)
        result = await self._request_listen(lst)
        if result.status != P.Status.OK:
            raise OffloadRequestError(f"agent refused LISTEN {bind}:{port} {framer!r}: "
                                      f"{reason_code(result.status)} {result.text}")
        lst.port = result.port
        self._listeners[lid] = lst
        return lst

    async def _request_listen(self, lst: OffloadListener) -> P.ListenResult:
        fut: asyncio.Future[P.ListenResult] = asyncio.get_running_loop().create_future()
        self._listen_waits[lst.listener_id] = fut
        cert, key = lst.tls or ("", "")
        self._send_ctl(0, P.Listen(lst.listener_id, lst.bind, lst.requested_port, lst.framer,
                                   lst.tls is not None, cert, key))
        try:
            return await asyncio.wait_for(fut, self.config.request_timeout)
        except TimeoutError:
            raise OffloadRequestError(
                f"no LISTEN_RESULT within {self.config.request_timeout} s") from None
        finally:
            self._listen_waits.pop(lst.listener_id, None)

    async def connect(self, address: tuple[str, int], framer: str = "length", *,
                      auto_consume: bool = False) -> OffloadConnection:
        """Have the agent open a TCP connection to ``address`` with ``framer``."""
        self._check_usable()
        cid = next(self._host_conn_ids)
        conn = OffloadConnection(self, cid, (address[0], address[1]), framer,
                                 ConnState.CONNECTING, auto_consume=auto_consume)
        self._conns[cid] = conn
        self._send_ctl(conn.queue, P.Connect(cid, address[0], address[1], framer))
        try:
            await asyncio.wait_for(asyncio.shield(conn._opened), self.config.request_timeout)
        except TimeoutError:
            conn._event(ConnEvent.LOCAL_CLOSE)
            raise OffloadRequestError(f"no CONNECTED within {self.config.request_timeout} s") \
                from None
        if conn.state is ConnState.OPEN or conn.state is ConnState.HALF_CLOSED:
            self.stats.connections_connected += 1
            return conn
        if conn.state is ConnState.BROKEN:
            code, text = conn._cause or ("unknown", "")
            if code in ("link_lost", "peer_restarted"):
                raise conn._broken_error()
            raise OffloadRequestError(f"connect to {address[0]}:{address[1]} failed: "
                                      f"{code} {text}") from conn._broken_error()
        raise ConnectionClosedError(f"connection {cid:#x} was closed")

    def _check_usable(self) -> None:
        if self._closed:
            raise ConnectionClosedError("host is closed")
        if self._lost is not None:
            raise broken("link to the agent", *self._lost)
        if self._agent_hello is None:
            raise RuntimeError("Host.start() has not completed")

    # -- timers ---------------------------------------------------------------------
    def tick(self, now: float | None = None) -> None:
        """Keepalive duty at time ``now``: send KEEPALIVE on idle queues, declare
        the link lost when the agent has been silent for ``keepalive_timeout``."""
        if now is None:
            now = self._clock()
        if self._managed:
            lost = False
            for port in self._ports:
                lost = port.tick(now) or lost
            if lost and self._lost is None and self._agent_hello is not None:
                self._link_lost("link_lost", "keepalive expired: nothing from the agent for "
                                             f"{self.config.keepalive_timeout:.1f} s")
            return
        if self._lost is None and self._agent_hello is not None \
                and now - self._last_rx > self.config.keepalive_timeout:
            self._link_lost("link_lost", f"nothing from the agent for "
                                         f"{now - self._last_rx:.1f} s")
            return
        for q in range(len(self._ports)):
            if now - self._last_tx[q] >= self.config.keepalive_interval:
                self._send_ctl(q, P.Keepalive())

    async def _timer(self) -> None:
        while True:
            await asyncio.sleep(self.config.tick_interval)
            self.tick(self._clock())

    # -- sending ----------------------------------------------------------------------
    def _send_ctl(self, q: int, msg: P.Message) -> None:
        ob = self._outboxes[q]
        ob.items.append(msg)
        ob.event.set()
        self._last_tx[q] = self._clock()

    def _send_ctl_many(self, q: int, msgs: list[P.Message]) -> None:
        # _send_ctl for several messages, in order
        ob = self._outboxes[q]
        ob.items.extend(msgs)
        ob.event.set()
        self._last_tx[q] = self._clock()

    def _send_data(self, conn: OffloadConnection, body: bytes, header_length: int, n: int) -> None:
        st = self.stats
        st.messages_out += 1
        st.bytes_out += n
        q = conn.queue
        direct = self._direct[q]
        if direct is not None and not self._outboxes[q].items \
                and direct(conn.conn_id, body, header_length):
            return  # nothing queued before it: order kept
        self._send_ctl(q, P.Data(conn.conn_id, body, header_length))

    def _send_credit(self, q: int, conn_id: int, messages: int, nbytes: int) -> None:
        self.stats.credits_sent += 1
        direct = self._direct_credit[q]
        if direct is not None and not self._outboxes[q].items \
                and direct(conn_id, messages, nbytes):
            return  # nothing queued before it: order kept
        self._send_ctl(q, P.Credit(conn_id, messages, nbytes))

    def _start_credit_timer(self) -> None:
        # credit held back in _credit_dirty goes after HostConfig.credit_delay
        self._credit_timer = asyncio.get_running_loop().call_later(
            self.config.credit_delay, self._credit_sweep)

    def _stop_credit_timer(self) -> None:
        if self._credit_timer is not None:
            self._credit_timer.cancel()
            self._credit_timer = None
        self._credit_dirty.clear()

    def _credit_sweep(self) -> None:
        """Grant what inline-served connections consumed and still hold back."""
        self._credit_timer = None
        dirty = self._credit_dirty
        self._credit_dirty = set()
        for conn in dirty:
            if conn._state is ConnState.OPEN and conn._rwin.buffered_messages == 0:
                conn._grant_pending()
            # else: recv() holds messages; their on_consumed grants all pending

    def _send_hello(self) -> None:
        """Ports that are not link-managed: our HELLO, acknowledging the agent's."""
        peer = self._agent_hello.session if self._agent_hello is not None else 0
        for q in range(len(self._ports)):
            self._send_ctl(q, _make_hello(self.config, self.session, peer))

    async def _writer(self, q: int, port: LinkPort) -> None:
        ob = self._outboxes[q]
        while True:
            await ob.event.wait()
            ob.event.clear()
            while ob.items:
                batch = list(itertools.islice(ob.items, 0, 256))
                for _ in range(len(batch)):
                    ob.items.popleft()
                try:
                    await port.send(batch)
                except (OSError, EOFError) as exc:
                    self._link_lost("link_lost", f"send failed: {exc}")
                    return

    # -- receiving ----------------------------------------------------------------------
    async def _reader(self, q: int, port: LinkPort) -> None:
        while True:
            try:
                msgs = await port.recv()
            except (OSError, EOFError) as exc:
                self._link_lost("link_lost", f"link closed: {exc}")
                return
            self._on_batch(q, msgs)

    def _receiver(self, q: int) -> Callable[[list[Any]], None]:
        """What handles queue ``q``'s batches on the link's read callback:
        ``_on_batch`` - in C when the run engine is this host's own
        (``RunEngine.receiver``: no Python frame per batch)."""
        run_engine = self._run_engine
        if run_engine is not None and self._engine == run_engine.run:
            return run_engine.receiver(q)  # type: ignore[no-any-return]
        return functools.partial(self._on_batch, q)

    def _on_batch(self, q: int, msgs: Sequence[P.Message | RawRun]) -> None:
        """One received batch of queue ``q``: from the reader task, or straight
        from the link's read callback when the port takes a receiver (then,
        with the run engine, its C twin: ``RunEngine.receiver(q)``)."""
        if self._closed:
            return
        self._last_rx = self._clock()
        engine = self._engine
        if engine is not None:
            # every run on the fast path handled in C; the rest, in order, below
            left: Any = engine(q, msgs)  # type: ignore[arg-type]
            if self._credit_dirty and self._credit_timer is None:
                self._start_credit_timer()  # the engine held credit back (_consumed_inline)
            if left.__class__ is tuple or left:
                self._on_batch_left(q, left)
            return
        self._on_batch_loop(q, msgs)

    def _on_batch_left(self, q: int, left: Any) -> None:
        """What the run engine left of a batch (a list), in order; or
        ``(left, exc)``: an exception that is not an Exception (it passes
        the loop's excepts) stopped the engine - what it left before it goes
        through the loop, as in the chain, then it propagates."""
        stopped: BaseException | None = None
        if left.__class__ is tuple:
            left, stopped = left
        if left:
            self._on_batch_loop(q, left)
        if stopped is not None:
            raise stopped

    def _on_batch_loop(self, q: int, msgs: Sequence[P.Message | RawRun]) -> None:
        # the batch: DATA for OPEN connections (_on_message's hot path) inline;
        # a run of consecutive raw DATA of one connection (the link groups
        # them: Link.raw_runs) in one call (_deliver_run): per connection,
        # order with every other message is kept
        get_conn = self._conns.get
        for m in msgs:
            if type(m) is tuple:
                cid, run = m
                try:
                    conn = get_conn(cid)
                    if conn is not None and conn._state is _OPEN:
                        if len(run) == 1:
                            conn._deliver_payload(run[0], 0)
                        else:
                            conn._deliver_run(run)
                    else:
                        self._deliver_run(q, cid, run)
                except Exception:  # a bug in one run's handling must not kill the link
                    self._data_failed(cid)
                continue
            try:
                if m.__class__ is _Data:
                    conn = get_conn(m.conn_id)
                    if conn is not None and conn._state is _OPEN:
                        conn._deliver(m)
                        continue
                self._on_message(q, m)  # type: ignore[arg-type]
            except Exception:  # a bug in one message's handling must not kill the link
                self._message_failed(m)

    def _message_failed(self, m: object) -> None:
        self.stats.protocol_errors += 1
        log.exception("handling %r", m)

    def _outbox_runs(self, q: int, runs: Sequence[tuple[int, Sequence[bytes]]],
                     credits: Sequence[tuple[int, int, int]]) -> None:
        """The run engine's output when the link pushed back: the same
        messages, in order, through the writer task (the slow paths of
        ``send_many_nowait`` and ``_send_credit``)."""
        msgs: list[P.Message] = [P.Data(cid, p, 0) for cid, payloads in runs for p in payloads]
        msgs += [P.Credit(cid, m, b) for cid, m, b in credits]
        self._send_ctl_many(q, msgs)

    def _data_failed(self, cid: int) -> None:
        self.stats.protocol_errors += 1
        log.exception("handling DATA of connection %#x", cid)

    def _deliver_run(self, q: int, cid: int, run: list[bytes]) -> None:
        """A run of raw DATA payloads for a connection that is not OPEN (or
        unknown): each through the state table, as without runs."""
        for payload in run:
            try:
                self._on_message(q, P.Data(cid, payload))
            except Exception:  # a bug in one message's handling must not kill the link
                self._data_failed(cid)

    def _on_message(self, q: int, m: P.Message) -> None:
        if m.__class__ is P.Data:
            conn = self._conns.get(m.conn_id)
            if conn is not None and conn._state is ConnState.OPEN:
                # hot path, the table's (OPEN, DATA) -> (DELIVER, OPEN) (a test pins it)
                conn._deliver(m)
            else:
                self._to_conn(m, ConnEvent.DATA)
        elif m.__class__ is P.Credit:
            assert isinstance(m, P.Credit)
            conn = self._conns.get(m.conn_id)
            if conn is not None and conn._state is ConnState.OPEN:
                # hot path, the table's (OPEN, CREDIT) -> (ADD_CREDIT, OPEN) (a test pins it)
                conn._add_credit(m)
            else:
                self._to_conn(m, ConnEvent.CREDIT)
        elif isinstance(m, P.Closed):
            code = reason_code(m.reason)
            if m.reason == P.Status.LOCAL_CLOSE:
                ev = ConnEvent.CLOSED_ACK
            elif m.reason == P.Status.PEER_CLOSED:
                ev = ConnEvent.PEER_EOF
            else:
                ev = ConnEvent.PEER_ERROR
            self._to_conn(m, ev, cause=(code, m.text))
        elif isinstance(m, P.Eof):
            self._to_conn(m, ConnEvent.PEER_HALF_CLOSE)
        elif isinstance(m, P.NewConnection):
            self._on_new_connection(m)
        elif isinstance(m, P.Connected):
            ok = m.status == P.Status.OK
            self._to_conn(m, ConnEvent.CONNECTED_OK if ok else ConnEvent.CONNECTED_FAIL,
                          cause=None if ok else (reason_code(m.status), m.text))
        elif isinstance(m, P.ListenResult):
            fut = self._listen_waits.get(m.listener_id)
            if fut is not None and not fut.done():
                fut.set_result(m)
            elif m.status != P.Status.OK and m.listener_id in self._listeners:
                # a re-LISTEN after an agent restart failed: the listener is gone
                lst = self._listeners[m.listener_id]
                lst._lost = (reason_code(m.status), m.text)
                lst._wake()
        elif isinstance(m, P.Hello):
            self._on_hello(q, m)
        elif isinstance(m, P.Keepalive):
            pass
        elif isinstance(m, P.Error):
            self.stats.agent_errors += 1
            log.warning("agent error (conn %#x): %s %s", m.conn_id, reason_code(m.code), m.text)
            if m.conn_id and m.conn_id in self._conns:
                self._conns[m.conn_id]._event(ConnEvent.PEER_ERROR,
                                              cause=(reason_code(m.code), m.text))
        else:
            self.stats.protocol_errors += 1

    def _to_conn(self, m: P.Message, ev: ConnEvent, *,
                 cause: tuple[str, str] | None = None) -> None:
        conn = self._conns.get(m.conn_id)
        if conn is not None:
            conn._event(ev, m, cause=cause)
            return
        if m.conn_id in self._forgotten or m.conn_id >= HOST_CONN_ID_BASE:
            if m.__class__ is P.Closed and self._forgotten.get(m.conn_id):
                self._forgotten[m.conn_id] = False
                self.stats.late_closed += 1
                return
            self.stats.unknown_conn += 1
            return
        # the NEW_CONNECTION may still be on its way on queue 0: keep (bounded)
        self._stash_early(m)

    def _stash_early(self, m: P.Message) -> None:
        lst = self._early.get(m.conn_id)
        if lst is None:
            if len(self._early) >= self.config.max_early_connections:
                _, dropped = self._early.popitem(last=False)
                self.stats.early_dropped += len(dropped)
            lst = self._early[m.conn_id] = []
        if len(lst) > self.config.window_messages + 2:
            self.stats.early_dropped += 1
            return
        lst.append(m)

    def _on_new_connection(self, m: P.NewConnection) -> None:
        lst = self._listeners.get(m.listener_id)
        early = self._early.pop(m.conn_id, [])
        if m.conn_id in self._conns:
            self.stats.protocol_errors += 1
            return
        conn = OffloadConnection(self, m.conn_id, (m.peer_host, m.peer_port),
                                 lst.framer if lst else "", ConnState.OPEN,
                                 auto_consume=lst.auto_consume if lst else False)
        self._conns[m.conn_id] = conn
        for e in early:
            self._on_message(conn.queue, e)
        if conn.state not in (ConnState.OPEN, ConnState.HALF_CLOSED, ConnState.PEER_CLOSED):
            return  # broken before anyone saw it
        if lst is None or not lst._offer(conn):
            self.stats.backlog_overflow += 1
            conn._event(ConnEvent.LOCAL_CLOSE)
            return
        self.stats.connections_accepted += 1

    def _on_hello(self, q: int, m: P.Hello) -> None:
        """The agent's HELLO on queue ``q`` (managed links: the first of each session)."""
        if m.role != P.Role.AGENT:
            self.stats.protocol_errors += 1
            return
        known = self._agent_sessions[q]
        if m.session == known:
            # a resend (ports that are not link-managed): answer one that has not seen ours
            if not self._managed and m.peer_session != self.session:
                self._send_hello()
            return
        self._agent_sessions[q] = m.session
        prev = self._agent_hello
        self._agent_hello = m
        # §5: the agent's window and largest message bound what we send it
        self._agent_window = (m.window_messages, m.window_bytes)
        self.max_send_size = min(self.config.max_message_size, m.max_message_size)
        if not self._managed:
            self._send_hello()  # acknowledges the agent's session (§3.1.2)
        if prev is None:
            if self._hello_event is not None:
                self._hello_event.set()
            return
        if known == 0:
            return  # another queue's first HELLO
        # §3.1.4: a new session on a queue: the agent restarted (or came back after a
        # lost link); it says HELLO anew on every queue: handle it once
        if self._restarted_queues and q not in self._restarted_queues:
            self._restarted_queues.add(q)
            return
        self._restarted_queues = {q}
        self.stats.peer_restarts += 1
        was_lost = self._lost is not None
        self._lost = None
        if not was_lost:
            self._break_all("peer_restarted", "the agent restarted (a new session)")
        for lst in list(self._listeners.values()):
            lst._lost = None
            cert, key = lst.tls or ("", "")
            self._send_ctl(0, P.Listen(lst.listener_id, lst.bind, lst.port, lst.framer,
                                       lst.tls is not None, cert, key))

    def _link_lost(self, code: str, text: str) -> None:
        if self._lost is not None or self._closed:
            return
        self.stats.links_lost += 1
        log.warning("link to the agent lost: %s", text)
        self._lost = (code, text)
        self._break_all(code, text)
        for lst in self._listeners.values():
            lst._lost = (code, text)
            lst._wake()

    def _break_all(self, code: str, text: str) -> None:
        self._early.clear()
        for fut in self._listen_waits.values():
            if not fut.done():
                fut.set_exception(broken("LISTEN", code, text))
        for conn in list(self._conns.values()):
            conn._event(ConnEvent.LINK_LOST, cause=(code, text))
            if conn._state is ConnState.PEER_CLOSED:
                self._forget(conn)

    def _forget(self, conn: OffloadConnection) -> None:
        if self._conns.get(conn.conn_id) is conn:
            del self._conns[conn.conn_id]
            self._forgotten[conn.conn_id] = False
            if len(self._forgotten) > 65536:
                self._forgotten.popitem(last=False)

    def _expect_late_closed(self, conn_id: int) -> None:
        """``close()`` of ``conn_id`` stopped waiting for the agent's CLOSED:
        when it comes it is counted in ``stats.late_closed``, once."""
        if conn_id in self._forgotten:
            self._forgotten[conn_id] = True

    def _count_close(self, cause: tuple[str, str] | None) -> None:
        code = cause[0] if cause else "unknown"
        self.stats.close_reasons[code] = self.stats.close_reasons.get(code, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        """Counters and state, for ``mux-rpc stats``."""
        from dataclasses import asdict

        return {
            "role": "host",
            "queues": len(self._ports),
            "connections_open": len(self._conns),
            "listeners": {lid: f"{l.bind}:{l.port} {l.framer}" for lid, l in
                          self._listeners.items()},
            "link_lost": self._lost[0] if self._lost else None,
            **asdict(self.stats),
        }


_Data = P.Data
_OPEN = ConnState.OPEN

def _make_hello(cfg: HostConfig, session: int, peer_session: int) -> P.Hello:
    # the initial per-connection window the host grants the agent (§3.1, §5)
    return P.Hello(P.Role.HOST, keepalive_interval_ms=int(cfg.keepalive_interval * 1000),
                   max_message_size=cfg.max_message_size, session=session,
                   peer_session=peer_session, window_messages=cfg.window_messages,
                   window_bytes=cfg.window_bytes)


Callback = Callable[..., Awaitable[None]]
