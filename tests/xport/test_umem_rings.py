"""Property tests of the C burst helpers (UMEM pools, the four rings) without a kernel.

The socket runs on rings in plain memory (``mux_xsk_attach_fake``); a Python
model plays the kernel side: it consumes TX descriptors and posts completions,
takes fill-ring buffers and produces RX descriptors (data at the copy-mode
headroom offset, as the kernel does). Every u32 producer/consumer index starts
just below 2**32, so each run crosses the wraparound. Driven through
:class:`AfXdpBackend` itself, so the Python batching (release collection,
in-place TX slots) is covered too.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import pytest
from conftest import afxdp_required
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

try:
    from xport._afxdp import AfXdpBackend
    from xport._umem import XDP_PACKET_HEADROOM, Umem, UmemLayout, XskSocket
    from xport._xsk import ffi, lib
except ImportError:  # extension not built: fail in CI, skip elsewhere
    afxdp_required()
    raise

U32 = 0xFFFFFFFF
FRAME = 2048
PAYLOAD = FRAME - XDP_PACKET_HEADROOM


class FakeKernel:
    """The kernel's side of the four rings, over a ``struct mux_fake_rings``."""

    def __init__(self, umem: Umem, start: int, fill: int, comp: int, rx: int, tx: int) -> None:
        self.umem = umem
        f = ffi.new("struct mux_fake_rings *")
        for name in ("fill", "comp", "rx", "tx"):
            setattr(f, f"{name}_prod", start & U32)
            setattr(f, f"{name}_cons", start & U32)
        self._keep = [
            ffi.new("uint64_t[]", fill), ffi.new("uint64_t[]", comp),
            ffi.new("struct xdp_desc[]", rx), ffi.new("struct xdp_desc[]", tx),
        ]
        f.fill_ring, f.comp_ring, f.rx_ring, f.tx_ring = self._keep
        f.fill_size, f.comp_size, f.rx_size, f.tx_size = fill, comp, rx, tx
        self.f = f
        self.wrapped = {"fill": False, "rx": False, "tx": False, "comp": False}

    def _adv(self, ring: str, end: str) -> None:
        attr = f"{ring}_{end}"
        v = (getattr(self.f, attr) + 1) & U32
        if v == 0:
            self.wrapped[ring] = True
        setattr(self.f, attr, v)

    def used(self, ring: str) -> int:
        return int(getattr(self.f, f"{ring}_prod") - getattr(self.f, f"{ring}_cons")) & U32

    def transmit(self, k: int) -> list[bytes]:
        """Consume up to k TX descriptors, complete them; return the frames sent."""
        f, out = self.f, []
        for _ in range(min(k, self.used("tx"))):
            d = f.tx_ring[f.tx_cons & (f.tx_size - 1)]
            assert d.addr % FRAME == 0 and d.len <= FRAME
            out.append(bytes(self.umem.view[d.addr:d.addr + d.len]))
            self._adv("tx", "cons")
            assert self.used("comp") < f.comp_size, "completion ring overflow"
            f.comp_ring[f.comp_prod & (f.comp_size - 1)] = d.addr
            self._adv("comp", "prod")
        return out

    def receive(self, payload: bytes) -> bool:
        """Deliver one frame if a fill buffer and an RX slot are free (else: a drop)."""
        f = self.f
        if self.used("fill") == 0 or self.used("rx") == f.rx_size:
            return False
        base = f.fill_ring[f.fill_cons & (f.fill_size - 1)]
        self._adv("fill", "cons")
        assert base % FRAME == 0, f"fill ring got a non-chunk address {base}"
        addr = base + XDP_PACKET_HEADROOM
        self.umem.view[addr:addr + len(payload)] = payload
        d = f.rx_ring[f.rx_prod & (f.rx_size - 1)]
        d.addr, d.len = addr, len(payload)
        self._adv("rx", "prod")
        return True

    def fill_addrs(self) -> list[int]:
        f = self.f
        return [f.fill_ring[(f.fill_cons + i) & (f.fill_size - 1)] for i in range(self.used("fill"))]

    def rx_addrs(self) -> list[int]:
        f = self.f
        return [f.rx_ring[(f.rx_cons + i) & (f.rx_size - 1)].addr - XDP_PACKET_HEADROOM
                for i in range(self.used("rx"))]

    def tx_addrs(self) -> list[int]:
        f = self.f
        return [f.tx_ring[(f.tx_cons + i) & (f.tx_size - 1)].addr for i in range(self.used("tx"))]

    def comp_addrs(self) -> list[int]:
        f = self.f
        return [f.comp_ring[(f.comp_cons + i) & (f.comp_size - 1)]
                for i in range(self.used("comp"))]


