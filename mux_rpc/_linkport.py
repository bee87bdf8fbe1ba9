"""A :class:`~mux_rpc._offload.LinkPort` over an :class:`xport._link.AsyncLink`.

The xport link sends HELLO when it is built, runs keepalive, and consumes the
peer's HELLO and KEEPALIVE (``Link.peer_hello``, ``Link.peer_lost``): so this
port is ``link_managed``. Received messages arrive through the AsyncLink's
``on_messages`` callback (one list per received batch) and wait in a deque
for the host's reader task; the deque is bounded by the agent's credit windows
(it never holds more than the windows granted, plus control messages).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Sequence

from xport import _protocol as P
from xport._backend import FrameBackend
from xport._link import AsyncLink, Link, LinkConfig, LinkLostError

__all__ = ["AsyncLinkPort", "link_port"]


class AsyncLinkPort:
    """One queue of the host's link to the agent."""

    link_managed = True

    def __init__(self, alink: AsyncLink, inbox: collections.deque[list[P.Message]],
                 ready: asyncio.Event, clock: Callable[[], float] = time.monotonic) -> None:
        self.alink = alink
        self._clock = clock
        self.link: Link = alink.link
        self._inbox = inbox
        self._ready = ready
        self._closed = False

    def _on_messages(self, msgs: list[P.Message]) -> None:
        self._inbox.append(msgs)
        self._ready.set()

    def peer_hello(self) -> P.Hello | None:
        return self.link.peer_hello

    def tick(self, now: float) -> bool:
        if not self._closed:
            self.link.tick(now)
        if self.link.peer_lost:
            self._ready.set()  # wake the reader so that it sees the loss
        return self.link.peer_lost

    async def send(self, msgs: Sequence[P.Message]) -> None:
        if self._closed:
            raise EOFError("port closed")
        a = self.alink
        for m in msgs:
            if m.__class__ is P.Data:
                a.send_data(m.conn_id, m.payload, m.header_length)
            else:
                a.send(m)
        await a.drain()

    def send_data_nowait(self, conn_id: int, payload: bytes, header_length: int) -> bool:
        """Queue one DATA on the link now unless the link pushes back (then
        False: the caller queues it for :meth:`send`)."""
        return not self._closed and self.alink.try_send_data(conn_id, payload, header_length)

    async def recv(self) -> Sequence[P.Message]:
        while not self._inbox:
            if self._closed:
                raise EOFError("port closed")
            if self.link.peer_lost:
                raise LinkLostError("peer lost: keepalive expired")
            self._ready.clear()
            await self._ready.wait()
        return self._inbox.popleft()

    def reset(self) -> None:
        """Start the link over on the same backend: fresh sequence and credit
        state and a new HELLO (after the agent restarted: both ends start over)."""
        if self._closed:
            return
        old = self.alink
        old.close()
        self.link = Link(old.link.backend, old.link.config, now=self._clock())
        self.alink = AsyncLink(self.link, on_messages=self._on_messages, clock=self._clock)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._ready.set()
            try:
                self.link.flush(self._clock())  # what is queued (CLOSEs) goes out
            except OSError:
                pass  # the link is gone: nothing more can be sent
            self.alink.close()

    def statistics(self) -> dict[str, object]:
        return self.link.statistics().as_dict()


def link_port(backend: FrameBackend, *, max_message_size: int = 1 << 20,
              keepalive_interval: float = 1.0, peer_timeout: float = 5.0,
              clock: Callable[[], float] = time.monotonic,
              link_config: LinkConfig | None = None) -> AsyncLinkPort:
    """Build the host end of a link over ``backend`` (call inside the event loop)."""
    cfg = link_config or LinkConfig(
        role=P.Role.HOST,
        local_mac=b"\x02\x00\x00\x00\x00\x02",
        peer_mac=b"\x02\x00\x00\x00\x00\x01",
        max_message_size=max_message_size,
        keepalive_interval=keepalive_interval,
        peer_timeout=peer_timeout,
    )
    inbox: collections.deque[list[P.Message]] = collections.deque()
    ready = asyncio.Event()
    port: AsyncLinkPort | None = None

    def on_messages(msgs: list[P.Message]) -> None:
        assert port is not None
        port._on_messages(msgs)

    link = Link(backend, cfg, now=clock())
    alink = AsyncLink(link, on_messages=on_messages, clock=clock)
    port = AsyncLinkPort(alink, inbox, ready, clock)
    return port
