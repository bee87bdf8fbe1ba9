"""A :class:`~mux_rpc._offload.LinkPort` over an :class:`xport._link.AsyncLink`.

The xport link runs the handshake (docs/protocol.md §3.1: HELLO resent until
acknowledged, duplicates absorbed, a new agent session resets the link's
per-peer state) and keepalive (``Link.peer_lost``): so this port is
``link_managed``. The first HELLO of each agent session is handed to the host
in-band, as a one-message batch, in order with the other batches (the host
tells a restart from the session). Received messages arrive through the AsyncLink's
``on_messages`` callback (one list per received batch) and go straight to the
receiver the host sets (:meth:`AsyncLinkPort.set_receiver`: handled on the
read callback, no task hop), or else wait in a deque for the host's reader
task; the deque is bounded by the agent's credit windows (it never holds more
than the windows granted, plus control messages).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Sequence

from xport import _protocol as P
from xport._backend import FrameBackend
from xport._link import AsyncLink, Link, LinkConfig

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
        self.link.on_peer_hello = self._on_peer_hello
        self._receiver: Callable[[list[P.Message]], None] | None = None

    def _on_messages(self, msgs: list[P.Message]) -> None:
        receiver = self._receiver
        if receiver is not None:
            receiver(msgs)
            return
        self._inbox.append(msgs)
        self._ready.set()

    def set_receiver(self, receiver: Callable[[list[P.Message]], None] | None) -> None:
        """Hand every received batch to ``receiver(msgs)`` at once, on the link's
        read callback, instead of queueing it for :meth:`recv` (which then only
        reports the end of the link). Batches already queued go first. From
        now on whole DATA messages without a ULP header come as runs:
        ``(conn_id, [payload, ...])`` per run of consecutive ones of a
        connection (``Link.raw_runs``)."""
        self._receiver = receiver
        # the receiver takes DATA without a ULP header as (conn_id, [payloads]),
        # straight from the link's read callback (no call in between)
        self.link.raw_runs = receiver is not None
        self.alink.set_on_messages(receiver if receiver is not None else self._on_messages)
        while receiver is not None and self._inbox:
            receiver(self._inbox.popleft())

    def _on_peer_hello(self, hello: P.Hello, restarted: bool) -> None:
        # called inside Link.poll, before that batch's messages are handed on
        self._on_messages([hello])

    def peer_hello(self) -> P.Hello | None:
        return self.link.peer_hello

    def local_window(self) -> tuple[int, int]:
        """The per-connection window (messages, bytes) this link announces."""
        cfg = self.link.config
        return cfg.window_messages, cfg.window_bytes

    def set_local_window(self, messages: int, nbytes: int) -> None:
        """Announce another window; only before the link sent anything (RuntimeError)."""
        self.link.set_window(messages, nbytes)

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

    def direct_senders(self) -> tuple[Callable[[int, bytes, int], bool],
                                      Callable[[int, int, int], bool],
                                      Callable[[int, Sequence[bytes], int], int]]:
        """The link's own ``try_send_data``, ``try_send_credit`` and
        ``try_send_many``: queue DATA / CREDIT on the link now unless it pushes
        back (then False / 0: the host queues them for :meth:`send`); False/0
        as well once the port is closed (the link is closed with it)."""
        a = self.alink
        return a.try_send_data, a.try_send_credit, a.try_send_many

    def run_sender(self) -> Callable[[Sequence[tuple[int, Sequence[bytes]]],
                                      Sequence[tuple[int, int, int]], int], bool]:
        """The link's ``try_send_runs``: a whole received batch's replies and
        CREDITs queued with one backpressure check (the host's run engine),
        or nothing and False when the link pushes back (or the port is closed)."""
        return self.alink.run_sender()

    async def recv(self) -> Sequence[P.Message]:
        while not self._inbox:
            if self._closed:
                raise EOFError("port closed")
            self._ready.clear()
            await self._ready.wait()
        return self._inbox.popleft()

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
              link_config: LinkConfig | None = None, session: int | None = None,
              window_messages: int = 64, window_bytes: int = 0) -> AsyncLinkPort:
    """Build the host end of a link over ``backend`` (call inside the event loop).

    ``window_messages``/``window_bytes``: the per-connection window the host
    grants the agent, announced in HELLO (0 bytes: twice ``max_message_size``);
    pass the HostConfig's. ``session``: the host process's (None: random);
    give every queue of one host the same one.
    """
    cfg = link_config or LinkConfig(
        role=P.Role.HOST,
        local_mac=b"\x02\x00\x00\x00\x00\x02",
        peer_mac=b"\x02\x00\x00\x00\x00\x01",
        max_message_size=max_message_size,
        keepalive_interval=keepalive_interval,
        peer_timeout=peer_timeout,
        window_messages=window_messages,
        window_bytes=window_bytes,
    )
    inbox: collections.deque[list[P.Message]] = collections.deque()
    ready = asyncio.Event()
    port: AsyncLinkPort | None = None

    def on_messages(msgs: list[P.Message]) -> None:
        assert port is not None
        port._on_messages(msgs)

    link = Link(backend, cfg, now=clock(), session=session)
    alink = AsyncLink(link, on_messages=on_messages, clock=clock)
    port = AsyncLinkPort(alink, inbox, ready, clock)
    return port
