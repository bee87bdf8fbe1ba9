"""What the agent needs of one queue's link, and an in-memory pair for tests.

A *port* is one transport queue as whole transport messages: the agent sends
without ever awaiting (``send`` queues, ``flush`` pushes what is queued onto
the link; the mux flushes once per event-loop iteration), and one reader task
per port awaits ``recv``. :func:`link_port` adapts an xport link; the
:class:`MemoryPort` pair is a direct in-process stand-in used by unit tests.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Protocol, Sequence

from xport import _protocol as P

__all__ = ["AgentPort", "MemoryPort", "memory_port_pair"]


class AgentPort(Protocol):
    """One queue of the link, seen from the agent."""

    def send(self, msg: P.Message) -> None:
        """Queue ``msg`` for the peer, in order. Never blocks."""
        ...

    def flush(self) -> None:
        """Push everything queued onto the link (frames go out now)."""
        ...

    async def recv(self) -> Sequence[P.Message]:
        """The next received messages (at least one). Raises ``EOFError`` or
        ``OSError`` when the link is gone for good."""
        ...

    def close(self) -> None:
        """Release the port. Idempotent."""
        ...


class MemoryPort:
    """One end of an in-memory port pair (messages pass by reference).

    Messages are encoded and decoded on the way (``P.encode``/``P.decode``)
    unless ``codec=False``, so that a test also exercises the wire format.
    """

    def __init__(self, codec: bool = True) -> None:
        self.peer: MemoryPort | None = None
        self._out: list[Any] = []
        self._in: deque[P.Message] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._codec = codec
        self.sent = 0
        self.flushes = 0

    def send(self, msg: P.Message) -> None:
        if self._closed:
            raise EOFError("port closed")
        self._out.append(P.encode(msg) if self._codec else msg)
        self.sent += 1

    def flush(self) -> None:
        if not self._out or self.peer is None:
            return
        out, self._out = self._out, []
        self.flushes += 1
        self.peer._deliver(out)

    def _deliver(self, items: list[Any]) -> None:
        if self._closed:
            return
        for it in items:
            self._in.append(P.decode(it)[0] if self._codec else it)
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def recv(self) -> Sequence[P.Message]:
        while not self._in:
            if self._closed or (self.peer is not None and self.peer._closed):
                raise EOFError("port closed")
            fut = asyncio.get_running_loop().create_future()
            self._waiter = fut
            try:
                await fut
            finally:
                self._waiter = None
        out = list(self._in)
        self._in.clear()
        return out

    def recv_nowait(self) -> list[P.Message]:
        out = list(self._in)
        self._in.clear()
        return out

    def close(self) -> None:
        self._closed = True
        self._wake()
        if self.peer is not None:
            self.peer._wake()


def memory_port_pair(codec: bool = True) -> tuple[MemoryPort, MemoryPort]:
    a, b = MemoryPort(codec), MemoryPort(codec)
    a.peer, b.peer = b, a
    return a, b
