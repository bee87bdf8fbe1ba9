"""In-memory message connections for tests (like trio's ``memory_stream_pair``).

:func:`memory_connection_pair` gives two connected :class:`MemoryConnection`
ends; :class:`MemoryListener` hands out server ends to ``accept()`` for each
``connect()``. Each direction has a credit window the way the agent enforces
one: a sender waits while the receiver holds ``window_messages`` messages (or
``window_bytes`` bytes) it has not yet reported with ``on_consumed``. The
client end made by ``connect()`` reports consumption itself on ``recv()``; the
server end leaves it to the runtime, so tests can observe credit returning.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque

from ._conn import ConnectionClosedError, ListenerClosedError, Message, MessageConnection

__all__ = ["MemoryConnection", "MemoryListener", "memory_connection_pair"]

_ids = itertools.count(1)


class _Signal:
    """Wake every waiter on any state change of a connection pair (single loop)."""

    def __init__(self) -> None:
        self._waiters: list[asyncio.Future[None]] = []

    async def wait(self) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        await fut

    def notify_all(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)


class MemoryConnection:
    """One end of an in-memory message connection (a :class:`MessageConnection`)."""

    def __init__(
        self,
        cond: _Signal,
        *,
        conn_id: int,
        peer: tuple[str, int] | None,
        window_messages: int,
        window_bytes: int,
        auto_consume: bool,
    ) -> None:
        self.conn_id = conn_id
        self.peer = peer
        self.window_messages = window_messages
        """Messages this end may hold unconsumed before the peer's send waits."""
        self.window_bytes = window_bytes
        """Bytes this end may hold unconsumed before the peer's send waits."""
        self.auto_consume = auto_consume
        self._cond = cond
        self._inbox: deque[Message] = deque()
        self._unconsumed_messages = 0
        self._unconsumed_bytes = 0
        self._closed = False
        self._other: MemoryConnection | None = None
        self.consumed_messages = 0
        """Messages reported with on_consumed (credit returned) so far."""
        self.consumed_bytes = 0
        """Bytes reported with on_consumed so far."""
        self.received_messages = 0
        """Messages returned by recv() so far."""

    @property
    def other(self) -> MemoryConnection:
        assert self._other is not None
        return self._other

    @property
    def closed(self) -> bool:
        """True once this end called close()."""
        return self._closed

    @property
    def unconsumed(self) -> int:
        """Messages delivered to this end and not yet reported consumed."""
        return self._unconsumed_messages

    def _has_room(self, nbytes: int) -> bool:
        if self._unconsumed_messages >= self.window_messages:
            return False
        # a message larger than the whole byte window may go when nothing is held
        return (self._unconsumed_bytes + nbytes <= self.window_bytes
                or self._unconsumed_messages == 0)

    async def send(self, payload: bytes, *, header: bytes | None = None) -> None:
        msg = Message(bytes(payload), None if header is None else bytes(header))
        other = self.other
        while True:
            if self._closed:
                raise ConnectionClosedError("send on a connection closed locally")
            if other._closed:
                raise ConnectionClosedError("send on a connection closed by the peer")
            if other._has_room(msg.nbytes):
                break
            await self._cond.wait()
        other._inbox.append(msg)
        other._unconsumed_messages += 1
        other._unconsumed_bytes += msg.nbytes
        self._cond.notify_all()

    async def recv(self) -> Message | None:
        while not self._inbox:
            if self._closed:
                raise ConnectionClosedError("recv on a connection closed locally")
            if self.other._closed:
                return None
            await self._cond.wait()
        if self._closed:
            raise ConnectionClosedError("recv on a connection closed locally")
        msg = self._inbox.popleft()
        self.received_messages += 1
        if self.auto_consume:
            self.on_consumed(msg.nbytes)
        return msg

    def on_consumed(self, nbytes: int) -> None:
        if self._unconsumed_messages <= 0:
            raise RuntimeError("on_consumed() called more often than messages were received")
        self._unconsumed_messages -= 1
        self._unconsumed_bytes -= nbytes
        self.consumed_messages += 1
        self.consumed_bytes += nbytes
        self._notify()

    def _notify(self) -> None:
        self._cond.notify_all()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._cond.notify_all()


def memory_connection_pair(
    *,
    window_messages: int = 64,
    window_bytes: int = 1 << 20,
    server_auto_consume: bool = False,
) -> tuple[MemoryConnection, MemoryConnection]:
    """``(client_end, server_end)`` of a new in-memory connection.

    The server end holds at most ``window_messages`` / ``window_bytes`` not
    yet consumed; the client end consumes on ``recv()``."""
    cond = _Signal()
    cid = next(_ids)
    client = MemoryConnection(cond, conn_id=cid, peer=("memory-server", 0),
                              window_messages=1 << 30, window_bytes=1 << 62,
                              auto_consume=True)
    server = MemoryConnection(cond, conn_id=cid, peer=("memory-client", cid),
                              window_messages=window_messages, window_bytes=window_bytes,
                              auto_consume=server_auto_consume)
    client._other = server
    server._other = client
    return client, server


class MemoryListener:
    """A :class:`MessageListener` whose connections come from :meth:`connect`."""

    def __init__(self, *, window_messages: int = 64, window_bytes: int = 1 << 20,
                 backlog: int = 128) -> None:
        self.window_messages = window_messages
        self.window_bytes = window_bytes
        self._pending: asyncio.Queue[MemoryConnection | None] = asyncio.Queue(backlog)
        self._closed = False
        self.server_ends: list[MemoryConnection] = []
        """Every server end handed out, for tests to inspect credit."""

    async def connect(self, *, auto_consume: bool = True) -> MemoryConnection:
        """Open a connection; returns the client end (the server end goes to accept()).

        With ``auto_consume`` (for raw tests) the client end reports each message
        consumed on ``recv()``; pass False when the client end goes to a consumer
        that calls ``on_consumed`` itself (:class:`mux_rpc.MessageClient`)."""
        if self._closed:
            raise ConnectionRefusedError("memory listener is closed")
        client, server = memory_connection_pair(window_messages=self.window_messages,
                                                window_bytes=self.window_bytes)
        client.auto_consume = auto_consume
        self.server_ends.append(server)
        await self._pending.put(server)
        return client

    async def accept(self) -> MessageConnection:
        if self._closed:
            raise ListenerClosedError("memory listener is closed")
        conn = await self._pending.get()
        if conn is None:
            raise ListenerClosedError("memory listener is closed")
        return conn

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._pending.put_nowait(None)  # wake a waiting accept()
        except asyncio.QueueFull:
            pass  # accept() is not waiting: the queue is not empty
