"""Link-level credits (xport._linkcredit): arithmetic and a two-endpoint model."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from xport._linkcredit import LinkCredit, unwrap_u32

MASK = 0xFFFFFFFF


@given(st.integers(0, 1 << 40), st.integers(-(1 << 31) + 1, (1 << 31) - 1))
def test_unwrap_u32_recovers_nearby_counter(last: int, step: int) -> None:
    value = last + step
    assert unwrap_u32(last, value & MASK) == value


def test_data_leaves_reserve_and_credit_only_uses_it() -> None:
    lc = LinkCredit(reserve=2, initial_peer_credit=3)
    assert lc.data_credit() == 1
    lc.on_data_sent()
    assert lc.data_credit() == 0
    with pytest.raises(ValueError):
        lc.on_data_sent()
    assert lc.co_credit() == 2
    lc.on_credit_only_sent()
    lc.on_credit_only_sent()
    assert lc.co_credit() == 0
    with pytest.raises(ValueError):
        lc.on_credit_only_sent()
    assert lc.sent == 3  # exactly the assumed posted buffers, never more


def test_credit_only_frames_do_not_cause_credit_only_frames() -> None:
    lc = LinkCredit(reserve=2, initial_peer_credit=8, update_threshold=1)
    lc.advertise(8)
    # a credit-only frame arrives and is released: P and A move together
    assert lc.on_frame(0, 8, 0, True) is None
    lc.on_credit_only_released()
    assert not lc.want_credit_only(9)


def test_seq_gap_and_credit_regress_are_reported() -> None:
    lc = LinkCredit()
    assert lc.on_frame(0, 10, 0, False) is None
    assert lc.on_frame(5, 10, 0, False) == "seq_gap"
    assert lc.on_frame(6, 9, 0, False) == "credit_regress"
    assert lc.peer_posted == 10


@pytest.mark.parametrize(
    "kwargs",
    [{"reserve": 0}, {"reserve": 2, "initial_peer_credit": 2}, {"update_threshold": 0}],
)
def test_bad_configuration_rejected(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        LinkCredit(**kwargs)


# --- model: two endpoints, finite receive buffers, random scheduling ----------


@dataclass
class Frame:
    seq: int
    credit: int
    ack: int
    credit_only: bool
    payload: int | None


@dataclass
class End:
    credit: LinkCredit
    ring: int
    base: int
    free: int
    posted: int  # unwrapped, like backend.rx_buffers_posted()
    pending: deque[int] = field(default_factory=deque)
    held: deque[int] = field(default_factory=deque)
    next_payload: int = 0
    expect_payload: int = 0
    co_frames_sent: int = 0


class TwoEnds(RuleBasedStateMachine):
    """Never a drop, never a deadlock with data pending, every frame in order."""

    @initialize(
        reserve=st.integers(1, 3),
        extra=st.integers(0, 6),
        threshold=st.integers(1, 8),
        wrap=st.booleans(),
        hold=st.booleans(),
    )
    def setup(self, reserve: int, extra: int, threshold: int, wrap: bool, hold: bool) -> None:
        ring = reserve + 1 + extra
        base = (1 << 32) - 7 if wrap else 0
        self.hold = hold
        self.ends = [
            End(
                LinkCredit(
                    reserve=reserve,
                    initial_peer_credit=reserve + 1,
                    update_threshold=threshold,
                    counter_base=base,
                ),
                ring,
                base,
                ring,
                base + ring,
            )
            for _ in range(2)
        ]
        self.chan: list[deque[Frame]] = [deque(), deque()]  # chan[i]: frames towards end i

    # -- actions -----------------------------------------------------------
    def _send_one(self, i: int) -> bool:
        e = self.ends[i]
        lc = e.credit
        if e.pending and lc.data_credit() >= 1:
            seq = lc.next_seq
            credit, ack = lc.advertise(e.posted)
            lc.on_data_sent()
            self.chan[1 - i].append(Frame(seq, credit, ack, False, e.pending.popleft()))
            return True
        if lc.want_credit_only(e.posted):
            seq = lc.next_seq
            credit, ack = lc.advertise(e.posted)
            lc.on_credit_only_sent()
            e.co_frames_sent += 1
            self.chan[1 - i].append(Frame(seq, credit, ack, True, None))
            return True
        return False

    def _release(self, e: End) -> None:
        e.held.popleft()
        e.free += 1
        e.posted += 1

    def _deliver(self, i: int) -> None:
        e = self.ends[i]
        f = self.chan[i].popleft()
        # the whole point: a frame never arrives to an empty fill ring
        assert e.free >= 1, "frame dropped: no receive buffer posted"
        e.free -= 1
        assert e.credit.on_frame(f.seq, f.credit, f.ack, f.credit_only) is None
        if f.credit_only:
            e.free += 1
            e.posted += 1
            e.credit.on_credit_only_released()
        else:
            assert f.payload == e.expect_payload, "frame out of order"
            e.expect_payload += 1
            e.held.append(f.payload)  # type: ignore[arg-type]
            if not self.hold:
                self._release(e)

    @rule(i=st.integers(0, 1), k=st.integers(1, 20))
    def produce(self, i: int, k: int) -> None:
        e = self.ends[i]
        for _ in range(k):
            e.pending.append(e.next_payload)
            e.next_payload += 1

    @rule(i=st.integers(0, 1), n=st.integers(1, 8))
    def send(self, i: int, n: int) -> None:
        for _ in range(n):
            if not self._send_one(i):
                break

    @rule(i=st.integers(0, 1), n=st.integers(1, 8))
    def deliver(self, i: int, n: int) -> None:
        for _ in range(min(n, len(self.chan[i]))):
            self._deliver(i)

    @precondition(lambda self: self.hold)
    @rule(i=st.integers(0, 1), n=st.integers(1, 8))
    def release(self, i: int, n: int) -> None:
        e = self.ends[i]
        for _ in range(min(n, len(e.held))):
            self._release(e)

    # -- invariants --------------------------------------------------------
    @invariant()
    def in_flight_within_posted_buffers(self) -> None:
        for i in (0, 1):
            e = self.ends[i]
            assert len(self.chan[i]) <= e.free
            assert e.free + len(e.held) == e.ring

    def teardown(self) -> None:
        """Fair scheduling from here: everything pending is delivered, then quiet."""
        if not hasattr(self, "ends"):
            return
        quiet_rounds = 0
        for _ in range(10_000):
            moved = False
            for i in (0, 1):
                e = self.ends[i]
                while e.held:
                    self._release(e)
                while self._send_one(1 - i):
                    moved = True
                while self.chan[i]:
                    self._deliver(i)
                    moved = True
            if not moved:
                quiet_rounds += 1
                if quiet_rounds > 2:
                    break
            else:
                quiet_rounds = 0
        else:
            raise AssertionError("credit-only frames never stop (livelock)")
        for e in self.ends:
            assert not e.pending, "deadlock: data pending and nothing moves"
        for i in (0, 1):
            assert self.ends[i].expect_payload == self.ends[1 - i].next_payload


TestTwoEnds = TwoEnds.TestCase
TestTwoEnds.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)


@given(
    st.integers(0, 1 << 40),
    st.integers(0, 1 << 20),
    st.integers(0, 1 << 20),
    st.integers(-(1 << 33), 1 << 33),
)
def test_advertise_is_local_then_recorded(base: int, co_rx: int, adv_ack: int, step: int) -> None:
    """advertise (unwrap inlined) returns and records what _local computes,
    the reference: P never steps back, A clamped so P - A never decreases."""
    lc = LinkCredit(counter_base=base)
    lc.co_rx = base + co_rx
    lc.adv_ack = base + min(adv_ack, co_rx)
    posted = (lc.adv_posted + step) & 0xFFFFFFFF
    p, a = lc._local(posted)
    assert lc.advertise(posted) == (p & 0xFFFFFFFF, a & 0xFFFFFFFF)
    assert (lc.adv_posted, lc.adv_ack) == (p, a)
    assert p >= base + 4
