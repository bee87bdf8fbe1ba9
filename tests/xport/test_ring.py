"""Ring index arithmetic: u32 wraparound, all-or-nothing reserve, in-order release."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xport._ring import (
    U32_MASK,
    ConsumerRing,
    ProducerRing,
    ReleaseTracker,
    check_ring_size,
    ring_free,
    ring_used,
)

NEAR_WRAP = st.integers(min_value=2**32 - 4096, max_value=2**32 - 1) | st.integers(0, 4096)
SIZES = st.sampled_from([1, 2, 4, 8, 64, 1024])


class Shared:
    """The two shared u32 indices of one ring."""

    def __init__(self, start: int) -> None:
        self.prod = start & U32_MASK
        self.cons = start & U32_MASK

    def pair(self, size: int) -> tuple[ProducerRing, ConsumerRing]:
        def sp(v: int) -> None:
            self.prod = v

        def sc(v: int) -> None:
            self.cons = v

        p = ProducerRing(size, self.prod, self.cons, lambda: self.cons, sp)
        c = ConsumerRing(size, self.prod, self.cons, lambda: self.prod, sc)
        return p, c


def test_counts_across_wrap() -> None:
    assert ring_used(3, 2**32 - 2) == 5
    assert ring_free(3, 2**32 - 2, 8) == 3
    assert ring_used(7, 7) == 0
    assert ring_free(2**32 - 1, 2**32 - 1, 16) == 16


@pytest.mark.parametrize("bad", [0, 3, 6, -1, 2**32, 1.0])
def test_bad_sizes(bad: object) -> None:
    with pytest.raises(ValueError):
        check_ring_size(bad)  # type: ignore[arg-type]


def test_reserve_all_or_nothing() -> None:
    sh = Shared(2**32 - 3)
    p, c = sh.pair(8)
    assert p.reserve(9) == (0, 0)
    assert p.reserve(5) == (5, 2**32 - 3)
    p.submit()
    assert sh.prod == 2  # wrapped
    assert p.reserve(4) == (0, 0)  # only 3 free: nothing, not 3
    assert p.free(4) == 3
    assert p.reserve(3) == (3, 2)
    p.submit()
    assert p.free() == 0
    assert c.peek(100) == (8, 2**32 - 3)
    assert p.free() == 0  # not released yet
    c.release(2)
    assert p.free() == 2
    with pytest.raises(ValueError):
        c.release(7)


@settings(max_examples=300, deadline=None)
@given(start=NEAR_WRAP, size=SIZES, ops=st.lists(
    st.tuples(st.booleans(), st.integers(0, 70)), max_size=60))
def test_model(start: int, size: int, ops: list[tuple[bool, int]]) -> None:
    """Random produce/consume sequences agree with an unbounded-integer model."""
    sh = Shared(start)
    p, c = sh.pair(size)
    produced = consumed = 0  # model: plain integers, no wrap
    fifo: list[int] = []
    storage = [-1] * size
    for produce, n in ops:
        if produce:
            free = size - (produced - consumed)
            assert p.free(n) == free or p.free(n) >= min(n, free)
            got, idx = p.reserve(n)
            if n == 0 or n > free:
                assert got == 0
                continue
            assert got == n and idx == (start + produced) & U32_MASK
            for i in range(n):
                storage[(idx + i) & p.mask] = produced + i
                fifo.append(produced + i)
            p.submit()
            produced += n
        else:
            got, idx = c.peek(n)
            assert got == min(n, produced - consumed)
            assert idx == ((start + consumed) & U32_MASK if got else 0)
            for i in range(got):
                assert storage[(idx + i) & c.mask] == fifo.pop(0)
            c.release(got)
            consumed += got
        assert ring_used(sh.prod, sh.cons) == produced - consumed
        assert 0 <= produced - consumed <= size
        assert sh.prod == (start + produced) & U32_MASK
        assert sh.cons == (start + consumed) & U32_MASK


@settings(max_examples=200, deadline=None)
@given(start=NEAR_WRAP, order=st.permutations(list(range(12))))
def test_release_tracker_out_of_order(start: int, order: list[int]) -> None:
    t = ReleaseTracker(start)
    released: set[int] = set()
    total = 0
    for k in order:
        released.add(k)
        adv = t.release((start + k) & U32_MASK)
        total += adv
        prefix = 0
        while prefix in released:
            prefix += 1
        assert total == prefix
        assert t.head == (start + prefix) & U32_MASK
    assert total == 12 and t.outstanding_out_of_order == 0


def test_consumer_detects_corrupt_producer() -> None:
    sh = Shared(0)
    _, c = sh.pair(4)
    sh.prod = 9
    with pytest.raises(RuntimeError):
        c.peek(1)