def make_fake(start: int, n_rx: int = 8, n_tx: int = 8, rx_ring: int = 4, tx_ring: int = 4
              ) -> tuple[AfXdpBackend, FakeKernel, Umem]:
    layout = UmemLayout(frame_count=n_rx + n_tx, frame_size=FRAME, rx_frames=n_rx)
    umem = Umem(layout)
    kern = FakeKernel(umem, start, layout.fill_size, layout.comp_size, rx_ring, tx_ring)
    sock = XskSocket.on_fake_rings(umem, kern.f)
    be = AfXdpBackend(sock, umem, frame_size=PAYLOAD, xdp_mode=None, program=None,
                      owns_program=False, busy_poll=False)
    return be, kern, umem


payloads = st.binary(min_size=1, max_size=64).map(lambda b: b * (1 + len(b) % 7))
near_wrap = st.integers(min_value=2**32 - 12, max_value=2**32 - 1)


class BurstMachine(RuleBasedStateMachine):
    """Random interleavings of user and kernel operations; frames conserved, order kept."""

    def __init__(self) -> None:
        super().__init__()
        self.be: AfXdpBackend | None = None

    @rule(start=near_wrap)
    @precondition(lambda self: self.be is None)
    def setup(self, start: int) -> None:
        self.be, self.kern, self.umem = make_fake(start)
        self.n_rx, self.n_tx = 8, 8
        self.to_send: deque[bytes] = deque()       # sent by the user, not yet seen on the wire
        self.on_wire: list[bytes] = []
        self.delivered: deque[bytes] = deque()     # put in the RX ring, not yet received
        self.received: list[bytes] = []
        self.held: list[Any] = []                  # zero-copy frames not released
        self.slots: list[Any] = []                 # reserved TX slots
        self.released = 0
        self.copied = 0
        self.drops = 0
        self.counter = 0

    @property
    def b(self) -> AfXdpBackend:
        assert self.be is not None
        return self.be

    def _frame(self, body: bytes) -> bytes:
        self.counter += 1
        return self.counter.to_bytes(4, "big") + body

    # -- user side -----------------------------------------------------------
    @rule(bodies=st.lists(payloads, max_size=10))
    @precondition(lambda self: self.be is not None)
    def send(self, bodies: list[bytes]) -> None:
        frames = [self._frame(b) for b in bodies]
        k = self.b.send_batch(frames)
        assert 0 <= k <= len(frames)
        self.to_send.extend(frames[:k])
        self.counter -= len(frames) - k  # untaken frames are not on their way

    @rule(n=st.integers(0, 6), body=payloads, submit_all=st.booleans())
    @precondition(lambda self: self.be is not None)
    def in_place(self, n: int, body: bytes, submit_all: bool) -> None:
        slots = self.b.reserve_tx(n)
        assert len(slots) <= n
        for s in slots:
            fr = self._frame(body)
            s.buf[:len(fr)] = fr
            s.length = len(fr)
            self.slots.append((s, fr))
        if submit_all and self.slots:
            k = self.b.submit_tx([s for s, _ in self.slots])
            self.to_send.extend(fr for _, fr in self.slots[:k])
            for s, _ in self.slots[:k]:
                with pytest.raises((ValueError, TypeError)):
                    s.buf[0] = 0  # released on submit: the kernel owns the frame now
            self.slots = self.slots[k:]

    @rule()
    @precondition(lambda self: self.be is not None and bool(self.slots))
    def cancel_slots(self) -> None:
        # cancelled frames never go out; renumber what follows is not needed:
        # frame ids only need to be unique and ordered among the frames sent
        self.b.cancel_tx([s for s, _ in self.slots])
        self.slots = []

    @rule(k=st.integers(0, 12))
    @precondition(lambda self: self.be is not None)
    def kernel_transmit(self, k: int) -> None:
        for fr in self.kern.transmit(k):
            assert self.to_send, "kernel sent a frame nobody submitted"
            assert fr == self.to_send.popleft()
            self.on_wire.append(fr)

    @rule(bodies=st.lists(payloads, max_size=10))
    @precondition(lambda self: self.be is not None)
    def kernel_receive(self, bodies: list[bytes]) -> None:
        for b in bodies:
            if self.kern.receive(b):
                self.delivered.append(b)
            else:
                self.drops += 1

    @rule(m=st.integers(0, 10))
    @precondition(lambda self: self.be is not None)
    def recv_copy(self, m: int) -> None:
        got = self.b.recv_batch(m) if m else []
        assert len(got) <= m
        for fr in got:
            assert bytes(fr.data) == self.delivered.popleft()
            self.received.append(bytes(fr.data))
            fr.release()
        self.copied += len(got)

    @rule(m=st.integers(1, 10))
    @precondition(lambda self: self.be is not None)
    def recv_zero_copy(self, m: int) -> None:
        got = self.b.recv_batch(m, copy=False)
        for fr in got:
            assert bytes(fr.data) == self.delivered.popleft()
            self.received.append(bytes(fr.data))
        self.held.extend(got)

    @rule(data=st.data())
    @precondition(lambda self: self.be is not None and bool(self.held))
    def release_some(self, data: st.DataObject) -> None:
        idx = data.draw(st.lists(st.integers(0, len(self.held) - 1), unique=True, min_size=1))
        for i in sorted(idx, reverse=True):
            fr = self.held.pop(i)
            fr.release()
            fr.release()  # idempotent
            with pytest.raises(ValueError):
                _ = fr.data
            self.released += 1

    # -- invariants ----------------------------------------------------------
    @invariant()
    def frames_conserved(self) -> None:
        if self.be is None:
            return
        be, kern, lay = self.be, self.kern, self.umem.layout
        posted = be.rx_buffers_posted()  # flushes pending releases first
        assert posted == self.n_rx + self.copied + self.released
        # RX pool: fill ring + RX ring + held views = every RX frame, each once
        held = [fr._release.args[0] & ~(FRAME - 1) for fr in self.held]
        rx = kern.fill_addrs() + kern.rx_addrs() + held
        assert len(rx) == self.n_rx
        assert len(set(rx)) == len(rx)
        assert all(lay.is_rx_addr(a) and a % FRAME == 0 for a in rx)
        # TX pool: free stack + reserved + TX ring + completion ring = every TX frame
        sock = be.socket
        in_kernel = kern.tx_addrs() + kern.comp_addrs()
        assert sock.tx_free + len(self.slots) + len(in_kernel) == self.n_tx
        assert len(set(in_kernel) | {s.token for s, _ in self.slots}) == (
            len(in_kernel) + len(self.slots))
        assert all(lay.is_tx_addr(a) for a in in_kernel)
        pending = be.tx_pending()  # reaps the completion ring first
        assert kern.comp_addrs() == []
        assert pending == len(kern.tx_addrs()) and sock.tx_free + len(self.slots) + pending == (
            self.n_tx)

    def teardown(self) -> None:
        if self.be is not None:
            self.be.close()
            # a release after close is a no-op, never a write into a freed ring
            for fr in self.held:
                fr.release()


BurstMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40,
                                          deadline=None)
TestBurstHelpers = BurstMachine.TestCase


@settings(max_examples=40, deadline=None)
@given(start=near_wrap, rounds=st.integers(20, 60), batch=st.integers(1, 9))
def test_long_stream_crosses_wrap_in_order(start: int, rounds: int, batch: int) -> None:
    """Send, transmit, receive, release in lockstep: every index wraps, nothing reorders."""
    be, kern, _ = make_fake(start, n_rx=4, n_tx=4, rx_ring=2, tx_ring=2)
    try:
        seq = 0
        sent: list[bytes] = []
        seen: list[bytes] = []
        for _ in range(rounds):
            frames = [seq.to_bytes(4, "big") + bytes([seq & 0xFF]) * (seq % 50)
                      for seq in range(seq, seq + batch)]
            k = be.send_batch(frames)
            seq += k
            sent.extend(frames[:k])
            for fr in kern.transmit(batch):
                assert kern.receive(fr)  # credits: never more in flight than posted
            got = be.recv_batch(batch, copy=bool(seq & 1))
            seen.extend(bytes(g.data) for g in got)
            for g in got:
                g.release()
        assert seen == sent[:len(seen)]
        assert len(sent) - len(seen) <= 4
        assert kern.wrapped["tx"] and kern.wrapped["comp"]
        assert be.rx_buffers_posted() == 4 + len(seen)
    finally:
        be.close()


