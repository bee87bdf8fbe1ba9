"""The one interface every frame backend implements (AF_XDP, AF_PACKET, shared memory).

Theory of operation
-------------------
A backend moves whole Ethernet frames over one queue of one link end. It knows
nothing of the frame's contents above the Ethernet header: the link layer
(:mod:`xport._link`) builds frames and runs link-level credits on top.

Everything is batched: ``send_batch`` and ``recv_batch`` cross into the kernel
(or the C helpers) once per call, never once per frame. Nothing blocks:
readiness comes from ``fileno()`` (``select``/``epoll``/asyncio
``add_reader``) or from :meth:`FrameBackend.wait_readable`.

Link credits need to know how many receive buffers this end has handed to
the kernel (or to the peer, for the shared-memory ring): that is
:meth:`FrameBackend.rx_buffers_posted`, a cumulative count. A peer that never
has more frames in flight than that count allows can never see a frame
dropped for lack of a buffer.

Zero copy: ``recv_batch(copy=False)`` returns :class:`RxFrame` views into the
backend's buffers; each buffer goes back to the kernel only when the view is
released (and only then does ``rx_buffers_posted`` grow). ``reserve_tx`` hands
out writable views into TX buffers so that a sender builds a frame in place.
Backends without such buffers emulate both with copies.
"""

from __future__ import annotations

import abc
import select
from dataclasses import asdict, dataclass, field, replace
from typing import Sequence

__all__ = ["BackendStats", "FrameBackend", "RxFrame", "TxSlot", "BufferReleasedError"]

Buffer = bytes | bytearray | memoryview


class BufferReleasedError(ValueError):
    """A zero-copy view was used after it was released back to the kernel."""


@dataclass(slots=True)
class BackendStats:
    """Counters every backend keeps. All are cumulative since open."""

    tx_frames: int = 0
    tx_bytes: int = 0
    rx_frames: int = 0
    rx_bytes: int = 0
    #: send_batch calls that could not take every frame because the TX ring was full
    tx_ring_full: int = 0
    #: frames the kernel (or peer) dropped on receive, as the backend can see it
    rx_dropped: int = 0
    #: receive drops because no receive buffer was posted (AF_XDP fill ring empty)
    rx_fill_empty: int = 0
    #: backend-specific extra counters (e.g. XDP_STATISTICS fields)
    extra: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def snapshot(self) -> "BackendStats":
        """A copy the caller may keep while the backend goes on counting."""
        return replace(self, extra=dict(self.extra))


class RxFrame:
    """A received frame. ``data`` is valid until :meth:`release`.

    For copying receives ``release`` does nothing. For zero-copy receives it
    returns the buffer to the kernel; reading ``data`` afterwards raises
    :class:`BufferReleasedError`.
    """

    __slots__ = ("_data", "_release", "_released")

    def __init__(self, data: memoryview | bytes, release: "object | None" = None) -> None:
        self._data = data
        self._release = release
        self._released = False

    @property
    def data(self) -> memoryview | bytes:
        if self._released:
            raise BufferReleasedError("frame buffer was released")
        return self._data

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        if isinstance(self._data, memoryview):
            self._data.release()
        if self._release is not None:
            self._release()  # type: ignore[operator]

    def __len__(self) -> int:
        return len(self.data)

    def __enter__(self) -> "RxFrame":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@dataclass(slots=True)
class TxSlot:
    """A writable TX buffer from :meth:`FrameBackend.reserve_tx`; set ``length`` then submit."""

    buf: memoryview
    length: int = 0
    token: int = 0


