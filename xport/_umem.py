"""UMEM and the AF_XDP socket, typed, over the C burst helpers.

Theory of operation
-------------------
A :class:`Umem` is one page-aligned anonymous mapping cut into
``frame_count`` frames of ``frame_size`` bytes (a power of two, 2048 or 4096:
AF_XDP aligned mode). It is split into two fixed pools (see
:mod:`xport._xsk_build` for the life of a frame): ``rx_frames`` frames for
the fill/RX rings at the bottom, the rest for TX/completion. The mapping is a
Python :class:`mmap.mmap`, so a zero-copy view handed to a user keeps the
memory mapped even after the socket and UMEM registration are gone: a stale
view reads stale bytes, never freed memory.

An :class:`XskSocket` binds one (interface, queue) with its own UMEM
registration and owns the C ``struct mux_xsk``. Every method moves a whole
batch through one C call. Close order is the one C requires: the socket,
then the UMEM registration (both in ``mux_xsk_close``), then the mapping
(dropped with the last Python reference).

Binding the same (device, queue) right after a previous socket on it closed
fails with EBUSY for ~15-25 ms; :meth:`XskSocket.open` retries with a short
backoff for up to ``busy_retry_s`` (default 0.25 s).
"""

from __future__ import annotations

import errno
import importlib
import logging
import mmap
import os
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self

from xport._xsk import check, ffi, lib, oserror

# tx_stride_sender's send(n) in C when the link accelerator is built
# (xport/_linkfast.c StrideTx: no Python frame per call); XPORT_PURE_PYTHON=1
# or a build without it: the Python closure, the reference
_StrideTx: Any
try:
    if os.environ.get("XPORT_PURE_PYTHON"):
        raise ImportError("XPORT_PURE_PYTHON is set")
    _linkfast = importlib.import_module("xport._linkfast")
    _StrideTx, _CounterReader = _linkfast.StrideTx, _linkfast.CounterReader
    _RxCopies = _linkfast.RxCopies
except (ImportError, AttributeError):
    _StrideTx = _CounterReader = _RxCopies = None
_TX_STRIDE = int(ffi.cast("uintptr_t", ffi.addressof(lib, "mux_xsk_tx_stride")))
_RX_BURST = int(ffi.cast("uintptr_t", ffi.addressof(lib, "mux_xsk_rx_burst")))
_KICK = int(ffi.cast("uintptr_t", ffi.addressof(lib, "mux_xsk_kick")))
_FILL_POSTED = int(ffi.offsetof("struct mux_xsk", "fill_posted"))
_TX_STALLED = int(ffi.offsetof("struct mux_xsk", "tx_stalled"))


def _tx_stride_error(rc: int) -> int:
    return check(rc, "tx_stride")

__all__ = ["XDP_PACKET_HEADROOM", "Umem", "UmemLayout", "XdpStatistics", "XskSocket"]

log = logging.getLogger("xport.afxdp")

#: bytes the kernel leaves in front of received data in each RX frame (copy mode)
XDP_PACKET_HEADROOM = int(lib.XDP_PACKET_HEADROOM)

SOL_XDP = 283
XDP_MAX_TX_SKB_BUDGET = 9  # Linux 6.18; missing from Debian 12's headers
SO_BUSY_POLL = 46
SO_PREFER_BUSY_POLL = 69
SO_BUSY_POLL_BUDGET = 70
SOL_SOCKET = 1


def _pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@dataclass(frozen=True, slots=True)
class UmemLayout:
    """How a UMEM is cut up. Pure arithmetic, checked at construction."""

    #: total frames in the UMEM
    frame_count: int = 4096
    #: bytes per frame: 2048 or 4096 (AF_XDP aligned mode wants a power of two)
    frame_size: int = 2048
    #: frames reserved for receiving (the fill ring holds all of them); the rest transmit
    rx_frames: int = 2048

    def __post_init__(self) -> None:
        if self.frame_size not in (2048, 4096):
            raise ValueError(f"frame_size must be 2048 or 4096, got {self.frame_size}")
        if not 2 <= self.frame_count <= 1 << 20:
            raise ValueError(f"frame_count must be 2..{1 << 20}, got {self.frame_count}")
        if not 1 <= self.rx_frames < self.frame_count:
            raise ValueError(f"rx_frames must be 1..frame_count-1, got {self.rx_frames}")

    @property
    def tx_frames(self) -> int:
        return self.frame_count - self.rx_frames

    @property
    def size(self) -> int:
        return self.frame_count * self.frame_size

    @property
    def fill_size(self) -> int:
        """Fill ring entries: a power of two >= rx_frames, so a refill always fits."""
        return _pow2_at_least(self.rx_frames)

    @property
    def comp_size(self) -> int:
        """Completion ring entries: a power of two >= tx_frames."""
        return _pow2_at_least(self.tx_frames)

    @property
    def rx_payload(self) -> int:
        """The largest frame one RX frame can hold (the kernel keeps headroom in front)."""
        return self.frame_size - XDP_PACKET_HEADROOM

    def is_rx_addr(self, addr: int) -> bool:
        return 0 <= addr < self.rx_frames * self.frame_size

    def is_tx_addr(self, addr: int) -> bool:
        return (self.rx_frames * self.frame_size <= addr < self.size
                and addr % self.frame_size == 0)


