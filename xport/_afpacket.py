"""AF_PACKET backend with PACKET_MMAP rings: the baseline AF_XDP is compared against.

Theory of operation
-------------------
One ``AF_PACKET``/``SOCK_RAW`` socket bound to the interface with our
EtherType (0x88B5), so the kernel delivers only our frames to it. Two
``TPACKET_V2`` rings are mapped into the process with one ``mmap``
(``packet(7)``, ``Documentation/networking/packet_mmap.rst``): the RX ring
first, then the TX ring. Every ring slot ("frame") starts with a
``struct tpacket2_hdr`` whose ``tp_status`` word says who owns it:

* RX: the kernel fills a ``TP_STATUS_KERNEL`` (0) slot and flips it to
  ``TP_STATUS_USER``; we read ``tp_mac``/``tp_snaplen`` and hand the slot back
  by writing 0. The kernel fills slots strictly in ring order and drops the
  frame (``tp_drops``) when the next slot is not back yet.
* TX: we write the frame at ``TPACKET2_HDRLEN - sizeof(sockaddr_ll)`` (32),
  set ``tp_len``, flip ``tp_status`` to ``TP_STATUS_SEND_REQUEST`` and, once per
  batch, kick with ``send(b"", MSG_DONTWAIT)``; the kernel walks the ring from
  its own head, sends every requested slot and sets each back to
  ``TP_STATUS_AVAILABLE`` when the skb is freed (for veth: when the peer has
  consumed it). ``PACKET_QDISC_BYPASS`` skips the qdisc layer.

Both sides walk the ring in order, so we keep our own head for each ring.
Memory ordering: the kernel writes a slot's data, then ``smp_wmb()``, then the
status; we read the status word, then the data, then write the status back.
On x86-64 loads are not reordered with older loads or younger stores, so the
Python reads (one aligned u32 load through a ``memoryview`` cast) are safe; a
port to a weakly ordered CPU needs acquire/release helpers (see
:mod:`xport._shm`).

``rx_buffers_posted`` is the ring size plus every slot handed back *in ring
order* (an out-of-order zero-copy release counts only once the slots before
it are back, because the kernel stops at the first slot it does not own).
``PACKET_STATISTICS`` counters reset on every read, so they are accumulated.

``netns=`` opens the socket from a thread that has entered that network
namespace (a socket belongs to the namespace it was created in), so a process
in the root namespace can drive an interface in another one; a process already
inside the namespace needs nothing.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import math
import mmap
import socket
import struct
from collections.abc import Callable, Sequence

from ._backend import BackendStats, Buffer, MappedTxBackend, RxFrame, TxSlot
from ._netns import run_in_netns
from ._ring import U32_MASK, ReleaseTracker

log = logging.getLogger("xport.afpacket")

__all__ = ["ETH_P_MUX", "AfPacketBackend"]

ETH_P_MUX = 0x88B5

# <linux/if_packet.h>
SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_TX_RING = 13
PACKET_QDISC_BYPASS = 20
TPACKET_V2 = 1
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
TP_STATUS_AVAILABLE = 0
TP_STATUS_SEND_REQUEST = 1
TP_STATUS_SENDING = 2
TP_STATUS_WRONG_FORMAT = 4
TP_STATUS_LOSING = 4  # RX: the kernel dropped frames (packet(7))
SIOCGIFMTU = 0x8921
_TPACKET_ALIGNMENT = 16
_ETH_HLEN = 14

_TPACKET_REQ = struct.Struct("IIII")  # block_size, block_nr, frame_size, frame_nr
_TPACKET_STATS = struct.Struct("II")  # tp_packets, tp_drops
# struct tpacket2_hdr: status, len, snaplen, mac, net, sec, nsec, vlan_tci, vlan_tpid, pad[4]
_TP2_HDR = struct.Struct("IIIHHIIHH4x")
_SOCKADDR_LL_SIZE = 20
TPACKET2_HDRLEN = (_TP2_HDR.size + _TPACKET_ALIGNMENT - 1) // _TPACKET_ALIGNMENT * \
    _TPACKET_ALIGNMENT + _SOCKADDR_LL_SIZE  # 52
TX_DATA_OFFSET = TPACKET2_HDRLEN - _SOCKADDR_LL_SIZE  # 32
# RX data lands at tp_mac = ALIGN(hdrlen + 16) - 14 = 66 for Ethernet


def _ring_geometry(frame_size: int, frame_count: int) -> tuple[int, int]:
    """(block_size, block_nr) for ``frame_count`` frames of ``frame_size`` bytes."""
    block = frame_size * mmap.PAGESIZE // math.gcd(frame_size, mmap.PAGESIZE)  # lcm
    while block < 1 << 16 and frame_count % (2 * block // frame_size) == 0:
        block *= 2
    per = block // frame_size
    if frame_count % per:
        raise ValueError(f"frame_count {frame_count} is not a multiple of {per} frames per block")
    return block, frame_count // per




class AfPacketBackend(MappedTxBackend):
    """AF_PACKET + TPACKET_V2 RX/TX rings on one interface. Build with :meth:`open`."""

    name = "afpacket"

    def __init__(self, sock: socket.socket, *, ifname: str, mtu: int, frame_size: int,
                 rx_frames: int, tx_frames: int) -> None:
        self.ifname = ifname
        self.mtu = mtu
        self.ring_frame_size = frame_size
        self.rx_frames = rx_frames
        self.tx_frames = tx_frames
        #: the largest frame carried: the TX slot and the device MTU bound it
        self.frame_size = min(frame_size - TX_DATA_OFFSET, mtu + 14)
        self._sock = sock
        self._closed = False
        rx_bytes = frame_size * rx_frames
        self._mm = mmap.mmap(sock.fileno(), rx_bytes + frame_size * tx_frames,
                             mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._view = memoryview(self._mm)
        self._rview = self._view.toreadonly()
        self._words = self._view.cast("I")
        self._tx_base = rx_bytes
        self._rx_head = 0  # next RX slot we read
        self._tx_head = 0  # next TX slot we fill
        self._tx_submitted = 0  # TX slots handed to the kernel, cumulative
        self._tx_completed = 0  # ... and seen back as available, cumulative
        self._tx_views: list[memoryview] = []  # outstanding reserve_tx views
        self._rx_seq = 0  # u32 count of RX slots read (for in-order release accounting)
        self._tracker = ReleaseTracker(0)
        self._outstanding: dict[int, RxFrame] = {}
        self._released_total = 0
        self._stats = BackendStats()
        self._stats.extra.update(kernel_rx_packets=0, kernel_rx_drops=0, kicks=0,
                                 kick_errors=0, rx_truncated=0, tx_wrong_format=0)

    # -- construction ------------------------------------------------------------
    @classmethod
    def open(cls, ifname: str, *, frame_size: int = 2048, frame_count: int = 1024,
             tx_frame_count: int | None = None, netns: str | None = None,
             qdisc_bypass: bool = True) -> AfPacketBackend:
        """Open ``ifname`` (in ``netns`` if given).

        ``frame_size``: bytes per ring slot (a multiple of 16, >= 128; the
        largest frame carried is ``frame_size - 32`` or MTU + 14, whichever is
        smaller). ``frame_count``: RX ring slots; ``tx_frame_count``: TX ring
        slots (default: same).
        """
        if frame_size % _TPACKET_ALIGNMENT or not 128 <= frame_size <= 65536:
            raise ValueError(f"frame_size must be a multiple of 16 in 128..65536, got {frame_size}")
        txn = frame_count if tx_frame_count is None else tx_frame_count
        if frame_count < 1 or txn < 1:
            raise ValueError("frame counts must be positive")
        rx_geom = _ring_geometry(frame_size, frame_count)
        tx_geom = _ring_geometry(frame_size, txn)

        def make() -> tuple[socket.socket, int]:
            # protocol 0 until the rings exist: nothing is queued before that
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            try:
                s.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
                if qdisc_bypass:
                    s.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
                s.setsockopt(SOL_PACKET, PACKET_RX_RING, _TPACKET_REQ.pack(
                    rx_geom[0], rx_geom[1], frame_size, frame_count))
                s.setsockopt(SOL_PACKET, PACKET_TX_RING, _TPACKET_REQ.pack(
                    tx_geom[0], tx_geom[1], frame_size, txn))
                s.bind((ifname, ETH_P_MUX))
                ifr = fcntl.ioctl(s.fileno(), SIOCGIFMTU,
                                  struct.pack("16si12x", ifname.encode(), 0))
                mtu = struct.unpack_from("i", ifr, 16)[0]
                s.setblocking(False)
            except BaseException:
                s.close()
                raise
            return s, mtu

        sock, mtu = run_in_netns(netns, make)
        try:
            return cls(sock, ifname=ifname, mtu=mtu, frame_size=frame_size,
                       rx_frames=frame_count, tx_frames=txn)
        except BaseException:
            sock.close()
            raise

    # -- TX --------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("afpacket backend is closed")

    def _tx_free_slots(self, want: int) -> int:
        """How many slots from the TX head on are free, up to ``want``."""
        words, base, fs, n = self._words, self._tx_base, self.ring_frame_size, self.tx_frames
        head = self._tx_head
        free = 0
        want = min(want, n)
        while free < want:
            w = (base + ((head + free) % n) * fs) >> 2
            st = words[w]
            if st != TP_STATUS_AVAILABLE:
                if st != TP_STATUS_WRONG_FORMAT:
                    break
                # the kernel refused this frame (the kick reported the error): the
                # slot is ours again, count it rather than wedge the ring
                words[w] = TP_STATUS_AVAILABLE
                self._stats.extra["tx_wrong_format"] += 1
            free += 1
        return free

    def send_batch(self, frames: Sequence[Buffer]) -> int:
        self._check_open()
        lengths = self._frame_lengths(frames, _ETH_HLEN)
        want = len(frames)
        if want == 0:
            return 0
        if self._tx_views:
            self._drop_reservation()
        n = self._tx_free_slots(want)
        if n < want:
            self._stats.tx_ring_full += 1
        if n == 0:
            self.flush()  # slots may be stuck waiting for a kick
            return 0
        view, words, base = self._view, self._words, self._tx_base
        fs, count, head = self.ring_frame_size, self.tx_frames, self._tx_head
        nbytes = 0
        for i in range(n):
            off = base + ((head + i) % count) * fs
            ln = lengths[i]
            d = off + TX_DATA_OFFSET
            view[d:d + ln] = frames[i]
            words[(off >> 2) + 1] = ln  # tp_len
            words[off >> 2] = TP_STATUS_SEND_REQUEST  # last: hands the slot over
            nbytes += ln
        self._tx_head = (head + n) % count
        self._tx_submitted += n
        st = self._stats
        st.tx_frames += n
        st.tx_bytes += nbytes
        self.flush()
        return n

    def flush(self) -> None:
        """Kick the kernel to send every ``TP_STATUS_SEND_REQUEST`` slot."""
        if self._closed:
            return
        self._stats.extra["kicks"] += 1
        try:
            self._sock.send(b"", socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            if exc.errno not in (errno.ENOBUFS, errno.EAGAIN):
                raise
            self._stats.extra["kick_errors"] += 1

    def tx_pending(self) -> int:
        """TX slots handed to the kernel and not completed yet (walked in ring order)."""
        if self._closed:
            return 0
        words, base, fs, n = self._words, self._tx_base, self.ring_frame_size, self.tx_frames
        done, sub = self._tx_completed, self._tx_submitted
        while done < sub:
            st = words[(base + (done % n) * fs) >> 2]
            if st != TP_STATUS_AVAILABLE and st != TP_STATUS_WRONG_FORMAT:
                break
            done += 1
        self._tx_completed = done
        return sub - done

    def reserve_tx(self, n: int) -> list[TxSlot]:
        """Writable views straight into free TX ring slots (zero copy).

        Submit a prefix of them, in order, with :meth:`submit_tx`; the next
        ``reserve_tx`` or ``send_batch`` invalidates views left unsubmitted.
        """
        self._check_open()
        self._drop_reservation()
        k = self._tx_free_slots(n)
        fs, count, base = self.ring_frame_size, self.tx_frames, self._tx_base
        out = []
        for i in range(k):
            slot = (self._tx_head + i) % count
            d = base + slot * fs + TX_DATA_OFFSET
            out.append(TxSlot(self._view[d:d + self.frame_size], 0, slot))
        self._tx_views = [s.buf for s in out]
        return out

    def submit_tx(self, slots: Sequence[TxSlot]) -> int:
        """Send reserved slots; they must be a prefix of the last ``reserve_tx``, in order."""
        self._check_open()
        fs, count, base, words = self.ring_frame_size, self.tx_frames, self._tx_base, self._words
        self._check_submit(slots, _ETH_HLEN)
        views = self._tx_views
        nbytes = 0
        for s in slots:
            off = base + s.token * fs
            words[(off >> 2) + 1] = s.length
            words[off >> 2] = TP_STATUS_SEND_REQUEST
            nbytes += s.length
            s.buf.release()
        self._tx_head = (self._tx_head + len(slots)) % count
        self._tx_submitted += len(slots)
        del views[:len(slots)]
        if slots:
            self.flush()
        self._stats.tx_frames += len(slots)
        self._stats.tx_bytes += nbytes
        return len(slots)

    # -- RX --------------------------------------------------------------------------
    def recv_batch(self, max_frames: int = 64, *, copy: bool = True) -> list[RxFrame]:
        self._check_open()
        words, fs, n = self._words, self.ring_frame_size, self.rx_frames
        head = self._rx_head
        out: list[RxFrame] = []
        nbytes = 0
        taken = 0
        view = self._mm if copy else self._rview
        truncated = 0
        max_frames = min(max_frames, n)
        while taken < max_frames:
            off = ((head + taken) % n) * fs
            w = off >> 2
            status = words[w]
            if not status & TP_STATUS_USER:
                break
            tp_len, snap = words[w + 1], words[w + 2]
            mac = words[w + 3] & 0xFFFF
            if snap < tp_len:
                truncated += 1
            d = off + mac
            if copy:
                out.append(RxFrame(view[d:d + snap]))
            else:
                seq = (self._rx_seq + taken) & U32_MASK
                fr = RxFrame(view[d:d + snap], self._releaser(seq, off))
                self._outstanding[seq] = fr
                out.append(fr)
            nbytes += snap
            taken += 1
        if taken == 0:
            return out
        if copy:
            for i in range(taken):
                words[(((head + i) % n) * fs) >> 2] = TP_STATUS_KERNEL
                if self._outstanding:
                    self._release_seq((self._rx_seq + i) & U32_MASK)
            if not self._outstanding:
                self._released_total += taken
                self._tracker.head = (self._rx_seq + taken) & U32_MASK
        self._rx_head = (head + taken) % n
        self._rx_seq = (self._rx_seq + taken) & U32_MASK
        stats = self._stats
        stats.rx_frames += taken
        stats.rx_bytes += nbytes
        if truncated:
            stats.extra["rx_truncated"] += truncated
        return out

    def _releaser(self, seq: int, off: int) -> Callable[[], None]:
        def release() -> None:
            if self._closed:
                return
            self._outstanding.pop(seq, None)
            self._words[off >> 2] = TP_STATUS_KERNEL
            self._release_seq(seq)
        return release

    def _release_seq(self, seq: int) -> None:
        self._released_total += self._tracker.release(seq)

    def rx_buffers_posted(self) -> int:
        return self.rx_frames + self._released_total

    def fileno(self) -> int:
        self._check_open()
        return self._sock.fileno()

    def _poll_kernel_stats(self) -> None:
        if self._closed:
            return
        raw = self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _TPACKET_STATS.size)
        packets, drops = _TPACKET_STATS.unpack(raw)  # reset by the read: accumulate
        ex = self._stats.extra
        ex["kernel_rx_packets"] += packets
        ex["kernel_rx_drops"] += drops
        self._stats.rx_dropped += drops

    def statistics(self) -> BackendStats:
        self._poll_kernel_stats()
        return self._stats.snapshot()

    @property
    def mode(self) -> str:
        return "mmap"

    def close(self) -> None:
        if self._closed:
            return
        for fr in list(self._outstanding.values()):
            fr.release()
        self._outstanding.clear()
        self._drop_reservation()
        try:
            self._poll_kernel_stats()
        except OSError:
            pass  # statistics are best effort at close; the socket goes anyway
        self._closed = True
        for v in (self._words, self._rview, self._view):
            v.release()
        try:
            self._mm.close()
        except BufferError:
            log.warning("afpacket %s: a ring view is still alive; mapping left to the GC",
                        self.ifname)
        self._sock.close()

    def __repr__(self) -> str:
        return (f"AfPacketBackend({self.ifname!r}, frame_size={self.frame_size}, "
                f"rx={self.rx_frames}, tx={self.tx_frames})")