class FrameBackend(abc.ABC):
    """Moves Ethernet frames over one queue. Not thread-safe: one owner task."""

    #: short backend name ("afxdp", "afpacket", "shm")
    name: str = "abstract"

    #: the largest frame (Ethernet header included) this backend carries
    frame_size: int = 1514

    @abc.abstractmethod
    def send_batch(self, frames: Sequence[Buffer]) -> int:
        """Queue frames for transmission and kick the kernel.

        Returns how many (a prefix of ``frames``) were taken; fewer than
        ``len(frames)`` only when the TX ring is full, in which case the caller
        retries the rest later. A frame longer than ``frame_size`` raises
        ``ValueError`` and nothing is sent.
        """

    @abc.abstractmethod
    def recv_batch(self, max_frames: int = 64, *, copy: bool = True) -> list[RxFrame]:
        """Up to ``max_frames`` received frames, ``[]`` when none is ready. Never blocks."""

    @abc.abstractmethod
    def rx_buffers_posted(self) -> int:
        """Cumulative count of receive buffers handed to the kernel (or peer) so far."""

    @abc.abstractmethod
    def fileno(self) -> int:
        """A file descriptor that polls readable when frames are ready to receive."""

    @abc.abstractmethod
    def statistics(self) -> BackendStats:
        """Counters since open."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release every resource. Idempotent."""

    # -- optional, with portable defaults ------------------------------------
    def flush(self) -> None:
        """Kick pending TX (needed after ``send_batch`` only if it returned early)."""
        return None  # backends whose send_batch always kicks need nothing more

    def tx_pending(self) -> int:
        """Frames queued for TX that the kernel has not completed yet."""
        return 0

    def reserve_tx(self, n: int) -> list[TxSlot]:
        """Up to ``n`` writable TX buffers to build frames in place (copying default)."""
        return [TxSlot(memoryview(bytearray(self.frame_size))) for _ in range(n)]

    def submit_tx(self, slots: Sequence[TxSlot]) -> int:
        """Send slots from :meth:`reserve_tx`, each ``slot.length`` bytes long."""
        return self.send_batch([s.buf[: s.length] for s in slots])

    def wait_readable(self, timeout: float | None) -> bool:
        """Block until ``fileno()`` is readable or ``timeout`` seconds pass."""
        # poll, not select: select() fails for descriptors >= FD_SETSIZE (1024)
        poller = select.poll()
        poller.register(self.fileno(), select.POLLIN)
        ms = None if timeout is None else max(0, int(timeout * 1000))
        return bool(poller.poll(ms))

    @property
    def mode(self) -> str:
        """How frames move, e.g. ``"copy"``, ``"zerocopy"``, ``"mmap"``."""
        return "copy"

    def __enter__(self) -> "FrameBackend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MappedTxBackend(FrameBackend):
    """Shared TX bookkeeping of the backends whose TX slots live in a mapping
    (AF_PACKET, shared memory): frame-length checks, and the ``reserve_tx``
    views that the next reservation or ``send_batch`` invalidates.

    A subclass sets ``_tx_views = []`` in its constructor.
    """

    _tx_views: list[memoryview]

    def _frame_lengths(self, frames: Sequence[Buffer], min_len: int) -> list[int]:
        """Each frame's length; ``ValueError`` (nothing sent) if one is outside
        ``min_len..frame_size``."""
        lengths = [len(f) if isinstance(f, (bytes, bytearray)) else memoryview(f).nbytes
                   for f in frames]
        fmax = self.frame_size
        for i, ln in enumerate(lengths):
            if ln > fmax:
                raise ValueError(f"frame {i} is {ln} bytes, larger than frame_size {fmax}")
            if ln < min_len:
                raise ValueError(f"frame {i} is {ln} bytes, shorter than an Ethernet header")
        return lengths

    def _drop_reservation(self) -> None:
        """Invalidate unsubmitted reserve_tx views (their slots may be reused now)."""
        for v in self._tx_views:
            v.release()
        self._tx_views.clear()

    def _check_submit(self, slots: Sequence[TxSlot], min_len: int) -> None:
        """``ValueError`` unless ``slots`` is a prefix of the last reservation, in
        order, each ``length`` within ``min_len..frame_size``."""
        views = self._tx_views
        for i, s in enumerate(slots):
            if i >= len(views) or s.buf is not views[i]:
                raise ValueError("submit_tx slots must be the last reserved slots, in order")
            if not min_len <= s.length <= self.frame_size:
                raise ValueError(f"slot length {s.length} outside {min_len}..{self.frame_size}")
