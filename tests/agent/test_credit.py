"""Drain tracking (agent/_credit.py) and the agent's use of xport._flow: property tests.

The window arithmetic itself is xport._flow's (tests/xport/test_flow.py);
here: drained host messages map back exactly, and a host that follows the
grants never violates the agent's window and never stalls for good.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agent import DrainTracker
from xport._flow import ReceiveWindow, SendWindow


def _drive(wm: int, extra: int, maxmsg: int, sizes: list[int], rng: Any,
           hold_back: bool) -> None:
    """The agent's loop: host DATA -> write -> drain (random) -> on_consumed
    per drained message -> one CREDIT with the sum. The host's SendWindow
    starts at the agent's HELLO window. ``hold_back``: a grant that is not
    urgent (ReceiveWindow.sender_may_be_blocked) is held back - and never sent on its own, the
    worst case of AgentConfig.credit_delay (no timer, no frame to ride): it
    reaches the host only inside a later urgent grant."""
    wb = maxmsg + extra
    recv = ReceiveWindow(wm, wb, max_message_size=maxmsg)
    host = SendWindow(*recv.initial_grant(), max_message_size=maxmsg)
    tracker = DrainTracker()
    buffered = 0
    held_m = held_b = 0  # granted, not sent
    for size in (min(s, maxmsg) for s in sizes):
        while not host.can_send(size):
            # the client drains everything eventually: the grants must unblock the host
            assert tracker, "host blocked with nothing left to drain: deadlock"
            buffered = rng.randint(0, buffered - 1) if buffered else 0
            gm = gb = 0
            for n in tracker.drained(buffered):
                g = recv.on_consumed(n)
                if g is not None:
                    gm, gb = gm + g[0], gb + g[1]
            if not gm:
                continue
            if not hold_back or recv.sender_may_be_blocked(gm + held_m, gb + held_b):
                host.grant(gm + held_m, gb + held_b)  # what waited goes along
                held_m = held_b = 0
            else:
                held_m, held_b = held_m + gm, held_b + gb
                assert host.can_send(maxmsg)  # held only while the host can send anything
        host.consume(size)
        recv.on_received(size)  # never a violation
        tracker.wrote(size + 4, size)
        buffered += size + 4
        assert recv.buffered_messages <= wm and recv.buffered_bytes <= wb
        # the host never holds credit the agent did not grant
        assert (host.messages + held_m, host.bytes + held_b) \
            == (recv.outstanding_messages, recv.outstanding_bytes)


_WINDOWS = {"wm": st.integers(1, 64), "extra": st.integers(0, 4096),
            "maxmsg": st.integers(1, 4096),
            "sizes": st.lists(st.integers(0, 4096), max_size=200), "seed": st.randoms()}


@settings(max_examples=200, deadline=None)
@given(**_WINDOWS)
def test_drained_grants_keep_a_host_within_the_window_and_never_stall(
        wm: int, extra: int, maxmsg: int, sizes: list[int], seed: Any) -> None:
    _drive(wm, extra, maxmsg, sizes, seed, hold_back=False)


@settings(max_examples=300, deadline=None)
@given(**_WINDOWS)
def test_grants_held_back_never_stall_the_host(
        wm: int, extra: int, maxmsg: int, sizes: list[int], seed: Any) -> None:
    _drive(wm, extra, maxmsg, sizes, seed, hold_back=True)


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
        sizes = t.drained(buffered)
        done_m += len(sizes)
        done_b += sum(sizes)
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
    assert done_m + len(t.drained(0)) == len(writes) and len(t) == 0