class Umem:
    """A page-aligned UMEM area owned by Python (an anonymous ``mmap``)."""

    def __init__(self, layout: UmemLayout | None = None) -> None:
        self.layout = layout or UmemLayout()
        self._map: mmap.mmap | None = mmap.mmap(-1, self.layout.size,
                                                flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        #: writable view of the whole area; zero-copy views are slices of it
        self.view = memoryview(self._map)
        self.ptr: Any = ffi.from_buffer(self._map)

    @property
    def frame_size(self) -> int:
        return self.layout.frame_size

    def frame(self, addr: int, length: int) -> memoryview:
        """A view of ``length`` bytes at UMEM offset ``addr``."""
        if addr < 0 or length < 0 or addr + length > self.layout.size:
            raise ValueError(f"UMEM range {addr}+{length} out of bounds")
        return self.view[addr:addr + length]

    def close(self) -> None:
        """Drop this object's hold on the area (live views keep it mapped)."""
        self._map = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class XdpStatistics:
    """``getsockopt(SOL_XDP, XDP_STATISTICS)``: the kernel's counters for one socket."""

    rx_dropped: int = 0
    rx_invalid_descs: int = 0
    tx_invalid_descs: int = 0
    rx_ring_full: int = 0
    rx_fill_ring_empty_descs: int = 0
    tx_ring_empty_descs: int = 0


_STAT_FIELDS = tuple(XdpStatistics.__dataclass_fields__)


class XskSocket:
    """One AF_XDP socket on (ifname, queue_id) with its UMEM registration.

    Not thread-safe. All batch methods cross into C once per call.
    """

    def __init__(self, umem: Umem, ctx: Any, ifname: str, queue_id: int) -> None:
        self.umem = umem
        self._ctx = ctx
        # the context's address while it lives, 0 from close() on: what the C
        # sender (tx_stride_sender) reads before every call
        self._live = array("Q", [int(ffi.cast("uintptr_t", ctx))])
        self.ifname = ifname
        self.queue_id = queue_id
        self.zerocopy = False
        self._closed = False
        self._stats = ffi.new("struct xdp_statistics *")

    # -- construction --------------------------------------------------------
    @staticmethod
    def _new_ctx(umem: Umem) -> Any:
        lay = umem.layout
        raw = lib.mux_xsk_new(umem.ptr, lay.size, lay.frame_size, lay.rx_frames, lay.tx_frames)
        if raw == ffi.NULL:
            raise oserror(ffi.errno or errno.ENOMEM, "mux_xsk_new")
        return ffi.gc(raw, lib.mux_xsk_free)

    @classmethod
    def open(cls, umem: Umem, ifname: str, queue_id: int = 0, *, rx_size: int = 2048,
             tx_size: int = 2048, zerocopy: bool | None = None,
             busy_retry_s: float = 0.25) -> XskSocket:
        """Create, bind and fill. ``zerocopy``: True forces, False refuses, None lets the
        kernel pick (zero copy where the driver offers it, else copy)."""
        for name, v in (("rx_size", rx_size), ("tx_size", tx_size)):
            if not _pow2(v):
                raise ValueError(f"{name} must be a power of two, got {v}")
        flags = lib.XDP_USE_NEED_WAKEUP
        if zerocopy is True:
            flags |= lib.XDP_ZEROCOPY
        elif zerocopy is False:
            flags |= lib.XDP_COPY
        ctx = cls._new_ctx(umem)
        lay = umem.layout
        deadline = time.monotonic() + busy_retry_s
        delay = 0.002
        while True:
            rc = lib.mux_xsk_open(ctx, ifname.encode(), queue_id, rx_size, tx_size,
                                  lay.fill_size, lay.comp_size, flags)
            if rc != -errno.EBUSY or time.monotonic() >= deadline:
                break
            time.sleep(delay)  # the previous socket on this queue is still going away
            delay = min(delay * 2, 0.02)
        if rc < 0:
            ffi.release(ctx)
            raise oserror(-rc, f"AF_XDP socket on {ifname} queue {queue_id}",
                          "XDP_ZEROCOPY not offered" if zerocopy and rc == -errno.EOPNOTSUPP
                          else "")
        sock = cls(umem, ctx, ifname, queue_id)
        opts = lib.mux_xsk_options(ctx)
        sock.zerocopy = opts >= 0 and bool(opts & lib.XDP_OPTIONS_ZEROCOPY)
        return sock

    @classmethod
    def on_fake_rings(cls, umem: Umem, rings: Any) -> XskSocket:
        """A socket whose rings live in ``rings`` (``struct mux_fake_rings *``), no kernel.

        For tests: the caller plays the kernel side of the four rings.
        """
        ctx = cls._new_ctx(umem)
        rc = lib.mux_xsk_attach_fake(ctx, rings)
        if rc < 0:
            ffi.release(ctx)
            check(rc, "mux_xsk_attach_fake")
        return cls(umem, ctx, "<fake>", 0)

    # -- plumbing ------------------------------------------------------------
    @property
    def ctx(self) -> Any:
        if self._closed:
            raise ValueError("XskSocket is closed")
        return self._ctx

    def fileno(self) -> int:
        return int(self.ctx.fd)

    def update_xskmap(self, map_fd: int) -> None:
        """Insert this socket into an XSKMAP at key ``queue_id``."""
        check(lib.mux_xsk_update_xskmap(self.ctx, map_fd),
              f"xsk_socket__update_xskmap(queue {self.queue_id})")

    def setsockopt_int(self, level: int, name: int, value: int) -> None:
        check(lib.mux_xsk_setsockopt_int(self.ctx, level, name, value),
              f"setsockopt({level}, {name})")

    def set_tx_budget(self, budget: int) -> bool:
        """Raise the copy-mode per-kick TX budget (XDP_MAX_TX_SKB_BUDGET). False if refused."""
        rc = int(lib.mux_xsk_setsockopt_int(self.ctx, SOL_XDP, XDP_MAX_TX_SKB_BUDGET, budget))
        return rc == 0

    def set_busy_poll(self, usecs: int = 20, budget: int = 64) -> None:
        """SO_PREFER_BUSY_POLL, SO_BUSY_POLL and SO_BUSY_POLL_BUDGET on the socket."""
        self.setsockopt_int(SOL_SOCKET, SO_PREFER_BUSY_POLL, 1)
        self.setsockopt_int(SOL_SOCKET, SO_BUSY_POLL, usecs)
        self.setsockopt_int(SOL_SOCKET, SO_BUSY_POLL_BUDGET, budget)

    # -- TX ------------------------------------------------------------------
    def tx_burst(self, buf: bytes | bytearray | memoryview, lens: array[int]) -> int:
        """Copy ``len(lens)`` frames packed back to back in ``buf`` into TX frames, submit,
        kick. Returns how many (a prefix) were taken."""
        n = len(lens)
        if n == 0:
            return 0
        rc = lib.mux_xsk_tx_burst(self.ctx, ffi.from_buffer(buf),
                                  ffi.from_buffer("uint32_t[]", lens), n)
        return check(rc, "tx_burst")

    def tx_stride_sender(self, buf: bytearray, stride: int,
                         lens: array[int]) -> Callable[[int], int]:
        """``send(n)``: ``tx_burst`` of the frames ``0..n-1`` of ``buf``, frame ``i`` at
        ``i * stride``, ``lens[i]`` bytes long, without converting ``buf`` and ``lens``
        per call (both stay exported, so neither can be resized, while ``send`` lives).
        Returns how many (a prefix) were taken; ``ValueError`` once the socket is closed,
        ``OSError`` (EMSGSIZE) for a frame longer than a UMEM frame."""
        if len(lens) * stride > len(buf) or not 0 < stride < 1 << 32:
            raise ValueError("buf must hold len(lens) frames of stride bytes")
        ctx = self.ctx
        if _StrideTx is not None:
            # the same send(n) in C; it keeps this socket (so the context) alive
            return _StrideTx(_TX_STRIDE, self._live, self, buf, stride, lens,  # type: ignore[no-any-return]
                             _tx_stride_error)
        pbuf = ffi.from_buffer(buf)
        plens = ffi.from_buffer("uint32_t[]", lens)
        slots = len(lens)
        burst = lib.mux_xsk_tx_stride

        def send(n: int) -> int:
            if self._closed:
                raise ValueError("XskSocket is closed")
            if not 0 <= n <= slots:
                raise ValueError(f"{n} frames of {slots} slots")
            rc = burst(ctx, pbuf, stride, plens, n)
            return rc if rc >= 0 else check(rc, "tx_stride")

        return send

    def fill_posted_reader(self, pending: list[int],
                           slow: Callable[[], int]) -> Callable[[], int]:
        """``read()``: :attr:`fill_posted` in one C call (``_linkfast.CounterReader``),
        or ``slow()`` while ``pending`` (released frames not posted yet) is not empty
        or once the socket is closed; ``slow`` itself without the accelerator."""
        if self._closed:
            raise ValueError("XskSocket is closed")
        if _CounterReader is None:
            return slow
        return _CounterReader(self._live, _FILL_POSTED, self, pending,  # type: ignore[no-any-return]
                              slow)

    def rx_copier(self, out: Any, lens: Any, batch: int, pending: list[int],
                  slow: Callable[[int], list[bytes]]) -> Callable[[int], list[bytes]]:
        """``recv(max_frames)`` in one C call (``_linkfast.RxCopies``): a kick first
        while TX is stalled, :meth:`rx_burst` into ``out`` (``char[]`` of ``batch``
        UMEM frames) and ``lens`` (``uint32_t[batch]``), each frame as ``bytes``;
        ``slow(max_frames)`` instead while ``pending`` (released frames not posted
        yet) is not empty, for ``max_frames`` outside ``1..batch`` or once the socket
        is closed; ``slow`` itself without the accelerator."""
        if self._closed:
            raise ValueError("XskSocket is closed")
        outb, lensb = ffi.buffer(out), ffi.buffer(lens)
        if len(outb) < batch * self.umem.layout.frame_size or len(lensb) < 4 * batch:
            raise ValueError("out and lens must hold batch frames")
        if _RxCopies is None:
            return slow
        return _RxCopies(_RX_BURST, _KICK, _TX_STALLED, self._live, self,  # type: ignore[no-any-return]
                         outb, lensb, batch, pending, slow)

    def tx_reserve(self, n: int, out: Any) -> int:
        """Pop up to ``n`` free TX frame addresses into ``out`` (``uint64_t[]``)."""
        return int(lib.mux_xsk_tx_reserve(self.ctx, out, n))

    def tx_submit(self, addrs: Any, lens: Any, n: int) -> int:
        """Queue ``n`` in-place frames; returns how many the TX ring took (a prefix)."""
        return check(lib.mux_xsk_tx_submit(self.ctx, addrs, lens, n), "tx_submit")

    def tx_unreserve(self, addrs: Any, n: int) -> None:
        lib.mux_xsk_tx_unreserve(self.ctx, addrs, n)

    def complete(self) -> int:
        """Reap the completion ring into the free stack."""
        return int(lib.mux_xsk_complete(self.ctx))

    def kick(self) -> int:
        """sendto until the kernel consumed the TX ring; 0 or -errno when it pushed back."""
        return int(lib.mux_xsk_kick(self.ctx))

    @property
    def tx_free(self) -> int:
        return int(self.ctx.tx_free)

    # -- RX ------------------------------------------------------------------
    def rx_burst(self, out: Any, lens: Any, max_frames: int) -> int:
        """Copy up to ``max_frames`` frames back to back into ``out`` and refill."""
        return int(lib.mux_xsk_rx_burst(self.ctx, out, lens, max_frames))

    def rx_peek(self, addrs: Any, lens: Any, max_frames: int) -> int:
        """Zero copy: addresses and lengths of up to ``max_frames`` frames, no refill."""
        return int(lib.mux_xsk_rx_peek(self.ctx, addrs, lens, max_frames))

    def release_rx(self, addrs: Any, n: int) -> int:
        """Post ``n`` RX frames back to the fill ring."""
        return int(lib.mux_xsk_release_rx(self.ctx, addrs, n))

    def rx_ready(self) -> int:
        return int(lib.mux_xsk_rx_ready(self.ctx))

    def wakeup_rx(self) -> None:
        check(lib.mux_xsk_wakeup_rx(self.ctx), "recvfrom wakeup")

    @property
    def fill_posted(self) -> int:
        return int(self.ctx.fill_posted)

    # -- statistics ----------------------------------------------------------
    def xdp_statistics(self) -> XdpStatistics:
        check(lib.mux_xsk_stats(self.ctx, self._stats), "getsockopt(XDP_STATISTICS)")
        s = self._stats
        return XdpStatistics(*(int(getattr(s, f)) for f in _STAT_FIELDS))

    def counters(self) -> dict[str, int]:
        c = self.ctx
        return {f: int(getattr(c, f)) for f in (
            "fill_posted", "rx_frames", "rx_bytes", "tx_frames", "tx_bytes", "tx_completed",
            "tx_ring_full", "kicks", "kick_busy", "fill_wakeups", "tx_free", "rx_held")}

    # -- lifetime ------------------------------------------------------------
    def close(self) -> None:
        """Delete the socket, then the UMEM registration. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._live[0] = 0  # before the context goes
        ffi.release(self._ctx)  # mux_xsk_free: socket, then UMEM, then the context

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
