"""AsyncLink.try_send_runs: a whole receive batch's output (mux_rpc's run
engine) queued with one backpressure check - the same link entries, in the
same order, as the try_send_many / try_send_credit calls it stands for."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xport import AsyncLink, Credit, Data, LinkConfig
from xport._link import Link, _RunSender
from xport.testing import memory_backend_pair, memory_link_pair

runs_st = st.lists(
    st.tuples(st.integers(0, 2**32 - 1), st.lists(st.binary(max_size=40), min_size=1, max_size=5)),
    max_size=6,
)
credits_st = st.lists(
    st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
    max_size=4,
)


@settings(max_examples=60, deadline=None)
@given(runs=runs_st, credits=credits_st)
def test_same_entries_as_one_call_each(runs: list[tuple[int, list[bytes]]],
                                       credits: list[tuple[int, int, int]]) -> None:
    async def main() -> None:
        (a1, _b1), (a2, _b2) = memory_link_pair(), memory_link_pair()
        one, each = AsyncLink(a1), AsyncLink(a2)
        nb = sum(len(p) for _, ps in runs for p in ps)
        # each link queued its own HELLO (a random session) first
        h1, h2, q1 = len(a1._queue), len(a2._queue), a1.queued_bytes
        assert one.try_send_runs(runs, credits, nb)
        for cid, ps in runs:
            assert each.try_send_many(cid, ps) == len(ps)
        for cid, m, b in credits:
            assert each.try_send_credit(cid, m, b)
        assert list(a1._queue)[h1:] == list(a2._queue)[h2:]
        assert a1.queued_bytes - q1 == nb + 8 * len(credits)
        assert a1.queued_bytes == a2.queued_bytes
        one.close()
        each.close()

    asyncio.run(main())


def test_pushes_back_whole_and_delivers_in_order() -> None:
    async def main() -> None:
        a_be, b_be = memory_backend_pair(rx_buffers=64)
        a_link = Link(a_be, LinkConfig(max_queued_bytes=100))
        got: list[object] = []
        a = AsyncLink(a_link)
        b = AsyncLink(Link(b_be), on_messages=got.extend)
        a.send_data(9, bytes(150))  # over max_queued_bytes: the link pushes back
        before = list(a_link._queue)
        assert not a.try_send_runs([(1, [b"x"])], [(1, 1, 1)], 1)
        assert list(a_link._queue) == before  # nothing queued
        await a.drain()
        assert a.try_send_runs([(1, [b"a", b"b"]), (2, [b"c"]), (1, [b"d"])], [(1, 3, 3), (2, 1, 1)], 4)
        for _ in range(100):
            if len(got) >= 7:
                break
            await asyncio.sleep(0.005)
        assert got == [Data(9, bytes(150)), Data(1, b"a"), Data(1, b"b"), Data(2, b"c"),
                       Data(1, b"d"), Credit(1, 3, 3), Credit(2, 1, 1)]
        a.close()
        b.close()

    asyncio.run(main())


# -- the C sender (AsyncLink.run_sender -> xport._linkfast.RunSender) ---------------------

needs_c = pytest.mark.skipif(_RunSender is None, reason="xport._linkfast is not built")


def _state(alink: AsyncLink, mark: int) -> tuple[object, ...]:
    link = alink.link
    return (list(link._queue)[mark:], link.queued_bytes, alink._blocked,
            alink._writable.is_set(), alink._flush_scheduled)


@needs_c
@settings(max_examples=80, deadline=None)
@given(runs=runs_st, credits=credits_st,
       room=st.integers(-1, 400), closed=st.booleans(), scheduled=st.booleans(),
       shape=st.sampled_from(["lists", "credits as a tuple", "payloads as a generator",
                              "a huge nbytes", "a bad credit"]))
def test_the_c_sender_does_what_try_send_runs_does(
        runs: list[tuple[int, list[bytes]]], credits: list[tuple[int, int, int]], room: int,
        closed: bool, scheduled: bool, shape: str) -> None:
    async def main() -> None:
        (a1, _b1), (a2, _b2) = memory_link_pair(), memory_link_pair()
        py, c = AsyncLink(a1), AsyncLink(a2)
        sender = c.run_sender()
        assert type(sender) is _RunSender and py.run_sender() is not None
        nb = sum(len(p) for _, ps in runs for p in ps)
        args: list[Any] = [runs, credits, nb]
        if shape == "credits as a tuple":
            args[1] = tuple(credits)
        elif shape == "payloads as a generator" and runs:
            args[0] = [(runs[0][0], (p for p in runs[0][1])), *runs[1:]]
        elif shape == "a huge nbytes":
            args[2] = nb + 2**70
        elif shape == "a bad credit":
            args[1] = [*credits, (1, -1, 0)]
        marks = []
        for al in (py, c):
            await asyncio.sleep(0)  # the flush scheduled at start has run
            al._max_queued = al.link.queued_bytes + room
            al._closed = closed
            al._flush_scheduled = scheduled
            marks.append(len(al.link._queue))
        outcome = []
        for al, call in ((py, py.try_send_runs), (c, sender)):
            fresh = list(args)
            if shape == "payloads as a generator" and runs:
                fresh[0] = [(runs[0][0], (p for p in runs[0][1])), *runs[1:]]
            try:
                got: Any = call(*fresh)
            except Exception as exc:  # noqa: BLE001 - the same error both ways
                got = (type(exc), str(exc))
            outcome.append((got, _state(al, marks[len(outcome)])))
        assert outcome[0] == outcome[1]
        for al in (py, c):
            al._closed = False
            al.close()

    asyncio.run(main())


@needs_c
def test_the_c_sender_pushes_back_like_the_method() -> None:
    async def main() -> None:
        (a, _b) = memory_link_pair()
        al = AsyncLink(a)
        send = al.run_sender()
        await asyncio.sleep(0)
        al._max_queued = al.link.queued_bytes + 10
        assert send([(1, [b"x" * 20])], [(1, 1, 20)], 20) is True  # over it now: blocked
        assert al._blocked and not al._writable.is_set()
        assert send([(1, [b"y"])], [], 1) is False  # pushed back, nothing queued
        with pytest.raises(TypeError, match=r"run_sender\(runs, credits, nbytes\)"):
            send([], [])
        al.close()

    asyncio.run(main())


def test_run_sender_is_the_method_without_the_c_link() -> None:
    async def main() -> None:
        (a, _b) = memory_link_pair()
        a.accelerated = False
        al = AsyncLink(a)
        assert al.run_sender() == al.try_send_runs
        al.close()

    asyncio.run(main())
