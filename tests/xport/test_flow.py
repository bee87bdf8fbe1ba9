"""Connection-level credit (xport._flow): unit rules and a sender/receiver model."""

from __future__ import annotations

from collections import deque

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from xport._flow import FlowControlError, ReceiveWindow, SendWindow


def test_byte_window_must_hold_the_largest_message() -> None:
    with pytest.raises(ValueError):
        ReceiveWindow(4, 99, max_message_size=100)
    with pytest.raises(ValueError):
        ReceiveWindow(0, 100, max_message_size=100)


def test_message_sendable_when_its_bytes_fit() -> None:
    w = SendWindow(1, 10, max_message_size=100)
    assert w.can_send(10) and not w.can_send(11)
    w.consume(10)
    assert not w.can_send(0) and w.blocked
    with pytest.raises(FlowControlError) as info:
        w.consume(0)
    assert info.value.reason == "no_credit"
    with pytest.raises(ValueError):
        w.can_send(101)


def test_over_grant_rejected() -> None:
    w = SendWindow(max_message_size=10, max_window=100)
    w.grant(100, 100)
    with pytest.raises(FlowControlError) as info:
        w.grant(1, 0)
    assert info.value.reason == "over_grant"


def test_receiver_detects_credit_violation() -> None:
    r = ReceiveWindow(2, 100, max_message_size=100)
    assert r.initial_grant() == (2, 100)
    r.on_received(60)
    with pytest.raises(FlowControlError) as info:
        r.on_received(41)
    assert info.value.reason == "credit_violation"


def test_grants_are_batched_at_half_window() -> None:
    r = ReceiveWindow(8, 10_000, max_message_size=100)
    r.initial_grant()
    for _ in range(4):
        r.on_received(10)
    assert r.on_consumed(10) is None
    assert r.on_consumed(10) is None
    assert r.on_consumed(10) is None
    assert r.on_consumed(10) == (4, 40)


class Conn(RuleBasedStateMachine):
    """never over-grant, never deadlock with work pending, never lose or reorder."""

    @initialize(
        wm=st.integers(1, 6),
        max_msg=st.integers(0, 50),
        extra=st.integers(0, 100),
        ratio=st.sampled_from([0.25, 0.5, 1.0]),
    )
    def setup(self, wm: int, max_msg: int, extra: int, ratio: float) -> None:
        self.max_msg = max_msg
        self.rx = ReceiveWindow(wm, max_msg + extra, max_message_size=max_msg, update_ratio=ratio)
        self.tx = SendWindow(max_message_size=max_msg, max_window=max(wm, max_msg + extra))
        self.to_rx: deque[tuple[str, int, int]] = deque([("credit", *self.rx.initial_grant())])
        self.queue: deque[tuple[int, int]] = deque()  # (id, size) waiting for credit
        self.to_app: deque[tuple[str, int, int]] = deque()  # data in flight to the receiver
        self.app: deque[tuple[int, int]] = deque()  # received, not consumed
        self.next_id = 0
        self.expect_id = 0

    @rule(size=st.integers(0, 50))
    def produce(self, size: int) -> None:
        self.queue.append((self.next_id, min(size, self.max_msg)))
        self.next_id += 1

    def _send(self) -> bool:
        if self.queue and self.tx.can_send(self.queue[0][1]):
            mid, size = self.queue.popleft()
            self.tx.consume(size)
            self.to_app.append(("data", mid, size))
            return True
        return False

    def _deliver_data(self) -> bool:
        if not self.to_app:
            return False
        _, mid, size = self.to_app.popleft()
        self.rx.on_received(size)  # raises on a credit violation
        assert mid == self.expect_id, "message lost or reordered"
        self.expect_id += 1
        self.app.append((mid, size))
        return True

    def _consume(self) -> bool:
        if not self.app:
            return False
        _, size = self.app.popleft()
        grant = self.rx.on_consumed(size)
        if grant is not None:
            self.to_rx.append(("credit", *grant))
        return True

    def _deliver_credit(self) -> bool:
        if not self.to_rx:
            return False
        _, m, b = self.to_rx.popleft()
        self.tx.grant(m, b)
        return True

    @rule()
    def send(self) -> None:
        self._send()

    @rule()
    def deliver_data(self) -> None:
        self._deliver_data()

    @rule()
    def consume(self) -> None:
        self._consume()

    @rule()
    def deliver_credit(self) -> None:
        self._deliver_credit()

    @invariant()
    def window_conserved(self) -> None:
        rx, tx = self.rx, self.tx
        in_flight_m = len(self.to_app)
        in_flight_b = sum(s for _, _, s in self.to_app)
        granted_m = sum(m for _, m, _ in self.to_rx)
        granted_b = sum(b for _, _, b in self.to_rx)
        # credit held by the sender + in flight both ways == receiver's outstanding
        assert tx.messages + in_flight_m + granted_m == rx.outstanding_messages
        assert tx.bytes + in_flight_b + granted_b == rx.outstanding_bytes
        assert (
            rx.outstanding_messages + rx.buffered_messages + rx.pending_messages
            == rx.window_messages
        )
        assert rx.outstanding_bytes + rx.buffered_bytes + rx.pending_bytes == rx.window_bytes
        # memory bounded: never more buffered than the window
        assert len(self.app) <= rx.window_messages

    def teardown(self) -> None:
        if not hasattr(self, "rx"):
            return
        for _ in range(100_000):
            if not (self._send() | self._deliver_data() | self._consume() | self._deliver_credit()):
                break
        assert not self.queue, "deadlock: messages wait and no credit comes"
        assert self.expect_id == self.next_id


TestConn = Conn.TestCase
TestConn.settings = settings(max_examples=300, stateful_step_count=50, deadline=None)
