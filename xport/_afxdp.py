"""The AF_XDP frame backend: :class:`AfXdpBackend`.

Theory of operation
-------------------
One backend = one :class:`~xport._umem.XskSocket` on one (interface, queue),
its own :class:`~xport._umem.Umem`, and the XDP program that steers our
EtherType to it: either loaded and attached by the backend itself (and
detached on close), or a shared :class:`~xport._bpfload.XdpProgram` passed in
(several queues of one interface share one program), or just an XSKMAP fd.

Batches cross into C once: ``send_batch`` joins the frames into one buffer
plus a ``uint32`` length array; ``recv_batch`` copies up to N frames into one
preallocated buffer, or, zero-copy, returns views into the UMEM whose
buffers go back to the fill ring when released. Releases are collected and
posted to the fill ring in batches: at 64 pending, at the next
``recv_batch``, and whenever :meth:`rx_buffers_posted` is asked (so a credit
advertisement never lags behind what was released).

Copy mode (every veth) needs a ``sendto`` kick per 32 TX descriptors; the C
burst helper kicks in a loop and stops when the device pushes back (then
``tx_pending`` stays > 0 and :meth:`flush` kicks again). With
``XDP_USE_NEED_WAKEUP`` kicks happen only when the kernel flags the ring.
"""

from __future__ import annotations

import fcntl
import functools
import logging
import select
import socket
import struct
import time
from array import array
from collections.abc import Callable, Sequence
from typing import Literal

from xport._backend import BackendStats, Buffer, FrameBackend, RxFrame, TxSlot
from xport._bpfload import AttachMode, XdpProgram
from xport._netns import run_in_netns
from xport._umem import Umem, UmemLayout, XskSocket
from xport._xsk import ffi, lib

__all__ = ["AfXdpBackend"]

log = logging.getLogger("xport.afxdp")


ETH_HLEN = 14
_SIOCGIFMTU = 0x8921
_RELEASE_BATCH = 64


