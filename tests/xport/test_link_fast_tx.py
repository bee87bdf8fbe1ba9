"""The link's TX slots handed to AF_XDP in one call
(``AfXdpBackend.strided_sender`` over ``mux_xsk_tx_stride``), on the fake
rings of test_umem_rings (no kernel): the frames the kernel side sees are
the slots' prefixes, in order; a full TX ring takes a prefix; the link
builds the same frames over it as over ``send_batch``; a closed socket
raises instead of touching freed memory."""

from __future__ import annotations

from array import array
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_umem_rings import PAYLOAD, make_fake  # beside this file

from xport._backend import BackendStats
from xport._link import Link, LinkConfig
from xport._protocol import Role
from xport.testing import memory_backend_pair

STRIDE = 1514


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.binary(min_size=1, max_size=200), min_size=1, max_size=6),
    st.integers(2**32 - 8, 2**32 - 1),
)
def test_strided_send_takes_each_slot_prefix(frames: list[bytes], start: int) -> None:
    be, kern, _ = make_fake(start, n_tx=8, tx_ring=8)
    try:
        buf = bytearray(STRIDE * 8)
        lens = array("I", bytes(4 * 8))
        for i, f in enumerate(frames):
            buf[i * STRIDE : i * STRIDE + len(f)] = f
            buf[i * STRIDE + len(f) : (i + 1) * STRIDE] = b"\xee" * (STRIDE - len(f))
            lens[i] = len(f)
        send = be.strided_sender(buf, STRIDE, lens)
        assert send(0) == 0
        assert send(len(frames)) == len(frames)
        assert kern.transmit(16) == frames
        assert be.socket.counters()["tx_frames"] == len(frames)
    finally:
        be.close()


def test_strided_send_full_ring_oversize_and_closed() -> None:
    be, kern, _ = make_fake(2**32 - 2, tx_ring=4)
    buf = bytearray(STRIDE * 8)
    lens = array("I", [10 + i for i in range(8)])
    for i in range(8):
        buf[i * STRIDE : i * STRIDE + 10 + i] = bytes([i]) * (10 + i)
    send = be.strided_sender(buf, STRIDE, lens)
    try:
        assert send(7) == 4  # the TX ring holds 4: a prefix is taken
        assert be.socket.counters()["tx_ring_full"] == 1
        assert kern.transmit(10) == [bytes([i]) * (10 + i) for i in range(4)]
        with pytest.raises(ValueError):
            send(9)  # more frames than slots
        with pytest.raises(BufferError):
            buf.extend(b"x")  # exported while the sender lives: never moved under C
        lens[0] = 2048 + 1  # longer than a UMEM frame
        with pytest.raises(OSError):
            send(1)
        with pytest.raises(ValueError):
            be.strided_sender(bytearray(100), STRIDE, lens)  # too small for the slots
    finally:
        be.close()
    with pytest.raises(ValueError):
        send(1)  # closed: no use of the freed socket


