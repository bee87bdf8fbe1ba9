"""One conformance suite for every FrameBackend ("afxdp", "afpacket", "shm").

Each test gets a connected pair ``(a, b)`` from :func:`backend_pairs.backend_pair`.
The veth-based backends need root (``afxdp_required()``: a failure under
``MUX_RPC_REQUIRE_AFXDP=1``, a skip elsewhere); ``shm`` runs anywhere.
"""

from __future__ import annotations

import asyncio
import select
import time
from collections.abc import Iterator

import pytest
from backend_pairs import (
    BACKENDS,
    backend_pair,
    data_frame,
    frame_seq,
    recv_n,
    send_all,
    two_process,
)

from xport._backend import BufferReleasedError, FrameBackend

RING = 64

Pair = tuple[FrameBackend, FrameBackend]


@pytest.fixture(params=BACKENDS)
def pair(request: pytest.FixtureRequest) -> Iterator[Pair]:
    with backend_pair(request.param, ring=RING) as p:
        yield p


def _readable(be: FrameBackend, timeout: float) -> bool:
    r, _, _ = select.select([be.fileno()], [], [], timeout)
    return bool(r)


def _settle(be: FrameBackend, timeout: float = 2.0) -> None:
    """Wait until the sender's TX ring has completed (kernel backends are asynchronous)."""
    deadline = time.monotonic() + timeout
    while be.tx_pending() and time.monotonic() < deadline:
        be.flush()
        time.sleep(0.001)


