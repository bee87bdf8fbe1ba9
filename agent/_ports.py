"""One transport queue as the agent sees it: an xport Link over a FrameBackend.

The agent sends without ever awaiting: ``send`` queues on the link and the
mux calls ``flush`` once per event-loop iteration. Receiving is a reader
callback on the backend's fd (``loop.add_reader``) that polls the link and
hands each batch to ``on_messages``.

The link runs the handshake itself (docs/protocol.md §3.1): it resends HELLO
until the host acknowledged it, absorbs duplicate HELLOs, and on the first
HELLO of each host session calls ``on_hello(queue, hello, restarted)`` --
from inside ``poll``, so before any message of that session reaches
``on_messages``. ``restarted`` is True when the link knew another host
session: it has then reset its own per-peer state. Keepalive and liveness:
``tick`` (``peer_lost`` while the host is silent for ``peer_timeout``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from xport import _protocol as P
from xport._backend import FrameBackend
from xport._link import Link, LinkConfig

__all__ = ["AGENT_MAC", "HOST_MAC", "LinkPort"]

log = logging.getLogger("agent")

#: the agent end's MAC on the link, and the host end's (both locally administered)
AGENT_MAC = b"\x02\x00\x00\x00\x00\x01"
HOST_MAC = b"\x02\x00\x00\x00\x00\x02"

OnMessages = Callable[[int, list[P.Message]], None]
OnHello = Callable[[int, P.Hello, bool], None]


class LinkPort:
    """Queue ``queue`` of the agent's link. Build inside the running loop.

    ``window`` is the per-connection window (messages, bytes) the agent grants
    the host, announced in HELLO; ``session`` the agent's (None: random).
    """

    def __init__(self, queue: int, backend: FrameBackend, *, max_message_size: int,
                 keepalive_interval: float, peer_timeout: float,
                 on_messages: OnMessages, on_hello: OnHello,
                 clock: Callable[[], float] = time.monotonic, max_frames: int = 64,
                 session: int | None = None, window: tuple[int, int] | None = None) -> None:
        self.queue = queue
        self.backend = backend
        wm, wb = window if window is not None else (64, 0)
        self.config = LinkConfig(role=P.Role.AGENT, local_mac=AGENT_MAC, peer_mac=HOST_MAC,
                                 max_message_size=max_message_size,
                                 max_reassembly_bytes=max(16 << 20, 2 * max_message_size),
                                 keepalive_interval=keepalive_interval,
                                 peer_timeout=peer_timeout,
                                 window_messages=wm, window_bytes=wb)
        self._clock = clock
        self._on_messages = on_messages
        self._max_frames = max_frames
        self._loop = asyncio.get_running_loop()
        self.link = Link(backend, self.config, now=clock(), session=session)
        self.link.on_peer_hello = lambda h, restarted: on_hello(queue, h, restarted)
        self._closed = False
        self._loop.add_reader(backend.fileno(), self._on_readable)

    # -- sending -----------------------------------------------------------------
    def send(self, msg: P.Message) -> None:
        self.link.send(msg)

    def send_data(self, conn_id: int, payload: bytes, header_length: int) -> None:
        self.link.send_data(conn_id, payload, header_length)

    def flush(self) -> bool:
        """Send what link credit allows; True when more is queued and only the
        per-flush frame cap stopped it (flush again soon)."""
        if self._closed:
            return False
        link = self.link
        sent = link.flush(self._clock())
        return sent >= self.config.max_frames_per_flush and link.queued_messages > 0

    @property
    def writable(self) -> bool:
        return self.link.writable

    # -- receiving -------------------------------------------------------------------
    def _on_readable(self) -> None:
        if self._closed:
            return
        link = self.link
        now = self._clock()
        msgs = link.poll(self._max_frames, now)  # may call on_hello first
        link.flush(now)  # new link credit may have come, or our buffers were reposted
        if msgs:
            self._on_messages(self.queue, msgs)

    # -- link life ---------------------------------------------------------------------
    def peer_hello(self) -> P.Hello | None:
        return self.link.peer_hello

    def tick(self, now: float) -> bool:
        """Keepalive and HELLO-resend duty; True while the peer is lost."""
        if self._closed:
            return False
        self.link.tick(now)
        self.link.flush(now)
        return self.link.peer_lost

    def statistics(self) -> dict[str, object]:
        return self.link.statistics().as_dict()

    def close(self) -> None:
        """Stop reading, close the link and the backend. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._loop.remove_reader(self.backend.fileno())
        except (ValueError, OSError):
            pass
        self.link.close()
        self.backend.close()