def test_link_sends_the_same_frames_through_the_slots(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Link over the fake AF_XDP socket (strided sender) puts on the wire
    what a Link over the memory backend (send_batch) does."""
    be, kern, _ = make_fake(0, n_tx=64, tx_ring=64)
    # the fake socket has no kernel statistics to read (Link reads rx_frames)
    monkeypatch.setattr(be, "statistics", lambda: BackendStats())
    try:
        cfg = LinkConfig(role=Role.AGENT, max_frame_size=PAYLOAD, initial_peer_credit=40)
        link = Link(be, cfg, session=5)
        assert link._tx_strided is not None
        mem_be, peer = memory_backend_pair(frame_size=PAYLOAD, rx_buffers=64)
        ref = Link(mem_be, cfg, session=5)
        assert ref._tx_strided is None
        for lk in (link, ref):
            for i in range(300):
                lk.send_data(i % 5, bytes([i % 251]) * (i % 97))
            lk.send_data(9, b"z" * 5000)  # fragments: the Python loop's part
            lk.flush()
        # the credit fields advertise each backend's own receive buffers: masked
        def mask(frame: bytes) -> bytes:
            return frame[:22] + bytes(8) + frame[30:]

        wire = kern.transmit(64)
        assert [mask(f) for f in wire] == [mask(bytes(f.data)) for f in peer.recv_batch(64)]
        assert len(wire) == link.stats.frames_out > 3
    finally:
        be.close()


def _sender_run(c_sender: bool, start: int, ring: int, frames: list[bytes],
                calls: list[int], oversize: int) -> list[object]:
    """send(n) calls over the fake rings with the C sender or the Python closure:
    what each returned or raised, the frames the kernel side saw, the counters."""
    from unittest import mock

    from xport import _umem

    patch = mock.patch.object(_umem, "_StrideTx", _umem._StrideTx if c_sender else None)
    with patch:
        be, kern, _ = make_fake(start, n_tx=8, tx_ring=ring)
        buf = bytearray(STRIDE * 8)
        lens = array("I", bytes(4 * 8))
        for i, f in enumerate(frames):
            buf[i * STRIDE : i * STRIDE + len(f)] = f
            lens[i] = len(f)
        if oversize < len(frames):
            lens[oversize] = 2048 + 1  # longer than a UMEM frame: EMSGSIZE
        send = be.strided_sender(buf, STRIDE, lens)
        assert (type(send).__name__ == "StrideTx") == c_sender
        out: list[object] = []
        try:
            for n in calls:
                try:
                    out.append(send(n))
                except (OSError, ValueError) as exc:
                    out.append((type(exc), exc.args))
                out.append(kern.transmit(3))
            out.append(be.socket.counters())
        finally:
            be.close()
        try:
            send(1)
        except ValueError as exc:
            out.append(exc.args)  # closed: no use of the freed socket
        return out


@settings(max_examples=80, deadline=None)
@given(
    st.integers(2**32 - 8, 2**32 - 1),
    st.integers(1, 8),
    st.lists(st.binary(min_size=1, max_size=200), min_size=1, max_size=8),
    st.lists(st.integers(-1, 9), min_size=1, max_size=8),
    st.integers(0, 12),
)
def test_c_sender_is_the_python_closure(
    start: int, ring: int, frames: list[bytes], calls: list[int], oversize: int
) -> None:
    """StrideTx (xport/_linkfast.c) against tx_stride_sender's Python closure:
    the same results, errors (n out of range, a frame longer than a UMEM
    frame, a closed socket), frames on the rings and counters, a full TX ring
    taking a prefix included."""
    import os

    from xport import _umem

    if os.environ.get("XPORT_PURE_PYTHON") == "1":
        pytest.skip("XPORT_PURE_PYTHON=1 forces the fallback")
    assert _umem._StrideTx is not None, "xport._linkfast not built: run scripts/setup.sh"
    assert _sender_run(True, start, ring, frames, calls, oversize) == \
        _sender_run(False, start, ring, frames, calls, oversize)


def _reader_run(c_reader: bool, start: int, ops: list[tuple[str, int]]) -> list[object]:
    """posted_reader() after random receives (copies, or zero-copy frames
    released later: pending until posted), against rx_buffers_posted."""
    from unittest import mock

    from xport import _umem

    patch = mock.patch.object(_umem, "_CounterReader", _umem._CounterReader if c_reader else None)
    with patch:
        be, kern, _ = make_fake(start, n_rx=8, rx_ring=4)
        read = be.posted_reader()
        assert (type(read).__name__ == "CounterReader") == c_reader
        out: list[object] = []
        held: list[Any] = []
        try:
            for op, k in ops:
                if op == "deliver":
                    out.append([kern.receive(bytes([k]) * 20) for _ in range(k)])
                elif op == "copies":
                    out.append(be.recv_copies(k))
                elif op == "zerocopy":
                    frames = be.recv_batch(k, copy=False)
                    out.append([bytes(f.data) for f in frames])
                    held += frames
                elif op == "release" and held:
                    held.pop(0).release()  # pending until the next post
                out.append((read(), len(be._pending_release), kern.used("fill")))
            out.append(be.rx_buffers_posted())
        finally:
            be.close()
        try:
            read()
        except ValueError as exc:
            out.append(exc.args)  # closed: the slow path raises
        return out


@settings(max_examples=80, deadline=None)
@given(
    st.integers(2**32 - 12, 2**32 - 1),  # ring indexes near the wrap
    st.lists(st.tuples(st.sampled_from(["deliver", "copies", "zerocopy", "release"]),
                       st.integers(0, 4)), max_size=20),
)
def test_c_posted_reader_is_rx_buffers_posted(start: int, ops: list[tuple[str, int]]) -> None:
    """CounterReader (xport/_linkfast.c) against AfXdpBackend.rx_buffers_posted,
    its slow path: the same counts while frames are received, held and
    released (released frames are posted first), and ValueError once closed."""
    import os

    from xport import _umem

    if os.environ.get("XPORT_PURE_PYTHON") == "1":
        pytest.skip("XPORT_PURE_PYTHON=1 forces the fallback")
    assert _umem._CounterReader is not None, "xport._linkfast not built: run scripts/setup.sh"
    assert _reader_run(True, start, ops) == _reader_run(False, start, ops)


def _receiver_run(c_recv: bool, start: int, ops: list[tuple[str, int]]) -> list[object]:
    """copies_receiver() after random deliveries, zero-copy frames held and
    released (pending until posted) and odd batch sizes, against recv_copies."""
    from unittest import mock

    from xport import _umem

    patch = mock.patch.object(_umem, "_RxCopies", _umem._RxCopies if c_recv else None)
    with patch:
        be, kern, _ = make_fake(start, n_rx=8, rx_ring=4)
        recv = be.copies_receiver()
        assert (type(recv).__name__ == "RxCopies") == c_recv
        out: list[object] = []
        held: list[Any] = []
        try:
            for op, k in ops:
                if op == "deliver":
                    out.append([kern.receive(bytes([k, len(out) & 255]) * (5 + k))
                                for _ in range(k)])
                elif op == "recv":
                    got = recv(k if k < 9 else 65 + k)  # above the batch: grows it
                    assert all(type(f) is bytes for f in got)
                    out.append(got)
                elif op == "zerocopy":
                    frames = be.recv_batch(k, copy=False)
                    out.append([bytes(f.data) for f in frames])
                    held += frames
                elif op == "release" and held:
                    held.pop(0).release()  # pending until the next receive
                out.append((be.socket.counters(), len(be._pending_release), kern.used("fill")))
        finally:
            be.close()
        try:
            recv(4)
        except ValueError as exc:
            out.append(exc.args)  # closed: the slow path raises
        return out


@settings(max_examples=80, deadline=None)
@given(
    st.integers(2**32 - 12, 2**32 - 1),
    st.lists(st.tuples(st.sampled_from(["deliver", "recv", "recv", "zerocopy", "release"]),
                       st.integers(-1, 12)), max_size=24),
)
def test_c_receiver_is_recv_copies(start: int, ops: list[tuple[str, int]]) -> None:
    """RxCopies (xport/_linkfast.c) against AfXdpBackend.recv_copies, its slow
    path: the same frames (bytes), counters and fill ring while frames are
    received, held and released, for batch sizes out of range and above the
    buffers (which then grow), and ValueError once closed."""
    import os

    from xport import _umem

    if os.environ.get("XPORT_PURE_PYTHON") == "1":
        pytest.skip("XPORT_PURE_PYTHON=1 forces the fallback")
    assert _umem._RxCopies is not None, "xport._linkfast not built: run scripts/setup.sh"
    assert _receiver_run(True, start, ops) == _receiver_run(False, start, ops)
