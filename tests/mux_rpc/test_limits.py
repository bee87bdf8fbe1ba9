"""In-flight accounting: limits hold under any sequence of start/finish/wait."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mux_rpc import InflightLimits

ops = st.lists(st.tuples(st.sampled_from(["start", "finish", "wait", "cancel"]),
                         st.integers(0, 3)), max_size=60)


@given(st.integers(1, 4), st.integers(1, 6), ops)
def test_limits_never_exceeded_and_waiters_fifo(per: int, total: int,
                                                seq: list[tuple[str, int]]) -> None:
    lim = InflightLimits(per, total)
    held = {c: 0 for c in range(4)}
    woken: list[int] = []
    waiting: list[int] = []
    for op, c in seq:
        if op == "start":
            if lim.try_start(c):
                held[c] += 1
        elif op == "finish" and held[c]:
            lim.finish(c)
            held[c] -= 1
        elif op == "wait" and c not in waiting:
            waiting.append(c)

            def cb(c: int = c) -> None:
                woken.append(c)
                waiting.remove(c)
                held[c] += 1

            lim.wait(c, cb)
        elif op == "cancel" and c in waiting:
            assert lim.cancel_wait(c)
            waiting.remove(c)
        assert all(lim.inflight(k) == v <= per for k, v in held.items())
        assert lim.inflight() == sum(held.values()) <= total
        # nobody waits while a slot for them is free
        for w in waiting:
            assert not lim.can_start(w)


def test_finish_without_start_is_an_error() -> None:
    with pytest.raises(RuntimeError):
        InflightLimits(1, 1).finish(5)
    lim = InflightLimits(1, 1)
    lim.wait(1, lambda: None)  # slot free: woken at once
    assert lim.inflight(1) == 1
    lim.wait(1, lambda: None)
    with pytest.raises(RuntimeError, match="already waiting"):
        lim.wait(1, lambda: None)


def test_acquire_waits_and_cancel_returns_the_slot() -> None:
    async def main() -> None:
        lim = InflightLimits(1, 2)
        await lim.acquire(1)
        waiter = asyncio.ensure_future(lim.acquire(1))
        await asyncio.sleep(0.01)
        assert not waiter.done()
        lim.finish(1)
        await asyncio.wait_for(waiter, 1)
        assert lim.inflight(1) == 1
        stuck = asyncio.ensure_future(lim.acquire(1))
        await asyncio.sleep(0.01)
        lim.finish(1)  # slot reserved for `stuck` ...
        stuck.cancel()  # ... which is cancelled before it runs: the slot comes back
        with pytest.raises(asyncio.CancelledError):
            await stuck
        assert lim.inflight() == 0

    asyncio.run(main())


def test_has_room_respects_both_ceilings_and_the_queue() -> None:
    lim = InflightLimits(per_connection=1, total=2)
    assert lim.has_room(1)
    lim.start(1)
    assert not lim.has_room(1) and lim.has_room(2)  # per connection
    lim.start(2)
    assert not lim.has_room(3)  # total
    lim.wait(3, lambda: None)
    lim.finish(2)  # the slot goes to the waiter, not to a newcomer
    assert not lim.has_room(4)
