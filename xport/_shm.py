"""Shared-memory ring backend: AF_XDP ring semantics between two processes, no root.

Theory of operation
-------------------
One side :meth:`ShmBackend.create` s a file ``<directory>/muxshm-<name>``
(``/dev/shm`` by default, i.e. tmpfs) and the other :meth:`ShmBackend.attach`
es to it by name. The file holds two single-producer/single-consumer rings of
fixed-size frame slots, one per direction (ring 0: creator → attacher, ring 1:
attacher → creator)::

    0      header page: magic, version, slots, frame_size, header size
    256    ring 0 producer u32   (own 64-byte line)
    320    ring 0 consumer u32
    384    ring 1 producer u32
    448    ring 1 consumer u32
    4096   ring 0 lengths: slots x u32, then ring 1 lengths (page aligned)
    ...    ring 0 slots: slots x frame_size bytes, then ring 1 slots

The indices are free-running u32 with wraparound (:mod:`xport._ring`): a slot
is ``index & (slots - 1)``. A sender that finds its ring full gets a partial
count from ``send_batch`` (nothing is ever dropped), exactly like an AF_XDP TX
ring; the receiver's ``rx_buffers_posted`` is ``slots`` plus every slot it has
given back, which is precisely how far the peer may ever produce.

Wake-up: a pair of named FIFOs next to the file (``.c2a`` read by the
attacher, ``.a2c`` read by the creator). ``fileno()`` is the read end of one's
own FIFO, so it works with ``select``/``epoll``/asyncio ``add_reader``. A
sender writes one byte per ``send_batch`` that published frames (one syscall
per batch, like the AF_XDP ``sendto`` kick; a full FIFO means the reader is
already readable, so EAGAIN is ignored). The receiver drains its FIFO only
when it finds the ring empty, then looks at the ring again; if that second
look leaves frames behind (more than ``max_frames``) it writes a byte to its
own FIFO. Invariant: whenever the RX ring is non-empty a wake byte is
pending, so the fd is readable whenever frames are ready (spurious readiness
is possible and harmless: ``recv_batch`` then returns ``[]``). FIFOs were
chosen over a UNIX datagram socket pair because one ``read`` drains any
number of pending wake-ups. Each FIFO is opened ``O_RDWR|O_NONBLOCK`` (Linux),
so neither side blocks in ``open`` waiting for the other; the price is that a
dead peer is not seen as EOF.

Memory ordering: writes through ``mmap`` from Python are plain stores. The
producer writes the frame bytes and the slot length, then stores the producer
index; the consumer loads the producer index, then reads lengths and bytes,
then stores the consumer index. On x86-64 (TSO) stores are not reordered with
older stores, and loads are not reordered with older loads nor with younger
stores, so "data, then index" on one side and "index, then data, then
release" on the other are ordered without fences; the interpreter performs
each store in a separate C call, so no compiler reorders them either. Indices
are read and written as aligned native u32 through a ``memoryview`` cast to
``"I"`` (one ``memcpy`` of 4 aligned bytes, i.e. one untorn load/store); not
``struct.pack_into("<I")``, which stores byte by byte. On weakly ordered CPUs
(arm64, POWER) this is not enough: a C helper would have to publish with
``__atomic_store_n(idx, v, __ATOMIC_RELEASE)`` and read with
``__atomic_load_n(idx, __ATOMIC_ACQUIRE)``, as libxdp's ``xsk.h`` does. This
module logs a warning when it runs on a machine other than x86-64.

Lifetime: the creator holds an exclusive ``flock`` on the file for as long as
it is open (the kernel drops it when the process dies), so a file whose lock
can be taken is stale from a crashed run: ``create`` removes and recreates it,
``attach`` refuses it. The attacher holds an exclusive ``flock`` on its FIFO
so a second attacher is refused. Those two locks also make
:meth:`ShmBackend.peer_alive` (a dead peer is not seen through the FIFOs). The
creator unlinks the file and FIFOs on close; an attached peer keeps its
mapping until it closes.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os
import platform
import re
import stat
import struct
from collections.abc import Callable, Sequence

from ._backend import BackendStats, Buffer, MappedTxBackend, RxFrame, TxSlot
from ._ring import U32_MASK, ConsumerRing, ProducerRing, ReleaseTracker, check_ring_size

log = logging.getLogger("xport.shm")

__all__ = ["ShmBackend", "shm_path"]

MAGIC = b"MUXSHM\x00\x01"
VERSION = 1
HEADER_SIZE = 4096
_HDR = struct.Struct("=8sIIII")  # magic, version, slots, frame_size, header_size
# u32 word offsets of the ring indices inside the header page
_PROD = (256 // 4, 384 // 4)
_CONS = (320 // 4, 448 // 4)
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_PAGE = mmap.PAGESIZE

if platform.machine() not in ("x86_64", "AMD64", "i686", "i386"):
    log.warning("xport.shm relies on x86 store ordering; %s needs acquire/release helpers",
                platform.machine())


def shm_path(name: str, directory: str = "/dev/shm") -> str:
    """The path of the shared file for ``name``."""
    if not _NAME_RE.fullmatch(name):
        raise ValueError(f"bad shm name {name!r}: use 1-64 of [A-Za-z0-9_.-], not starting with '.'")
    return os.path.join(directory, f"muxshm-{name}")


def _round_up(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def _layout(slots: int, frame_size: int) -> tuple[int, int, int]:
    """(lengths offset, data offset, total size)."""
    len_off = HEADER_SIZE
    data_off = len_off + _round_up(2 * slots * 4, _PAGE)
    return len_off, data_off, data_off + 2 * slots * frame_size


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _unlink_quiet(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class ShmBackend(MappedTxBackend):
    """One end of a shared-memory frame link. Build with :meth:`create` or :meth:`attach`."""

    name = "shm"

    def __init__(self, *, path: str, fd: int, mm: mmap.mmap, creator: bool, rx_fifo: int,
                 tx_fifo: int, slots: int, frame_size: int) -> None:
        self.path = path
        self.creator = creator
        self.slots = slots
        self.frame_size = frame_size
        self._fd = fd
        self._mm = mm
        self._rx_fifo = rx_fifo
        self._tx_fifo = tx_fifo
        self._closed = False
        len_off, data_off, _ = _layout(slots, frame_size)
        self._idx = memoryview(mm)[:HEADER_SIZE].cast("I")
        self._lens = memoryview(mm)[len_off:len_off + 2 * slots * 4].cast("I")
        self._data = memoryview(mm)[data_off:]
        self._rdata = self._data.toreadonly()
        tx_ring, rx_ring = (0, 1) if creator else (1, 0)
        self._tx_len_base = tx_ring * slots
        self._rx_len_base = rx_ring * slots
        self._tx_data_base = tx_ring * slots * frame_size
        self._rx_data_base = rx_ring * slots * frame_size
        idx = self._idx
        tp, tc, rp, rc = _PROD[tx_ring], _CONS[tx_ring], _PROD[rx_ring], _CONS[rx_ring]

        def store_tp(v: int) -> None:
            idx[tp] = v

        def store_rc(v: int) -> None:
            idx[rc] = v

        self._tx = ProducerRing(slots, idx[tp], idx[tc], lambda: idx[tc], store_tp)
        self._rx = ConsumerRing(slots, idx[rp], idx[rc], lambda: idx[rp], store_rc)
        self._tracker = ReleaseTracker(idx[rc])
        self._outstanding: dict[int, RxFrame] = {}
        self._tx_views: list[memoryview] = []  # outstanding reserve_tx views
        self._released_total = 0
        self._stats = BackendStats()
        self._stats.extra.update(wakeups_sent=0, wakeup_drains=0, self_wakeups=0)

    # -- construction ----------------------------------------------------------
    @classmethod
    def create(cls, name: str, *, slots: int = 1024, frame_size: int = 2048,
               directory: str = "/dev/shm", initial_index: int = 0) -> ShmBackend:
        """Create the shared file for ``name`` and return the creator's end.

        ``slots`` per direction (a power of two), ``frame_size`` bytes per slot
        (64..65536, the largest frame carried). A stale file left by a crashed
        creator is replaced; a live one raises ``FileExistsError``.
        ``initial_index`` starts both rings' u32 indices there (a test hook for
        wraparound).
        """
        check_ring_size(slots)
        if not 64 <= frame_size <= 65536:
            raise ValueError(f"frame_size must be 64..65536, got {frame_size}")
        path = shm_path(name, directory)
        fifos = (path + ".c2a", path + ".a2c")
        try:
            old = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            pass
        else:
            try:
                if not _try_lock(old):
                    raise FileExistsError(errno.EEXIST, "shm link in use by a live creator", path)
                log.warning("removing stale shm link %s from a crashed run", path)
                _unlink_quiet(path)
            finally:
                os.close(old)
        for f in fifos:
            _unlink_quiet(f)
        _, _, total = _layout(slots, frame_size)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        fds: list[int] = []
        mm = None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.ftruncate(fd, total)
            for f in fifos:
                os.mkfifo(f, 0o600)
            rx = os.open(fifos[1], os.O_RDWR | os.O_NONBLOCK)
            fds.append(rx)
            tx = os.open(fifos[0], os.O_RDWR | os.O_NONBLOCK)
            fds.append(tx)
            mm = mmap.mmap(fd, total, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            words = memoryview(mm)[:HEADER_SIZE].cast("I")
            for r in (0, 1):
                words[_PROD[r]] = initial_index & U32_MASK
                words[_CONS[r]] = initial_index & U32_MASK
            words.release()
            _HDR.pack_into(mm, 0, bytes(8), VERSION, slots, frame_size, HEADER_SIZE)
            mm[0:8] = MAGIC  # last: the file is ready
            return cls(path=path, fd=fd, mm=mm, creator=True, rx_fifo=rx, tx_fifo=tx,
                       slots=slots, frame_size=frame_size)
        except BaseException:
            if mm is not None:
                mm.close()
            for x in fds:
                os.close(x)
            os.close(fd)
            for p in (path, *fifos):
                _unlink_quiet(p)
            raise

    @classmethod
    def attach(cls, name: str, *, directory: str = "/dev/shm") -> ShmBackend:
        """Attach to the link ``name`` created by a live peer.

        Raises ``FileNotFoundError`` when there is none, ``ConnectionRefusedError``
        when the file is stale, not initialised or already has an attacher.
        """
        path = shm_path(name, directory)
        fd = os.open(path, os.O_RDWR)
        fds: list[int] = []
        mm = None
        try:
            if _try_lock(fd):
                raise ConnectionRefusedError(errno.ECONNREFUSED, "stale shm link (creator gone)",
                                             path)
            size = os.fstat(fd).st_size
            if size < HEADER_SIZE:
                raise ConnectionRefusedError(errno.ECONNREFUSED, "shm link not initialised", path)
            mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            magic, version, slots, frame_size, hdr = _HDR.unpack_from(mm, 0)
            if magic != MAGIC or version != VERSION or hdr != HEADER_SIZE:
                raise ConnectionRefusedError(errno.ECONNREFUSED,
                                             "not an initialised mux shm link", path)
            if _layout(slots, frame_size)[2] > size:
                raise ConnectionRefusedError(errno.ECONNREFUSED, "shm link truncated", path)
            for f in (path + ".c2a", path + ".a2c"):
                if not stat.S_ISFIFO(os.stat(f).st_mode):
                    raise ConnectionRefusedError(errno.ECONNREFUSED, "wake FIFO missing", f)
            rx = os.open(path + ".c2a", os.O_RDWR | os.O_NONBLOCK)
            fds.append(rx)
            if not _try_lock(rx):
                raise ConnectionRefusedError(errno.EBUSY, "shm link already attached", path)
            tx = os.open(path + ".a2c", os.O_RDWR | os.O_NONBLOCK)
            fds.append(tx)
            return cls(path=path, fd=fd, mm=mm, creator=False, rx_fifo=rx, tx_fifo=tx,
                       slots=slots, frame_size=frame_size)
        except BaseException:
            if mm is not None:
                mm.close()
            for x in fds:
                os.close(x)
            os.close(fd)
            raise

    # -- FrameBackend ------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("shm backend is closed")

    def send_batch(self, frames: Sequence[Buffer]) -> int:
        self._check_open()
        fs = self.frame_size
        lengths = self._frame_lengths(frames, 0)
        want = len(frames)
        if want == 0:
            return 0
        if self._tx_views:
            self._drop_reservation()
        free = self._tx.free(want)
        n = min(want, free)
        if n < want:
            self._stats.tx_ring_full += 1
        if n == 0:
            return 0
        _, idx = self._tx.reserve(n)
        mask = self._tx.mask
        data, lens = self._data, self._lens
        dbase, lbase = self._tx_data_base, self._tx_len_base
        nbytes = 0
        for i in range(n):
            slot = (idx + i) & mask
            off = dbase + slot * fs
            ln = lengths[i]
            data[off:off + ln] = frames[i]
            lens[lbase + slot] = ln
            nbytes += ln
        return self._publish(n, nbytes)

    def _publish(self, n: int, nbytes: int) -> int:
        """Hand the ``n`` reserved TX slots (``nbytes`` in all) to the peer and wake it."""
        self._tx.submit()
        self._wake(self._tx_fifo)
        st = self._stats
        st.tx_frames += n
        st.tx_bytes += nbytes
        st.extra["wakeups_sent"] += 1
        return n

    def reserve_tx(self, n: int) -> list[TxSlot]:
        """Writable views straight into free slots of the TX ring (zero copy).

        Submit a prefix of them, in order, with :meth:`submit_tx`; the next
        ``reserve_tx`` or ``send_batch`` invalidates views left unsubmitted.
        """
        self._check_open()
        self._drop_reservation()
        if n <= 0:
            return []
        k = min(n, self._tx.free(n))
        fs, mask, first = self.frame_size, self._tx.mask, self._tx.cached_prod
        out = []
        for i in range(k):
            seq = (first + i) & U32_MASK
            off = self._tx_data_base + (seq & mask) * fs
            out.append(TxSlot(self._data[off:off + fs], 0, seq))
        self._tx_views = [s.buf for s in out]
        return out

    def submit_tx(self, slots: Sequence[TxSlot]) -> int:
        """Publish reserved slots (a prefix of the last :meth:`reserve_tx`, in order)."""
        self._check_open()
        self._check_submit(slots, 0)
        views = self._tx_views
        n = len(slots)
        if n == 0:
            return 0
        got, idx = self._tx.reserve(n)
        if got != n or idx != slots[0].token:  # we checked free() at reserve time
            raise RuntimeError("shm TX ring state changed under a reservation")
        lens, lbase, mask = self._lens, self._tx_len_base, self._tx.mask
        nbytes = 0
        for s in slots:
            lens[lbase + (s.token & mask)] = s.length
            nbytes += s.length
            s.buf.release()
        del views[:n]
        return self._publish(n, nbytes)

    def _wake(self, fd: int) -> None:
        try:
            os.write(fd, b"\x01")
        except BlockingIOError:
            pass  # FIFO full: the reader is readable already

    def recv_batch(self, max_frames: int = 64, *, copy: bool = True) -> list[RxFrame]:
        self._check_open()
        rx = self._rx
        count, idx = rx.peek(max_frames)
        if count == 0:
            if max_frames <= 0:
                return []
            try:
                os.read(self._rx_fifo, 65536)
                self._stats.extra["wakeup_drains"] += 1
            except BlockingIOError:
                pass
            count, idx = rx.peek(max_frames)
            if count == 0:
                return []
            if (rx.cached_prod - rx.cached_cons) & U32_MASK:
                # frames left behind whose wake byte we just drained: keep fd readable
                self._wake(self._rx_fifo)
                self._stats.extra["self_wakeups"] += 1
        mask, fs = rx.mask, self.frame_size
        lens, lbase, dbase = self._lens, self._rx_len_base, self._rx_data_base
        out: list[RxFrame] = []
        nbytes = 0
        if copy:
            mm = self._mm
            abs_base = self._data_offset() + dbase
            for i in range(count):
                slot = (idx + i) & mask
                ln = lens[lbase + slot]
                off = abs_base + slot * fs
                out.append(RxFrame(mm[off:off + ln]))
                nbytes += ln
            if not self._outstanding:
                rx.release(count)
                self._tracker.head = rx.released
                self._released_total += count
            else:
                for i in range(count):
                    self._release_seq((idx + i) & U32_MASK)
        else:
            rdata = self._rdata
            for i in range(count):
                seq = (idx + i) & U32_MASK
                slot = seq & mask
                ln = lens[lbase + slot]
                off = dbase + slot * fs
                fr = RxFrame(rdata[off:off + ln], self._releaser(seq))
                self._outstanding[seq] = fr
                out.append(fr)
                nbytes += ln
        st = self._stats
        st.rx_frames += count
        st.rx_bytes += nbytes
        return out

    def _data_offset(self) -> int:
        return _layout(self.slots, self.frame_size)[1]

    def _releaser(self, seq: int) -> Callable[[], None]:
        def release() -> None:
            if self._closed:
                return
            self._outstanding.pop(seq, None)
            self._release_seq(seq)
        return release

    def _release_seq(self, seq: int) -> None:
        adv = self._tracker.release(seq)
        if adv:
            self._rx.release(adv)
            self._released_total += adv

    def rx_buffers_posted(self) -> int:
        return self.slots + self._released_total

    def peer_alive(self) -> bool:
        """Whether the other end is open: its ``flock`` is held (the kernel drops it on exit).

        The creator probes the attacher's lock on the ``.c2a`` FIFO, the attacher
        the creator's lock on the file (reopened through ``/proc/self/fd``, so an
        unlinked file or a new link of the same name is not mistaken for it).
        """
        self._check_open()
        target = self.path + ".c2a" if self.creator else f"/proc/self/fd/{self._fd}"
        try:
            fd = os.open(target, os.O_RDWR | os.O_NONBLOCK)
        except FileNotFoundError:
            return False
        try:
            if _try_lock(fd):
                fcntl.flock(fd, fcntl.LOCK_UN)
                return False
            return True
        finally:
            os.close(fd)

    def fileno(self) -> int:
        self._check_open()
        return self._rx_fifo

    def tx_pending(self) -> int:
        if self._closed:
            return 0
        return self._tx.in_flight()

    def statistics(self) -> BackendStats:
        return self._stats.snapshot()

    @property
    def mode(self) -> str:
        return "shm"

    def close(self) -> None:
        if self._closed:
            return
        for fr in list(self._outstanding.values()):
            fr.release()
        self._outstanding.clear()
        self._drop_reservation()
        self._closed = True
        for v in (self._idx, self._lens, self._rdata, self._data):
            v.release()
        try:
            self._mm.close()
        except BufferError:
            log.warning("shm %s: a view into the ring is still alive; mapping left to the GC",
                        self.path)
        if self.creator:  # unlink while the lock is held, so no new creator races us
            for p in (self.path, self.path + ".c2a", self.path + ".a2c"):
                _unlink_quiet(p)
        for fd in (self._rx_fifo, self._tx_fifo, self._fd):
            os.close(fd)

    def __repr__(self) -> str:
        role = "creator" if self.creator else "attacher"
        return f"ShmBackend({self.path!r}, {role}, slots={self.slots}, frame_size={self.frame_size})"