def test_oversized_frame_rejected_nothing_sent() -> None:
    be, kern, _ = make_fake(2**32 - 3)
    try:
        with pytest.raises(ValueError):
            be.send_batch([b"x" * 10, b"y" * (PAYLOAD + 1)])
        assert kern.transmit(10) == []
        assert be.socket.counters()["tx_frames"] == 0
    finally:
        be.close()


def test_tx_ring_full_takes_prefix_and_counts() -> None:
    be, kern, _ = make_fake(2**32 - 1, tx_ring=4)
    try:
        frames = [bytes([i]) * 20 for i in range(7)]
        assert be.send_batch(frames) == 4  # TX ring holds 4: a prefix is taken
        assert be.socket.counters()["tx_ring_full"] == 1
        assert kern.transmit(10) == frames[:4]
        assert be.send_batch(frames[4:]) == 3
        assert kern.transmit(10) == frames[4:]
    finally:
        be.close()


@given(frame_count=st.integers(2, 1 << 14), rx=st.integers(1, 1 << 14),
       size=st.sampled_from([2048, 4096]))
def test_layout_arithmetic(frame_count: int, rx: int, size: int) -> None:
    if not 1 <= rx < frame_count:
        with pytest.raises(ValueError):
            UmemLayout(frame_count=frame_count, frame_size=size, rx_frames=rx)
        return
    lay = UmemLayout(frame_count=frame_count, frame_size=size, rx_frames=rx)
    assert lay.rx_frames + lay.tx_frames == frame_count
    for ring, need in ((lay.fill_size, lay.rx_frames), (lay.comp_size, lay.tx_frames)):
        assert ring >= need and ring & (ring - 1) == 0 and ring < 2 * need + 1
    assert lay.is_rx_addr(0) and not lay.is_tx_addr(0)
    assert lay.is_tx_addr(rx * size) and not lay.is_rx_addr(rx * size)
    assert not lay.is_tx_addr(lay.size)
    assert lay.rx_payload == size - 256


@pytest.mark.parametrize("bad", [1024, 3000, 8192])
def test_layout_rejects_bad_frame_size(bad: int) -> None:
    with pytest.raises(ValueError):
        UmemLayout(frame_size=bad)


def test_new_rejects_area_too_small() -> None:
    umem = Umem(UmemLayout(frame_count=4, rx_frames=2))
    assert lib.mux_xsk_new(umem.ptr, 4 * FRAME - 1, FRAME, 2, 2) == ffi.NULL
