"""``AsyncLink.try_send_runs`` with the C accelerator (``xport._linkfast.queue_runs``)
against its pure-Python loop (``Link.accelerated = False``): for random runs
and credits (payload types and lengths mixed, messages larger than a frame
included, so runs split across frames and into fragments), both give the
same queue entries (the same objects), the same ``queued_bytes`` and
backpressure, then the same frames bit for bit, statistics and credit state
after the flushes. Inputs of other shapes (generators, lists for runs, bools,
out-of-range credit fields) take the Python loop, which queues them or raises
as before; a pushed-back call queues nothing either way. Skipped only when
``XPORT_PURE_PYTHON=1`` forces the fallback for the whole process."""

from __future__ import annotations

import asyncio
import os
import struct
from dataclasses import asdict
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xport import _link
from xport._link import AsyncLink, Link, LinkConfig
from xport.testing import memory_backend_pair

pytestmark = pytest.mark.skipif(
    os.environ.get("XPORT_PURE_PYTHON") == "1", reason="XPORT_PURE_PYTHON=1 forces the fallback"
)
SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FRAME = 300  # small frames: runs split across them, long payloads fragment (§2.2)

payload_st = st.one_of(
    st.binary(max_size=40),
    st.binary(min_size=200, max_size=700),  # a frame boundary inside, or fragments
    st.builds(bytearray, st.binary(max_size=30)),
    st.builds(memoryview, st.binary(max_size=30)),
)
runs_st = st.lists(
    st.tuples(st.integers(0, 2**32 - 1),
              st.one_of(st.lists(payload_st, max_size=6),
                        st.lists(payload_st, max_size=4).map(tuple))),
    max_size=8,
).map(lambda rs: [(c, list(p)) if i % 3 else (c, p) for i, (c, p) in enumerate(rs)])
credits_st = st.lists(
    st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
    max_size=4,
)


def _run(accelerated: bool, steps: list[tuple[list[Any], list[Any]]], credit: int) -> Any:
    async def main() -> Any:
        a_be, b_be = memory_backend_pair(rx_buffers=credit + 2, frame_size=FRAME)
        link = Link(a_be, LinkConfig(max_queued_bytes=1500, max_frames_per_flush=4,
                                     min_fragment=64), session=7)
        peer = Link(b_be, session=8)
        link.accelerated = accelerated
        alink = AsyncLink(link)
        alink._flush_scheduled = True  # flushed below, by hand
        out: list[Any] = []
        send = a_be.send_batch

        def record(frames: Any) -> int:
            out.append([bytes(f) for f in frames])
            return send(frames)

        a_be.send_batch = record  # type: ignore[method-assign]
        for runs, credits in steps:
            mark = len(link._queue)
            nb = sum(len(p) for _c, ps in runs for p in ps)
            ok = alink.try_send_runs(runs, credits, nb)
            entries = list(link._queue)[mark:]
            # the same objects (conn_id and payload), the same fresh CREDIT bodies
            shape = [(t, c, a, p if t == 8 else bytes(p), type(p), id(p) if t == 8 else 0)
                     for t, c, a, p in entries]
            out.append((ok, shape, link.queued_bytes, alink._blocked,
                        alink._writable.is_set()))
            for _ in range(3):  # flushes, the peer's credit coming back
                link.flush()
                peer.poll()
                peer.flush()
                link.poll()
        stats = asdict(link.stats)
        stats.pop("backend")
        lc = link.credit
        out.append((stats, {n: getattr(lc, n) for n in type(lc).__slots__},
                    [(t, c, a, bytes(p)) for t, c, a, p in link._queue], link._head_sent))
        alink.close()
        return out

    return asyncio.run(main())


@SETTINGS
@given(st.lists(st.tuples(runs_st, credits_st), min_size=1, max_size=4), st.integers(3, 8))
def test_same_queue_frames_and_state_with_and_without_c(
    steps: list[tuple[list[Any], list[Any]]], credit: int
) -> None:
    fast = _run(True, steps, credit)
    slow = _run(False, steps, credit)
    assert fast == slow


def test_the_accelerator_queues_the_hot_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    """queue_runs does the work for lists/tuples of runs (not a silent fallback)."""
    assert _link._queue_runs is not None
    calls: list[bool] = []
    real = _link._queue_runs

    def spy(*args: Any) -> bool:
        calls.append(real(*args))
        return calls[-1]

    monkeypatch.setattr(_link, "_queue_runs", spy)

    async def main() -> None:
        a_be, _b_be = memory_backend_pair()
        alink = AsyncLink(Link(a_be))
        assert alink.try_send_runs([(1, [b"a"]), (2, (b"b", b"c"))], [(1, 2, 3)], 3)
        assert alink.try_send_runs((), (), 0)
        assert alink.try_send_runs([[1, [b"a"]]], [], 1)  # a list as a run: Python's
        alink.close()

    asyncio.run(main())
    assert calls == [True, True, False]


@pytest.mark.parametrize("accelerated", [True, False])
def test_odd_inputs_go_to_the_python_loop(accelerated: bool) -> None:
    async def main() -> None:
        a_be, _b_be = memory_backend_pair()
        link = Link(a_be)
        link.accelerated = accelerated
        alink = AsyncLink(link)
        mark = len(link._queue)
        # generators, a list as a run, a bool: queued as the loop queues them
        assert alink.try_send_runs([[5, (p for p in [b"x", b"yz"])]], [(5, True, 2)], 3)
        assert list(link._queue)[mark:] == [(8, 5, 0, b"x"), (8, 5, 0, b"yz"),
                                            (11, 5, 0, struct.pack("!II", 1, 2))]
        mark = len(link._queue)
        with pytest.raises(struct.error):  # a credit field beyond u32: struct raises
            alink.try_send_runs([], [(1, 2**32, 0)], 0)
        with pytest.raises(struct.error):
            alink.try_send_runs([], [(1, -1, 0)], 0)
        with pytest.raises(ValueError):  # not a (conn_id, payloads) pair
            alink.try_send_runs([(1, [b"a"], 3)], [], 1)
        assert len(link._queue) == mark
        alink.close()

    asyncio.run(main())


@pytest.mark.parametrize("accelerated", [True, False])
def test_backpressure_all_or_nothing(accelerated: bool) -> None:
    async def main() -> None:
        a_be, _b_be = memory_backend_pair()
        link = Link(a_be, LinkConfig(max_queued_bytes=100))
        link.accelerated = accelerated
        alink = AsyncLink(link)
        q0 = link.queued_bytes
        # over the limit after this call: queued, and the link blocks
        assert alink.try_send_runs([(1, [bytes(90), bytes(20)])], [(1, 1, 1)], 110)
        assert link.queued_bytes == q0 + 118
        assert alink._blocked and not alink._writable.is_set()
        before = list(link._queue)
        assert not alink.try_send_runs([(2, [b"x"])], [(2, 1, 1)], 1)
        assert list(link._queue) == before and link.queued_bytes == q0 + 118
        alink.close()
        assert not alink.try_send_runs([(2, [b"x"])], [], 1)  # closed: nothing

    asyncio.run(main())
