"""AsyncLink.try_send_runs: a whole receive batch's output (mux_rpc's run
engine) queued with one backpressure check - the same link entries, in the
same order, as the try_send_many / try_send_credit calls it stands for."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from xport import AsyncLink, Credit, Data, LinkConfig
from xport._link import Link
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