def interface_mtu(ifname: str) -> int:
    """The MTU of ``ifname`` in the calling thread's network namespace."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16si", ifname.encode()[:15], 0)
        res = fcntl.ioctl(s.fileno(), _SIOCGIFMTU, req)
    return int(struct.unpack("16si", res)[1])


class AfXdpBackend(FrameBackend):
    """Frames over an AF_XDP socket. Open with :meth:`open`; one owner task."""

    name = "afxdp"

    def __init__(self, sock: XskSocket, umem: Umem, *, frame_size: int,
                 xdp_mode: AttachMode | None, program: XdpProgram | None,
                 owns_program: bool, busy_poll: bool) -> None:
        self._sock = sock
        self._umem = umem
        self.frame_size = frame_size
        self.ifname = sock.ifname
        self.queue_id = sock.queue_id
        #: how the XDP program is attached ("native"/"generic"), None when not known
        self.xdp_mode = xdp_mode
        self._program = program
        self._owns_program = owns_program
        self.busy_poll = busy_poll
        self._closed = False
        self._batch = 64
        # room for a whole UMEM frame per slot: what the C copy may write at most
        self._rx_slot = umem.layout.frame_size
        self._rx_out = ffi.new("char[]", self._batch * self._rx_slot)
        self._rx_out_buf = ffi.buffer(self._rx_out)
        self._rx_lens = ffi.new("uint32_t[]", self._batch)
        self._rx_addrs = ffi.new("uint64_t[]", self._batch)
        self._pending_release: list[int] = []
        self._poller = select.poll()
        if sock.fileno() >= 0:  # the ring tests drive the burst helpers with no socket
            self._poller.register(sock.fileno(), select.POLLIN)
        self._tx_reserved: set[int] = set()

    # -- construction --------------------------------------------------------
    @classmethod
    def open(
        cls,
        ifname: str,
        queue_id: int = 0,
        *,
        frame_count: int = 4096,
        frame_size: int = 2048,
        rx_size: int = 2048,
        tx_size: int = 2048,
        mode: Literal["auto", "native", "generic"] = "auto",
        zerocopy: bool | Literal["auto"] = "auto",
        busy_poll: bool = False,
        xskmap_fd: int | None = None,
        bpf: XdpProgram | None = None,
        netns: str | None = None,
    ) -> AfXdpBackend:
        """Open an AF_XDP socket on ``ifname`` queue ``queue_id``.

        ``frame_count`` UMEM frames of ``frame_size`` bytes are split in half
        between receive (at most ``rx_size``) and transmit. ``mode`` is the XDP
        attach mode when the backend attaches the program itself (``bpf`` and
        ``xskmap_fd`` both None); ``zerocopy="auto"`` binds zero copy where the
        driver offers it, copy mode elsewhere (veth). ``busy_poll`` sets the
        busy-poll socket options and makes :meth:`wait_readable` spin.

        ``netns``: the interface lives in that named namespace. The socket is
        created (and the program attached) by a throwaway thread that enters it;
        the backend is then used from any thread, and close detaches in that
        namespace. (A process that has itself entered the namespace passes None.)
        """
        if netns is not None:
            return run_in_netns(netns, lambda: cls.open(
                ifname, queue_id, frame_count=frame_count, frame_size=frame_size,
                rx_size=rx_size, tx_size=tx_size, mode=mode, zerocopy=zerocopy,
                busy_poll=busy_poll, xskmap_fd=xskmap_fd, bpf=bpf))
        if zerocopy not in ("auto", True, False):
            raise ValueError(f"zerocopy must be 'auto', True or False, got {zerocopy!r}")
        if bpf is not None and xskmap_fd is not None:
            raise ValueError("pass bpf or xskmap_fd, not both")
        layout = UmemLayout(frame_count=frame_count, frame_size=frame_size,
                            rx_frames=min(rx_size, frame_count // 2))
        mtu = interface_mtu(ifname)
        max_frame = min(layout.rx_payload, mtu + ETH_HLEN)
        owns = False
        program = bpf
        xdp_mode: AttachMode | None = None
        umem: Umem | None = None
        sock: XskSocket | None = None
        try:
            if program is None and xskmap_fd is None:
                program = XdpProgram()
                owns = True
                xdp_mode = program.attach(ifname, mode)
            elif program is not None:
                xdp_mode = program.mode_on(ifname)
            map_fd = xskmap_fd if xskmap_fd is not None else program.xskmap_fd  # type: ignore[union-attr]
            umem = Umem(layout)
            sock = XskSocket.open(umem, ifname, queue_id, rx_size=rx_size, tx_size=tx_size,
                                  zerocopy=None if zerocopy == "auto" else bool(zerocopy))
            sock.update_xskmap(map_fd)
            if not sock.zerocopy:
                sock.set_tx_budget(tx_size)  # fewer kicks where the kernel allows it
            if busy_poll:
                sock.set_busy_poll()
        except BaseException:
            if sock is not None:
                sock.close()
            if umem is not None:
                umem.close()
            if owns and program is not None:
                program.close()
            raise
        log.info("AF_XDP on %s queue %d: %s, XDP %s, %d frames of %d", ifname, queue_id,
                 "zerocopy" if sock.zerocopy else "copy", xdp_mode, frame_count, frame_size)
        return cls(sock, umem, frame_size=max_frame, xdp_mode=xdp_mode, program=program,
                   owns_program=owns, busy_poll=busy_poll)

    # -- properties ----------------------------------------------------------
    @property
    def mode(self) -> str:
        return "zerocopy" if self._sock.zerocopy else "copy"

    @property
    def socket(self) -> XskSocket:
        return self._sock

    @property
    def program(self) -> XdpProgram | None:
        return self._program

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("AfXdpBackend is closed")

    def _grow(self, n: int) -> None:
        self._batch = n
        self._rx_out = ffi.new("char[]", n * self._rx_slot)
        self._rx_out_buf = ffi.buffer(self._rx_out)
        self._rx_lens = ffi.new("uint32_t[]", n)
        self._rx_addrs = ffi.new("uint64_t[]", n)

    # -- TX ------------------------------------------------------------------
    def send_batch(self, frames: Sequence[Buffer]) -> int:
        if self._closed:
            self._check_open()  # raises
        if not frames:
            return 0
        lens = array("I", map(len, frames))
        if max(lens) > self.frame_size:
            raise ValueError(f"frame of {max(lens)} bytes exceeds frame_size {self.frame_size}")
        return self._sock.tx_burst(b"".join(frames), lens)

    def strided_sender(self, buf: bytearray, stride: int,
                       lens: array[int]) -> Callable[[int], int]:
        """``send(n)``: ``send_batch`` of the frames ``buf[i * stride:][:lens[i]]`` for
        ``i < n`` in one C call (``XskSocket.tx_stride_sender``): how ``xport.Link``
        hands its frames over. ``lens`` is an ``array('I')`` with one entry per slot;
        a frame longer than a UMEM frame raises ``OSError`` (EMSGSIZE)."""
        self._check_open()
        return self._sock.tx_stride_sender(buf, stride, lens)

    def reserve_tx(self, n: int) -> list[TxSlot]:
        self._check_open()
        if n <= 0:
            return []
        addrs = ffi.new("uint64_t[]", n)
        k = self._sock.tx_reserve(n, addrs)
        view = self._umem.view
        fs = self.frame_size
        slots = []
        for i in range(k):
            a = int(addrs[i])
            self._tx_reserved.add(a)
            slots.append(TxSlot(view[a:a + fs], 0, a))
        return slots

    def submit_tx(self, slots: Sequence[TxSlot]) -> int:
        self._check_open()
        n = len(slots)
        if n == 0:
            return 0
        for s in slots:
            if s.token not in self._tx_reserved:
                raise ValueError("slot was not reserved by this backend (or already sent)")
            if not 0 <= s.length <= self.frame_size:
                raise ValueError(f"slot length {s.length} outside 0..{self.frame_size}")
        addrs = array("Q", (s.token for s in slots))
        lens = array("I", (s.length for s in slots))
        k = self._sock.tx_submit(ffi.from_buffer("uint64_t[]", addrs),
                                 ffi.from_buffer("uint32_t[]", lens), n)
        for s in slots[:k]:
            self._tx_reserved.discard(s.token)
            s.buf.release()  # the kernel owns the frame now: no more writes through it
        return k

    def cancel_tx(self, slots: Sequence[TxSlot]) -> None:
        """Give reserved, unsent slots back to the free pool."""
        toks = [s.token for s in slots if s.token in self._tx_reserved]
        for s in slots:
            if s.token in self._tx_reserved:
                self._tx_reserved.discard(s.token)
                s.buf.release()
        if toks and not self._closed:
            arr = array("Q", toks)
            self._sock.tx_unreserve(ffi.from_buffer("uint64_t[]", arr), len(toks))

    def flush(self) -> None:
        self._check_open()
        self._sock.complete()
        self._sock.kick()

    def tx_pending(self) -> int:
        self._check_open()
        self._sock.complete()
        lay = self._umem.layout
        return lay.tx_frames - self._sock.tx_free - len(self._tx_reserved)

    # -- RX ------------------------------------------------------------------
    def recv_batch(self, max_frames: int = 64, *, copy: bool = True) -> list[RxFrame]:
        if copy:
            return [RxFrame(d) for d in self.recv_copies(max_frames)]
        if not self._rx_prepare(max_frames):
            return []
        if self._sock.ctx.tx_stalled:
            self._sock.kick()  # keep TX moving even when the owner only receives
        lens = self._rx_lens
        addrs = self._rx_addrs
        n = self._sock.rx_peek(addrs, lens, max_frames)
        view = self._umem.view
        rel = self._release_one
        frames = []
        for i in range(n):
            a = addrs[i]
            frames.append(RxFrame(view[a:a + lens[i]], functools.partial(rel, a)))
        return frames

    def _rx_prepare(self, max_frames: int) -> bool:
        """Before a receive: room for ``max_frames``, released frames reposted."""
        self._check_open()
        if max_frames <= 0:
            return False
        if max_frames > self._batch:
            self._grow(max_frames)
        if self._pending_release:
            self._flush_releases()
        return True

    def recv_copies(self, max_frames: int = 64) -> list[bytes]:
        """``recv_batch(max_frames, copy=True)`` as the frames' bytes: copies,
        nothing to release (``xport.Link``'s hot path: one object per frame)."""
        if self._closed or not 0 < max_frames <= self._batch or self._pending_release:
            if not self._rx_prepare(max_frames):  # the rare cases, checked there
                return []
        sock = self._sock
        if sock._closed:
            raise ValueError("XskSocket is closed")  # as sock.ctx would
        ctx = sock._ctx  # sock.ctx, without the property's call (once per wake-up)
        if ctx.tx_stalled:
            sock.kick()  # keep TX moving even when the owner only receives
        lens = self._rx_lens
        n = lib.mux_xsk_rx_burst(ctx, self._rx_out, lens, max_frames)  # sock.rx_burst
        if n == 0:
            return []
        buf = self._rx_out_buf
        if n == 1:
            return [buf[: lens[0]]]  # the common case at low load
        out = []
        off = 0
        for i in range(n):
            ln = lens[i]
            out.append(buf[off:off + ln])
            off += ln
        return out

    def _release_one(self, addr: int) -> None:
        if self._closed:
            return
        self._pending_release.append(addr)
        if len(self._pending_release) >= _RELEASE_BATCH:
            self._flush_releases()

    def _flush_releases(self) -> None:
        pend = self._pending_release
        arr = array("Q", pend)
        k = self._sock.release_rx(ffi.from_buffer("uint64_t[]", arr), len(arr))
        if k != len(arr):  # the fill ring holds every RX frame: cannot happen
            log.error("fill ring took %d of %d released frames", k, len(arr))
        pend.clear()

    def rx_buffers_posted(self) -> int:
        if self._closed:
            self._check_open()  # raises
        if self._pending_release:
            self._flush_releases()
        sock = self._sock
        if sock._closed:
            raise ValueError("XskSocket is closed")  # as sock.ctx would
        return int(sock._ctx.fill_posted)  # XskSocket.fill_posted (once per flush)

    def copies_receiver(self) -> Callable[[int], list[bytes]]:
        """:meth:`recv_copies` as a callable for a caller that receives once per
        wake-up (``xport.Link``): in C when the accelerator is built
        (``XskSocket.rx_copier``), this method otherwise."""
        self._check_open()
        return self._sock.rx_copier(self._rx_out, self._rx_lens, self._batch,
                                    self._pending_release, self.recv_copies)

    def posted_reader(self) -> Callable[[], int]:
        """:meth:`rx_buffers_posted` as a callable for a caller that asks once per
        flush (``xport.Link``): in C when the accelerator is built
        (``XskSocket.fill_posted_reader``), this method otherwise."""
        self._check_open()
        return self._sock.fill_posted_reader(self._pending_release, self.rx_buffers_posted)

    def fileno(self) -> int:
        self._check_open()
        return self._sock.fileno()

    def wait_readable(self, timeout: float | None) -> bool:
        self._check_open()
        sock = self._sock
        if sock.rx_ready():
            return True
        if self.busy_poll:
            return self.busy_poll_wait(timeout)
        # poll, not select: a busy process easily has fds above select's 1024 limit
        poller = self._poller
        if not sock.ctx.tx_stalled:
            return bool(poller.poll(None if timeout is None else max(0, timeout * 1000)))
        # TX descriptors wait for a kick the device refused: retry while we wait.
        deadline = None if timeout is None else time.monotonic() + timeout
        step = 0.0005
        while True:
            sock.kick()
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if sock.ctx.tx_stalled:
                wait: float | None = step if left is None else min(step, left)
            else:
                wait = left  # TX drained: plain wait for RX from here on
            if poller.poll(None if wait is None else wait * 1000):
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            step = min(step * 2, 0.005)

    def busy_poll_wait(self, timeout: float | None) -> bool:
        """Spin (driving NAPI with recvfrom) until a frame is ready or ``timeout`` passes."""
        deadline = None if timeout is None else time.monotonic() + timeout
        sock = self._sock
        while True:
            if sock.rx_ready():
                return True
            sock.wakeup_rx()
            if sock.rx_ready():
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False

    # -- statistics ----------------------------------------------------------
    def statistics(self) -> BackendStats:
        self._check_open()
        c = self._sock.counters()
        x = self._sock.xdp_statistics()
        extra = {f"xdp_{k}": v for k, v in (
            ("rx_dropped", x.rx_dropped), ("rx_invalid_descs", x.rx_invalid_descs),
            ("tx_invalid_descs", x.tx_invalid_descs), ("rx_ring_full", x.rx_ring_full),
            ("rx_fill_ring_empty_descs", x.rx_fill_ring_empty_descs),
            ("tx_ring_empty_descs", x.tx_ring_empty_descs))}
        for k in ("kicks", "kick_busy", "fill_wakeups", "tx_completed", "fill_posted"):
            extra[k] = c[k]
        if self._program is not None and not self._program.closed:
            for k, v in self._program.counters().items():
                extra[f"bpf_{k}"] = v
        return BackendStats(
            tx_frames=c["tx_frames"], tx_bytes=c["tx_bytes"],
            rx_frames=c["rx_frames"], rx_bytes=c["rx_bytes"],
            tx_ring_full=c["tx_ring_full"],
            # the kernel counts fill-ring-empty drops in rx_dropped too; a full RX ring apart
            rx_dropped=x.rx_dropped + x.rx_ring_full,
            rx_fill_empty=x.rx_fill_ring_empty_descs,
            extra=extra,
        )

    # -- lifetime ------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pending_release.clear()
        self._tx_reserved.clear()
        try:
            self._sock.close()  # socket, then UMEM registration
            self._umem.close()  # mapping goes with the last view
        finally:
            if self._owns_program and self._program is not None:
                self._program.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        return (f"AfXdpBackend({self.ifname!r}, queue={self.queue_id}, mode={self.mode!r}, "
                f"xdp={self.xdp_mode!r}{', closed' if self._closed else ''})")
