"""Test helpers: an in-memory frame backend pair and a fake clock.

``memory_backend_pair(rx_buffers=...)`` is to xport what trio's
``memory_stream_pair`` is to streams: two :class:`MemoryBackend` ends wired
back to back, with the one property that matters for link credits — each end
has a *finite* number of posted receive buffers, and a frame that arrives
when none is free is **dropped and counted** (``statistics().rx_fill_empty``),
exactly as an AF_XDP socket with an empty fill ring drops it. A test that
sees zero drops after a storm of traffic has shown that the credits work.

A buffer is reposted when the received frame is released (``RxFrame.release``;
immediately for ``recv_batch(copy=True)``), and only then does
``rx_buffers_posted()`` grow. ``fileno()`` is the read end of a pipe that is
readable while frames are waiting, so asyncio ``add_reader`` works.

``FakeClock`` is a ``now()`` that only moves when told (``advance``).

``memory_link_pair(config_a, config_b, rx_buffers=...)`` builds two
:class:`~xport._link.Link` objects over such a pair.
"""

from __future__ import annotations

import os
import weakref
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ._backend import BackendStats, Buffer, FrameBackend, RxFrame

if TYPE_CHECKING:
    from ._link import Link, LinkConfig

__all__ = ["FakeClock", "MemoryBackend", "memory_backend_pair", "memory_link_pair"]


class FakeClock:
    """A clock for ``now=`` arguments that moves only with :meth:`advance`."""

    __slots__ = ("_now",)

    def __init__(self, start: float = 0.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    __call__ = now

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("time does not go backwards")
        self._now += seconds
        return self._now


class MemoryBackend(FrameBackend):
    """One end of an in-memory link with finite receive buffers (see module doc)."""

    name = "memory"

    def __init__(
        self, *, rx_buffers: int = 64, frame_size: int = 1514, tx_batch_limit: int | None = None
    ) -> None:
        if rx_buffers < 1:
            raise ValueError("rx_buffers must be >= 1")
        #: the largest frame carried
        self.frame_size = frame_size
        #: send_batch takes at most this many frames per call (emulates a full TX ring)
        self.tx_batch_limit = tx_batch_limit
        self._peer: MemoryBackend | None = None
        self._rx: deque[bytes] = deque()
        self._free = rx_buffers
        self._posted = rx_buffers
        self._stats = BackendStats()
        self._rfd, self._wfd = os.pipe()
        os.set_blocking(self._rfd, False)
        # a pair dropped without close() must not leak its pipe (tests make thousands)
        self._fds_finalizer = weakref.finalize(self, _close_fds, self._rfd, self._wfd)
        self._signalled = False
        self._closed = False

    # -- wiring ----------------------------------------------------------------
    def _connect(self, peer: MemoryBackend) -> None:
        self._peer = peer

    def _arrive(self, frame: bytes) -> None:
        if self._closed:
            return
        if self._free < 1:
            # the AF_XDP behaviour the link credits exist to prevent
            self._stats.rx_fill_empty += 1
            self._stats.rx_dropped += 1
            return
        self._free -= 1
        self._rx.append(frame)
        if not self._signalled:
            os.write(self._wfd, b"\0")
            self._signalled = True

    def _repost(self) -> None:
        self._free += 1
        self._posted += 1

    # -- FrameBackend ------------------------------------------------------------
    def send_batch(self, frames: Sequence[Buffer]) -> int:
        if self._closed:
            raise ValueError("backend is closed")
        for f in frames:
            if len(f) > self.frame_size:
                raise ValueError(f"frame of {len(f)} bytes > frame_size {self.frame_size}")
        n = len(frames)
        if self.tx_batch_limit is not None and n > self.tx_batch_limit:
            n = self.tx_batch_limit
            self._stats.tx_ring_full += 1
        peer = self._peer
        for i in range(n):
            data = bytes(frames[i])
            self._stats.tx_frames += 1
            self._stats.tx_bytes += len(data)
            if peer is not None:
                peer._arrive(data)
        return n

    def recv_batch(self, max_frames: int = 64, *, copy: bool = True) -> list[RxFrame]:
        out: list[RxFrame] = []
        rx = self._rx
        while rx and len(out) < max_frames:
            data = rx.popleft()
            self._stats.rx_frames += 1
            self._stats.rx_bytes += len(data)
            if copy:
                self._repost()
                out.append(RxFrame(data))
            else:
                out.append(RxFrame(memoryview(data), self._repost))
        if not rx and self._signalled:
            os.read(self._rfd, 1)
            self._signalled = False
        return out

    def rx_buffers_posted(self) -> int:
        return self._posted

    def rx_pending(self) -> int:
        """Frames received and not yet taken by ``recv_batch`` (test helper)."""
        return len(self._rx)

    def fileno(self) -> int:
        return self._rfd

    def statistics(self) -> BackendStats:
        return self._stats

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._fds_finalizer()


def memory_backend_pair(
    *, rx_buffers: int = 64, frame_size: int = 1514, tx_batch_limit: int | None = None
) -> tuple[MemoryBackend, MemoryBackend]:
    """Two connected :class:`MemoryBackend` ends."""
    a = MemoryBackend(rx_buffers=rx_buffers, frame_size=frame_size, tx_batch_limit=tx_batch_limit)
    b = MemoryBackend(rx_buffers=rx_buffers, frame_size=frame_size, tx_batch_limit=tx_batch_limit)
    a._connect(b)
    b._connect(a)
    return a, b


def memory_link_pair(
    config_a: LinkConfig | None = None,
    config_b: LinkConfig | None = None,
    *,
    rx_buffers: int = 64,
    frame_size: int = 1514,
    now: float = 0.0,
) -> tuple[Link, Link]:
    """Two started :class:`~xport._link.Link` ends over a memory backend pair."""
    from ._link import Link, LinkConfig
    from ._protocol import Role

    a_be, b_be = memory_backend_pair(rx_buffers=rx_buffers, frame_size=frame_size)
    a = Link(a_be, config_a or LinkConfig(role=Role.AGENT), now=now)
    b = Link(b_be, config_b or LinkConfig(role=Role.HOST), now=now)
    return a, b


def _close_fds(*fds: int) -> None:
    for fd in fds:
        os.close(fd)