def test_frames_arrive_intact_and_in_order(pair: Pair) -> None:
    a, b = pair
    sizes = [60, 64, 100, 512, 1000, min(a.frame_size, b.frame_size)]
    frames = [data_frame(i, sizes[i % len(sizes)]) for i in range(3 * RING // 2)]
    got: list[bytes] = []
    i = 0
    while i < len(frames):
        n = a.send_batch(frames[i:i + RING // 2])
        i += n
        got += recv_n(b, n)
    assert got == frames
    # and the other direction
    send_all(b, frames[:10])
    assert recv_n(a, 10) == frames[:10]


def test_batch_larger_than_tx_ring_is_partial(pair: Pair) -> None:
    a, b = pair
    frames = [data_frame(i) for i in range(3 * RING)]
    n = a.send_batch(frames)
    assert 0 < n < len(frames)
    assert n <= RING
    assert a.statistics().tx_ring_full >= 1
    got = recv_n(b, n)
    sent = n
    while sent < len(frames):  # the rest goes later
        _settle(a)
        k = a.send_batch(frames[sent:sent + RING // 2])
        sent += k
        got += recv_n(b, k)
    assert [frame_seq(f) for f in got] == list(range(len(frames)))
    assert got == frames


def test_oversize_frame_raises_and_sends_nothing(pair: Pair) -> None:
    a, b = pair
    big = data_frame(0, a.frame_size + 1)
    with pytest.raises(ValueError):
        a.send_batch([big])
    with pytest.raises(ValueError):
        a.send_batch([data_frame(1), big])
    assert a.statistics().tx_frames == 0
    time.sleep(0.02)
    assert b.recv_batch() == []
    # an exactly-full-size frame is fine
    ok = data_frame(2, a.frame_size)
    send_all(a, [ok])
    assert recv_n(b, 1) == [ok]


def test_recv_batch_never_blocks(pair: Pair) -> None:
    _, b = pair
    t = time.perf_counter()
    for _ in range(100):
        assert b.recv_batch(64) == []
        assert b.recv_batch(64, copy=False) == []
    assert time.perf_counter() - t < 0.5
    assert b.recv_batch(0) == []


def test_fileno_polls_readable_when_frames_ready(pair: Pair) -> None:
    a, b = pair
    assert not _readable(b, 0)
    send_all(a, [data_frame(i) for i in range(10)])
    assert _readable(b, 2.0)
    assert b.wait_readable(1.0)
    first = b.recv_batch(3)
    assert len(first) == 3
    assert _readable(b, 1.0), "frames left behind must keep the fd readable"
    rest = recv_n(b, 7)
    assert [frame_seq(f) for f in rest] == list(range(3, 10))
    # once empty, the fd goes quiet (at most one spurious wake-up, then [])
    if _readable(b, 0):
        assert b.recv_batch() == []
    assert not _readable(b, 0.05)


def test_asyncio_add_reader(pair: Pair) -> None:
    a, b = pair

    async def main() -> list[bytes]:
        loop = asyncio.get_running_loop()
        got: list[bytes] = []
        done = asyncio.Event()

        def on_readable() -> None:
            for f in b.recv_batch(64):
                got.append(bytes(f.data))
            if len(got) >= 20:
                done.set()

        loop.add_reader(b.fileno(), on_readable)
        try:
            send_all(a, [data_frame(i) for i in range(20)])
            await asyncio.wait_for(done.wait(), 3.0)
        finally:
            loop.remove_reader(b.fileno())
        return got

    got = asyncio.run(main())
    assert [frame_seq(f) for f in got] == list(range(20))


def test_zero_copy_views_and_release(pair: Pair) -> None:
    a, b = pair
    frames = [data_frame(i, 200) for i in range(5)]
    send_all(a, frames)
    views = recv_n(b, 5, copy=False)
    assert [bytes(v.data) for v in views] == frames
    assert len(views[0]) == 200
    views[0].release()
    with pytest.raises(BufferReleasedError):
        _ = views[0].data
    views[0].release()  # idempotent
    with views[1] as v:
        assert bytes(v.data) == frames[1]
    with pytest.raises(BufferReleasedError):
        _ = views[1].data
    for v in views[2:]:
        v.release()


def test_rx_buffers_posted_grows_as_buffers_return(pair: Pair) -> None:
    a, b = pair
    p0 = b.rx_buffers_posted()
    assert p0 >= 1
    send_all(a, [data_frame(i) for i in range(8)])
    views = recv_n(b, 8, copy=False)
    assert b.rx_buffers_posted() == p0  # still held by the views
    views[1].release()  # out of order: the slot before it still blocks the ring
    assert p0 <= b.rx_buffers_posted() <= p0 + 1
    for v in views:
        v.release()
    assert b.rx_buffers_posted() == p0 + 8
    send_all(a, [data_frame(i) for i in range(4)])
    recv_n(b, 4)  # copying receives return buffers at once
    assert b.rx_buffers_posted() == p0 + 12


def test_statistics_count_frames_and_bytes(pair: Pair) -> None:
    a, b = pair
    frames = [data_frame(i, 100 + i) for i in range(10)]
    send_all(a, frames)
    recv_n(b, 10)
    total = sum(len(f) for f in frames)
    sa, sb = a.statistics(), b.statistics()
    assert (sa.tx_frames, sa.tx_bytes) == (10, total)
    assert (sb.rx_frames, sb.rx_bytes) == (10, total)
    assert sb.rx_dropped == 0
    assert isinstance(sa.as_dict()["extra"], dict)


def test_close_is_idempotent(pair: Pair) -> None:
    a, b = pair
    send_all(a, [data_frame(0)])
    held = recv_n(b, 1, copy=False)
    b.close()  # with a zero-copy view outstanding
    b.close()
    a.close()
    a.close()
    # A view outstanding at close is either invalidated (afpacket, shm) or keeps
    # the mapping alive (afxdp): never a crash, never different bytes.
    try:
        assert bytes(held[0].data) == data_frame(0)
    except BufferReleasedError:
        pass
    held[0].release()


def test_peer_within_posted_buffers_sees_no_drops(pair: Pair) -> None:
    """A sender that never exceeds the receiver's rx_buffers_posted loses nothing."""
    a, b = pair
    total = 6 * RING
    frames = [data_frame(i) for i in range(total)]
    sent = 0
    got: list[bytes] = []
    deadline = time.monotonic() + 10
    while len(got) < total:
        assert time.monotonic() < deadline, f"stalled at {len(got)}/{total}"
        credit = b.rx_buffers_posted() - sent  # what the receiver would advertise
        if credit > 0 and sent < total:
            sent += a.send_batch(frames[sent:sent + min(credit, total - sent)])
        # a slow receiver: small batches, zero-copy, released late
        views = b.recv_batch(7, copy=False)
        got += [bytes(v.data) for v in views]
        for v in views:
            v.release()
        if not views:
            b.wait_readable(0.01)
    assert got == frames
    _settle(a)
    assert b.statistics().rx_dropped == 0
    assert b.statistics().rx_fill_empty == 0


@pytest.mark.parametrize("kind", ["shm", "afpacket"])
def test_two_processes(kind: str) -> None:
    if kind == "afpacket":
        from conftest import afxdp_required

        afxdp_required()
    res = two_process(kind, count=20000, ring=256, timeout=30)
    r, s = res["receiver"], res["sender"]
    assert s["sent"] == 20000
    assert r["received"] == 20000
    assert r["out_of_order"] == 0
    assert r["stats"]["rx_dropped"] == 0


def test_reserve_and_submit_tx_in_place(pair: Pair) -> None:
    a, b = pair
    slots = a.reserve_tx(4)
    assert 1 <= len(slots) <= 4
    frames = [data_frame(50 + i, 90) for i in range(len(slots))]
    for s, f in zip(slots, frames):
        assert len(s.buf) >= len(f)
        s.buf[: len(f)] = f
        s.length = len(f)
    assert a.submit_tx(slots) == len(slots)
    assert recv_n(b, len(slots)) == frames
    assert a.statistics().tx_frames == len(slots)
    assert len(a.reserve_tx(10 * RING)) <= RING
