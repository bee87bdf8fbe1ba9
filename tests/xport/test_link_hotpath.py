"""The link's per-frame shortcuts against the readable arithmetic they stand
for: ``LinkCredit.on_frame``'s inline ``unwrap_u32`` and
``want_credit_only``'s early answer when nothing was posted since the last
advertisement (hypothesis over random walks of a credit state, counters near
2**32 included); ``AfXdpBackend.recv_copies`` is ``recv_batch(copy=True)``."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xport._linkcredit import LinkCredit, unwrap_u32

MASK = 0xFFFFFFFF


def _want_reference(lc: LinkCredit, posted: int) -> bool:
    """want_credit_only as the module doc states it (no shortcut)."""
    if lc.co_credit() < 1:
        return False
    p, a = lc._local(posted)
    new = (p - a) - (lc.adv_posted - lc.adv_ack)
    if new < 1:
        return False
    return new >= lc.update_threshold or lc.peer_may_be_blocked()


ops = st.lists(
    st.one_of(
        st.tuples(st.just("post"), st.integers(0, 5)),
        st.tuples(st.just("advertise"), st.just(0)),
        st.tuples(st.just("co_sent"), st.just(0)),
        st.tuples(st.just("co_released"), st.just(0)),
        st.tuples(st.just("frame"), st.integers(-3, 2**31 + 5)),
    ),
    max_size=60,
)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from([0, 2**32 - 7, 2**31 - 3]), ops, st.integers(1, 4), st.booleans())
def test_on_frame_and_want_credit_only_match_the_reference(
    base: int, steps: list[tuple[str, int]], threshold: int, co_frames: bool
) -> None:
    lc = LinkCredit(reserve=2, initial_peer_credit=4, update_threshold=threshold,
                    counter_base=base)
    posted = base + 4
    peer_p, peer_a = base + 4, base
    for op, arg in steps:
        if op == "post":
            posted += arg
        elif op == "advertise":
            lc.advertise(posted & MASK)
        elif op == "co_sent" and lc.co_credit() >= 1:
            lc.on_credit_only_sent()
        elif op == "co_released" and lc.co_rx < lc.co_recv:
            lc.on_credit_only_released()
        elif op == "frame":
            # the peer's (P, A) moves by arg (a large step reads as a regress)
            peer_p += max(arg, 0)
            peer_a += min(max(arg, 0), 1)
            before = (lc.peer_posted, lc.peer_ack, lc.frames_rx)
            p = unwrap_u32(lc.peer_posted, peer_p & MASK)
            a = unwrap_u32(lc.peer_ack, peer_a & MASK)
            regress = p < lc.peer_posted or a < lc.peer_ack or \
                p - a < lc.peer_posted - lc.peer_ack
            got = lc.on_frame(before[2] & MASK, peer_p & MASK, peer_a & MASK, co_frames)
            assert got == ("credit_regress" if regress else None)
            assert (lc.peer_posted, lc.peer_ack) == (before[:2] if regress else (p, a))
        assert lc.want_credit_only(posted & MASK) == _want_reference(lc, posted & MASK)


@pytest.mark.afxdp
def test_recv_copies_is_recv_batch_copied() -> None:
    """The same frames, as bytes, and the buffers posted again at once."""
    from backend_pairs import backend_pair, data_frame, send_all

    from xport._afxdp import AfXdpBackend

    with backend_pair("afxdp", ring=64) as (a, b):
        assert isinstance(b, AfXdpBackend)
        recv_copies = b.recv_copies
        frames = [data_frame(i, 60 + i) for i in range(40)]
        posted = b.rx_buffers_posted()
        send_all(a, frames[:20])
        got: list[bytes] = []
        deadline = time.monotonic() + 5
        while len(got) < 20 and time.monotonic() < deadline:
            got += recv_copies(8)
            b.wait_readable(0.05)
        assert all(type(f) is bytes for f in got)
        assert got == frames[:20]
        assert b.rx_buffers_posted() == posted + 20  # nothing to release
        send_all(a, frames[20:])
        rest: list[bytes] = []
        while len(rest) < 20 and time.monotonic() < deadline:
            rest += [bytes(f.data) for f in b.recv_batch(8, copy=True)]
            b.wait_readable(0.05)
        assert rest == frames[20:]
        assert recv_copies(0) == [] and recv_copies(8) == []
        # one frame (recv_copies' shortcut), then a closed socket raises
        send_all(a, frames[:1])
        one: list[bytes] = []
        while not one and time.monotonic() < deadline:
            b.wait_readable(0.05)
            one = recv_copies(8)
        assert one == frames[:1] and type(one[0]) is bytes
        b.socket.close()
        with pytest.raises(ValueError):
            recv_copies(8)
        with pytest.raises(ValueError):
            b.rx_buffers_posted()


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([0, 2**32 - 5, 2**31 - 2]),
    st.integers(0, 40),
    st.integers(0, 40),
    st.integers(0, 40),
    st.one_of(st.integers(-6, 40), st.integers(2**31 - 3, 2**31 + 3)),
)
def test_flush_advertises_as_linkcredit(
    base: int, ack: int, window: int, released: int, step: int
) -> None:
    """``Link._send_data_frames``' inline advertisement: the frame header's
    (credit, credit_ack) and the credit state after it are
    ``LinkCredit.advertise``'s (a step back or of 2**31 and more is never
    advertised; A clamped so that P - A never decreases)."""
    import copy

    from xport._link import Link
    from xport._wire import FRAME_HEADER
    from xport.testing import memory_backend_pair

    be, _peer = memory_backend_pair()
    link = Link(be)  # its HELLO is queued: the flush sends one data frame
    sent: list[bytes] = []
    send = be.send_batch
    be.send_batch = lambda frames: (sent.extend(bytes(f) for f in frames), send(frames))[1]  # type: ignore[method-assign]
    lc = link.credit
    lc.adv_ack = base + ack
    lc.adv_posted = lc.adv_ack + window
    lc.co_rx = lc.adv_ack + released
    posted = (lc.adv_posted + step) & MASK
    link._posted_base = be.rx_buffers_posted() - posted
    ref = copy.copy(lc)
    want = ref.advertise(posted)
    assert link.flush() >= 1
    *_h, credit, credit_ack, _plen, _r = FRAME_HEADER.unpack_from(sent[0])
    assert (credit, credit_ack) == want
    assert (lc.adv_posted, lc.adv_ack) == (ref.adv_posted, ref.adv_ack)
