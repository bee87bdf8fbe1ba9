"""Credit arithmetic (agent/_credit.py): property tests."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import CreditError, DrainTracker, RecvWindow, SendWindow


def test_send_window_basic() -> None:
    w = SendWindow(2, 100)
    assert w.fits(100)
    w.consume(60)
    assert not w.fits(41) and w.fits(40)
    w.consume(40)
    assert not w.fits(0)  # no message credit left
    w.grant(1, 10)
    assert w.fits(10) and not w.fits(11)
    with pytest.raises(CreditError):
        w.consume(11)
    with pytest.raises(CreditError):
        w.grant(-1, 0)


def test_send_window_large_message_goes_alone() -> None:
    w = SendWindow(4, 100)
    assert w.fits(500)  # nothing outstanding: may go alone
    w.consume(500)
    assert w.bytes == -400 and not w.fits(1)
    w.grant(1, 500)
    assert w.messages == 4 and w.bytes == 100


@settings(max_examples=300, deadline=None)
@given(wm=st.integers(1, 8), wb=st.integers(0, 1000),
       ops=st.lists(st.tuples(st.booleans(), st.integers(0, 1500)), max_size=60))
def test_send_window_never_over_spends(wm: int, wb: int, ops: list[tuple[bool, int]]) -> None:
    """A host that returns exactly what it received: outstanding stays within
    the window, except one message that went alone."""
    w = SendWindow(wm, wb)
    outstanding: list[int] = []
    for send, n in ops:
        if send:
            if w.fits(n):
                alone = not outstanding
                w.consume(n)
                outstanding.append(n)
                assert len(outstanding) <= wm
                assert sum(outstanding) <= wb or (alone and len(outstanding) == 1)
        elif outstanding:
            k = outstanding.pop(0)
            w.grant(1, k)
        assert w.messages == wm - len(outstanding)
        assert w.bytes == wb - sum(outstanding)


@settings(max_examples=300, deadline=None)
@given(wm=st.integers(1, 16), wb=st.integers(1, 4096), maxmsg=st.integers(1, 4096),
       sizes=st.lists(st.integers(0, 5000), max_size=80), seed=st.randoms())
def test_recv_window_host_following_rules_never_violates_and_never_deadlocks(
        wm: int, wb: int, maxmsg: int, sizes: list[int], seed: object) -> None:
    """A host that sends by the same rule as SendWindow never trips on_data; a
    host whose messages all drained always gets enough credit back to send."""
    rng = seed  # hypothesis Random
    r = RecvWindow(wm, wb, max_message=maxmsg)
    host = SendWindow(wm, wb)
    written: list[int] = []
    for n in sizes:
        n = min(n, maxmsg)
        # drain a random number of written messages first
        k = rng.randint(0, len(written))  # type: ignore[attr-defined]
        for _ in range(k):
            r.on_drained(1, written.pop(0))
        upd = r.take_update()
        if upd:
            host.grant(*upd)
        if not host.fits(n):
            # everything drains: an update must come that lets n through
            while written:
                r.on_drained(1, written.pop(0))
            upd = r.take_update()
            if upd:
                host.grant(*upd)
            assert host.fits(n), (n, host.messages, host.bytes, r.owed_messages)
        host.consume(n)
        r.on_data(n)
        written.append(n)
        assert host.messages == r.messages and host.bytes == r.bytes


def test_recv_window_violation() -> None:
    r = RecvWindow(2, 100, max_message=100)
    r.on_data(50)
    r.on_data(50)
    with pytest.raises(CreditError):
        r.on_data(0)  # no message credit
    r2 = RecvWindow(4, 100, max_message=100)
    r2.on_data(90)
    with pytest.raises(CreditError):
        r2.on_data(20)  # byte credit not whole, message does not fit


def test_recv_window_batches_updates() -> None:
    r = RecvWindow(64, 1 << 20, max_message=1 << 16)
    for _ in range(20):
        r.on_data(100)
    r.on_drained(1, 100)
    assert r.take_update() is None  # 1/64 owed, plenty left: batch
    for _ in range(15):
        r.on_drained(1, 100)
    assert r.take_update() == (16, 1600)  # a quarter of the messages
    assert r.take_update() is None
    r.on_drained(1, 100)
    assert r.take_update(force=True) == (1, 100)
    with pytest.raises(CreditError):
        r.on_drained(10, 0)  # more than was received


@settings(max_examples=300, deadline=None)
@given(writes=st.lists(st.tuples(st.integers(1, 500), st.integers(0, 400)), max_size=50),
       seed=st.randoms())
def test_drain_tracker(writes: list[tuple[int, int]], seed: object) -> None:
    t = DrainTracker()
    rng = seed
    buffered = 0
    done_m = done_b = 0
    for enc, pay in writes:
        t.wrote(enc, pay)
        buffered += enc
        buffered = rng.randint(0, buffered)  # type: ignore[attr-defined]
        m, b = t.drained(buffered)
        done_m += m
        done_b += b
        # exactly the messages whose last byte left the buffer, in order
        total = 0
        expect_m = expect_b = 0
        for e, p in writes:
            total += e
            if total > t.written:
                break
            if total <= t.written - buffered:
                expect_m += 1
                expect_b += p
        assert (done_m, done_b) == (expect_m, expect_b)
    m, b = t.drained(0)
    assert done_m + m == len(writes) and len(t) == 0
