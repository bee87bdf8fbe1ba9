"""inline_grant_rule (docs/protocol.md §5.2) against a sender that blocks.

A FIFO sender (one connection's parsed messages, in order) sends while its
credit covers the next message and blocks otherwise; the host consumes every
arrival inline and applies the rule. GRANT_LATER connections are granted by
the sweep (``HostConfig.credit_delay``), which here runs whenever the sender
is blocked and nothing is in flight. Properties: every message is delivered
(no deadlock), the sweep is only ever needed for byte credit below one
largest message, and the window is conserved at every step.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mux_rpc._offload import GRANT_HOLD, GRANT_LATER, GRANT_NOW, inline_grant_rule


@st.composite
def _case(draw: st.DrawFn) -> tuple[int, int, int, list[int], int]:
    max_size = draw(st.integers(1, 300))
    window_bytes = draw(st.integers(max_size, 4 * max_size))
    window_messages = draw(st.integers(1, 16))
    sizes = draw(st.lists(st.integers(0, max_size), min_size=1, max_size=60))
    in_flight_max = draw(st.integers(1, 8))  # messages the link carries at once
    return window_messages, window_bytes, max_size, sizes, in_flight_max


@settings(max_examples=500, deadline=None)
@given(_case())
def test_a_blocked_sender_always_gets_credit_back(case: tuple[int, int, int, list[int], int]) -> None:
    wm, wb, mx, sizes, in_flight_max = case
    # the sender's view, and the host's window (outstanding as the host counts it)
    s_msgs, s_bytes = wm, wb
    om, ob, pm, pb = wm, wb, 0, 0
    queue = list(sizes)
    in_flight: list[int] = []
    delivered: list[int] = []
    dirty = False
    sweeps = 0
    for _ in range(10 * len(sizes) + 10):  # each round moves something, or it is a deadlock
        # the sender: in order, while credit covers the head message
        while queue and len(in_flight) < in_flight_max and s_msgs >= 1 and queue[0] <= s_bytes:
            n = queue.pop(0)
            s_msgs -= 1
            s_bytes -= n
            in_flight.append(n)
        if in_flight:
            # the host receives one run (everything in flight) and consumes it inline
            run, in_flight = in_flight, []
            assert len(run) <= om and sum(run) <= ob  # the sender stayed within credit
            om -= len(run)
            ob -= sum(run)
            delivered += run
            pm += len(run)
            pb += sum(run)
            rule = inline_grant_rule(pm, pb, wm, wb, om, ob, mx)
            assert rule in (GRANT_NOW, GRANT_LATER, GRANT_HOLD)
            if rule is GRANT_NOW:
                om, ob, s_msgs, s_bytes = om + pm, ob + pb, s_msgs + pm, s_bytes + pb
                pm = pb = 0
                dirty = False
            elif rule is GRANT_LATER:
                assert ob < mx  # the sweep only for byte credit below a largest message
                dirty = True
        elif queue:
            # the sender is blocked with nothing in flight: only the sweep can help
            assert dirty, f"deadlock: {queue[0]} bytes wait, sender holds {s_msgs}/{s_bytes}"
            sweeps += 1
            om, ob, s_msgs, s_bytes = om + pm, ob + pb, s_msgs + pm, s_bytes + pb
            pm = pb = 0
            dirty = False
        else:
            break
        # the window is conserved; both ends agree once nothing is in flight
        assert om + pm == wm and ob + pb == wb
        assert (s_msgs, s_bytes) == (om, ob)
    assert delivered == sizes
    assert sweeps <= len(sizes)


@given(st.integers(1, 64), st.integers(1, 1 << 20))
def test_half_a_window_pending_always_goes_at_once(wm: int, wb: int) -> None:
    mx = wb
    assert inline_grant_rule((wm + 1) // 2, 0, wm, wb, wm, wb, mx) is GRANT_NOW
    assert inline_grant_rule(0, (wb + 1) // 2, wm, wb, wm, wb, mx) is GRANT_NOW
    assert inline_grant_rule(0, 0, wm, wb, 0, wb, mx) is GRANT_NOW  # out of message credit


def test_a_pipelining_client_with_plenty_of_credit_is_held() -> None:
    # the default windows (64 messages, 2 MiB; largest message 1 MiB): a run of
    # 8 small calls leaves the agent 56 messages and ~2 MiB: nothing to send yet
    wm, wb, mx = 64, 2 << 20, 1 << 20
    assert inline_grant_rule(8, 8 * 30, wm, wb, 56, wb - 8 * 30, mx) is GRANT_HOLD
    # ... until half a window is pending
    assert inline_grant_rule(32, 32 * 30, wm, wb, 32, wb - 32 * 30, mx) is GRANT_NOW
    # a 0.5 MB message done with, a 0.7 MB one still held by the application:
    # the agent is below one largest message of byte credit, so the sweep
    assert inline_grant_rule(1, 500_000, wm, wb, 62, wb - 1_200_000, mx) is GRANT_LATER
