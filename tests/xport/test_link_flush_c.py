"""``Link.flush`` in one C call (``xport._linkfast.Flusher``, used when the
backend sends from the link's slots: AF_XDP) against the Python flush it
stands for (``Link._flush_c = None``), over the fake AF_XDP rings of
test_umem_rings (no kernel): random sends (whole messages, messages that need
fragments, odd payload types, CREDITs), link credit arriving, receive
buffers posted (so credit-only frames are due), a TX ring that fills up
(short sends and the backlog), flushes with and without ``now``. Both must
put the same frames on the ring and return the same counts, and leave the
same statistics, credit state, queue, backlog and fragment state. Skipped
only when ``XPORT_PURE_PYTHON=1`` forces the fallback."""

from __future__ import annotations

import os
from dataclasses import asdict
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_umem_rings import PAYLOAD, make_fake  # beside this file

from xport import _link
from xport._backend import BackendStats
from xport._link import Link, LinkConfig
from xport._linkcredit import LinkCredit
from xport._protocol import Credit, Role

pytestmark = pytest.mark.skipif(
    os.environ.get("XPORT_PURE_PYTHON") == "1", reason="XPORT_PURE_PYTHON=1 forces the fallback"
)

ops_st = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.integers(0, 3), st.integers(0, 200)),
        st.tuples(st.just("big"), st.integers(0, 3), st.integers(PAYLOAD, 3 * PAYLOAD)),
        st.tuples(st.just("odd"), st.integers(0, 3), st.integers(0, 60)),
        st.tuples(st.just("credit"), st.integers(0, 3), st.integers(0, 9)),
        st.tuples(st.just("peer"), st.integers(0, 6), st.integers(0, 1)),
        st.tuples(st.just("post"), st.integers(0, 4), st.integers(0, 0)),
        st.tuples(st.just("flush"), st.integers(0, 1), st.integers(0, 0)),
        st.tuples(st.just("wire"), st.integers(0, 6), st.integers(0, 0)),
    ),
    max_size=40,
)


def _run(c_flush: bool, start: int, tx_ring: int, ops: list[tuple[str, int, int]],
         big: bool = False) -> Any:
    be, kern, _ = make_fake(start, n_rx=8, n_tx=8, rx_ring=4, tx_ring=tx_ring)
    be.statistics = lambda: BackendStats()  # type: ignore[method-assign]  # no kernel counters
    try:
        link = Link(be, LinkConfig(role=Role.AGENT, max_frame_size=PAYLOAD, min_fragment=64,
                                   max_frames_per_flush=4, credit_update_threshold=1),
                    session=5)
        assert link._flush_c is not None
        if not c_flush:
            link._flush_c = None
        if big:  # counters beyond what C takes (2**62): Python's flush, whole
            link.credit = LinkCredit(reserve=2, initial_peer_credit=4, update_threshold=1,
                                     counter_base=2**62)
        out: list[Any] = []
        clock = 0.0
        for op, a, b in ops:
            if op == "send":
                link.send_data(a, bytes([b % 251]) * b)
            elif op == "big":
                link.send_data(a, b"z" * min(b, link._max_send))
            elif op == "odd":
                link.send_data(a, memoryview(bytearray([a]) * b))
            elif op == "credit":
                link.send(Credit(a, b, b * 10))
            elif op == "peer":  # the peer's header: more buffers, a credit-only frame acked
                lc = link.credit
                lc.peer_posted += a + b
                lc.peer_ack = min(lc.peer_ack + b, lc.co_sent)
            elif op == "post":  # frames received and released: our P grows
                for _ in range(a):
                    kern.receive(b"x" * 60)
                out.append(len(be.recv_copies(8)))
            elif op == "flush":
                clock += 1.0
                out.append(link.flush(clock if a else None))
            elif op == "wire":
                out.append(kern.transmit(a))
        out.append(link.flush(99.0))
        out.append(kern.transmit(64))
        stats = asdict(link.stats)
        stats.pop("backend")
        lc = link.credit
        out.append((stats, {n: getattr(lc, n) for n in type(lc).__slots__},
                    [(t, c, x, bytes(p)) for t, c, x, p in link._queue], list(link._backlog),
                    link._head_sent, link.queued_bytes, link._last_tx))
        return out
    finally:
        be.close()


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.integers(2**32 - 8, 2**32 - 1), st.integers(1, 8), ops_st,
       st.sampled_from([False] * 7 + [True]))
def test_c_flush_is_the_python_flush(start: int, tx_ring: int,
                                     ops: list[tuple[str, int, int]], big: bool) -> None:
    assert _link._Flusher is not None, "xport._linkfast not built: run scripts/setup.sh"
    assert _run(True, start, tx_ring, ops, big) == _run(False, start, tx_ring, ops, big)


def test_c_flush_takes_the_common_case_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whole messages with credit: one C call, no Python flush step; a
    fragment hands the rest to Python (a tuple), a backlog all of it (None)."""
    be, kern, _ = make_fake(0, n_tx=8, tx_ring=2)
    be.statistics = lambda: BackendStats()  # type: ignore[method-assign]
    try:
        link = Link(be, LinkConfig(role=Role.AGENT, max_frame_size=PAYLOAD,
                                   initial_peer_credit=40), session=5)
        calls: list[str] = []
        real = link._flush_c
        assert real is not None

        def spy(lk: Link, now: float | None) -> Any:
            r = real(lk, now)
            calls.append(type(r).__name__)
            return r

        link._flush_c = spy
        for name in ("_send_packed", "_send_data_frames", "_flush_end"):
            orig = getattr(link, name)
            monkeypatch.setattr(link, name, lambda *a, _n=name, _o=orig: (calls.append(_n), _o(*a))[1])
        link.send_data(1, b"a" * 10)
        assert link.flush(1.0) == 1 and calls == ["int"]  # the HELLO and one DATA
        calls.clear()
        kern.transmit(8)
        link.send_data(1, b"b" * (3 * PAYLOAD))  # fragments: Python's loop goes on
        link.send_data(1, b"c" * 10)
        assert link.flush() == 2  # the ring takes 2 of the frames: the rest waits
        assert calls == ["tuple", "_send_packed", "_flush_end"] and link._backlog
        calls.clear()
        kern.transmit(8)
        link.flush()
        assert calls[0] == "NoneType"  # a backlog: Python's flush
    finally:
        be.close()
