"""The link handshake (docs/protocol.md §3.1): HELLO resent until acknowledged,
duplicates absorbed, a new session = the peer restarted (per-peer state reset).

Fake clock, in-memory backends, no sleeping. A peer "not bound yet" is a
backend whose frames go nowhere; a restarted peer is a new backend and a new
Link (new session) wired to the surviving end.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xport._link import Link, LinkConfig
from xport._protocol import Data, Hello, Message, Role, encode
from xport._wire import FRAME_HEADER_SIZE, pack_frame_header
from xport.testing import FakeClock, MemoryBackend

AGENT = LinkConfig(role=Role.AGENT)
HOST = LinkConfig(role=Role.HOST, local_mac=b"\2\0\0\0\0\2", peer_mac=b"\2\0\0\0\0\1")


def wire(a: MemoryBackend, b: MemoryBackend) -> None:
    a._connect(b)
    b._connect(a)


def settle(a: Link, b: Link, clock: FakeClock, steps: int = 40) -> tuple[list[Message], list[Message]]:
    """Tick, flush and poll both ends for ``steps`` fake-clock steps of 10 ms."""
    got_a: list[Message] = []
    got_b: list[Message] = []
    for _ in range(steps):
        now = clock.advance(0.01)
        for link in (a, b):
            link.tick(now)
        for _ in range(50):
            moved = a.flush(now) + b.flush(now)
            ra, rb = a.poll(now=now), b.poll(now=now)
            got_a += ra
            got_b += rb
            if not moved and not ra and not rb:
                break
    return got_a, got_b


def test_hello_carries_session_and_windows() -> None:
    clock = FakeClock()
    ab, bb = MemoryBackend(), MemoryBackend()
    wire(ab, bb)
    a = Link(ab, AGENT, now=0.0, session=0xA)
    b = Link(bb, LinkConfig(role=Role.HOST, window_messages=7, window_bytes=3 << 20), now=0.0,
             session=0xB)
    settle(a, b, clock)
    assert a.established and b.established
    assert a.peer_session == 0xB and b.peer_session == 0xA
    assert a.peer_hello is not None and a.peer_hello.peer_session in (0, 0xA)
    assert (a.peer_hello.window_messages, a.peer_hello.window_bytes) == (7, 3 << 20)
    assert b.peer_hello is not None
    assert b.peer_hello.window_bytes == 2 * AGENT.max_message_size  # the default: 2x
    assert a.peer_restarts == b.peer_restarts == 0


def test_hello_lost_at_startup_peer_binds_late() -> None:
    clock = FakeClock()
    ab, bb = MemoryBackend(), MemoryBackend()
    a = Link(ab, AGENT, now=0.0)
    # a's HELLO (and resends) go nowhere: the peer's socket is not bound yet
    for _ in range(30):
        now = clock.advance(0.01)
        a.tick(now)
        a.flush(now)
    assert ab.statistics().tx_frames >= 2 and not a.established
    wire(ab, bb)
    b = Link(bb, HOST, now=clock.now())
    seen: list[tuple[int, bool]] = []
    a.on_peer_hello = lambda h, restarted: seen.append((h.session, restarted))
    settle(a, b, clock)
    assert a.established and b.established
    assert seen == [(b.session, False)]
    # and the link carries traffic both ways, nothing dropped
    for i in range(200):
        a.send(Data(1, b"x%d" % i))
        b.send(Data(2, b"y%d" % i))
    got_a, got_b = settle(a, b, clock)
    assert [bytes(m.payload) for m in got_b if isinstance(m, Data)] == [b"x%d" % i for i in range(200)]
    assert [bytes(m.payload) for m in got_a if isinstance(m, Data)] == [b"y%d" % i for i in range(200)]
    assert ab.statistics().rx_fill_empty == bb.statistics().rx_fill_empty == 0
    assert b.statistics().dropped == {}  # the late peer adopted a's sequence without a gap


def test_resends_stop_once_established() -> None:
    clock = FakeClock()
    ab, bb = MemoryBackend(), MemoryBackend()
    wire(ab, bb)
    a, b = Link(ab, AGENT), Link(bb, HOST)
    settle(a, b, clock)
    assert a.established and b.established
    hellos = a.stats.hellos_out, b.stats.hellos_out
    settle(a, b, clock, steps=50)
    assert (a.stats.hellos_out, b.stats.hellos_out) == hellos


def test_duplicate_hello_is_absorbed() -> None:
    clock = FakeClock()
    ab, bb = MemoryBackend(), MemoryBackend()
    wire(ab, bb)
    a, b = Link(ab, AGENT), Link(bb, HOST)
    events: list[bool] = []
    a.on_peer_hello = lambda h, restarted: events.append(restarted)
    settle(a, b, clock)
    # b says HELLO again (same session), e.g. a resend that crossed our ack
    b._queue_hello()
    b._queue_hello()
    got_a, _ = settle(a, b, clock)
    assert events == [False]
    assert a.peer_restarts == 0 and got_a == []
    assert a.established and b.established


def _restart_b(a: Link, ab: MemoryBackend, rx_buffers: int, clock: FakeClock) -> tuple[Link, MemoryBackend]:
    bb = MemoryBackend(rx_buffers=rx_buffers)
    wire(ab, bb)
    return Link(bb, HOST, now=clock.now()), bb


def test_new_session_is_one_restart_and_resets_credit() -> None:
    clock = FakeClock()
    n = 8
    ab, bb = MemoryBackend(rx_buffers=n), MemoryBackend(rx_buffers=n)
    wire(ab, bb)
    a, b = Link(ab, AGENT), Link(bb, HOST)
    events: list[tuple[int, bool]] = []
    a.on_peer_hello = lambda h, restarted: events.append((h.session, restarted))
    settle(a, b, clock)
    # many frames from b to a: a's cumulative posted count grows far beyond n
    for _i in range(500):
        b.send(Data(1, bytes(600)))
    settle(a, b, clock)
    assert ab.statistics().rx_frames > 5 * n
    # stale traffic for the old b waits in a's queue
    a.send(Data(9, b"for the old peer"))
    b2, bb2 = _restart_b(a, ab, n, clock)
    assert b2.session != b.session
    # the new b floods a while a does not poll: only a's real free buffers may be used
    for _i in range(300):
        b2.send(Data(1, bytes(600)))
    got_a, got_b2 = settle(a, b2, clock)
    assert events == [(b.session, False), (b2.session, True)]
    assert a.peer_restarts == 1 and a.peer_session == b2.session
    assert a.established and b2.established
    assert ab.statistics().rx_fill_empty == 0 and bb2.statistics().rx_fill_empty == 0
    assert sum(isinstance(m, Data) for m in got_a) == 300
    # a sent its stale frame before it knew of the restart: the new b dropped it
    # (§3.1.6) without taking its stale credit
    assert got_b2 == []
    assert a.statistics().dropped == {} and b2.statistics().dropped == {"before_hello": 1}


def test_restart_drops_the_old_incarnations_messages_in_the_same_batch() -> None:
    clock = FakeClock()
    ab, bb = MemoryBackend(), MemoryBackend()
    wire(ab, bb)
    a, b = Link(ab, AGENT), Link(bb, HOST)
    settle(a, b, clock)
    b.send(Data(3, b"old"))
    b.flush()
    b2, _ = _restart_b(a, ab, 64, clock)
    b2.flush()  # its HELLO lands after the old DATA, in a's same receive batch
    msgs = a.poll()
    assert msgs == [] and a.peer_restarts == 1
    assert a.statistics().dropped == {"stale_after_restart": 1}


def test_hello_with_a_window_below_max_message_is_dropped() -> None:
    ab, bb = MemoryBackend(), MemoryBackend()
    wire(ab, bb)
    a = Link(ab, AGENT)
    bad = Hello(Role.HOST, 1000, 1 << 20, session=5, window_messages=4, window_bytes=1000)
    body = encode(bad)
    frame = bytearray(FRAME_HEADER_SIZE + len(body))  # a raw frame carrying the bad HELLO
    pack_frame_header(frame, AGENT.local_mac, AGENT.peer_mac, 0, 1, 0, 64, 0, len(body))
    frame[FRAME_HEADER_SIZE:] = body
    bb.send_batch([frame])
    a.poll()
    assert a.peer_session == 0 and a.statistics().dropped == {"bad_hello": 1}


def test_config_rejects_a_window_below_max_message() -> None:
    with pytest.raises(ValueError, match="window_bytes"):
        LinkConfig(max_message_size=1 << 20, window_bytes=1 << 19)
    assert LinkConfig(max_message_size=1 << 20).window_bytes == 2 << 20


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(st.just("restart"), st.just("dup"), st.integers(1, 120)), max_size=8),
       st.integers(6, 24))
def test_any_mix_of_restarts_and_traffic_never_overruns(ops: list[object], n: int) -> None:
    clock = FakeClock()
    ab, bb = MemoryBackend(rx_buffers=n), MemoryBackend(rx_buffers=n)
    wire(ab, bb)
    a, b = Link(ab, AGENT), Link(bb, HOST)
    restarts = 0
    events: list[bool] = []
    a.on_peer_hello = lambda h, restarted: events.append(restarted)
    settle(a, b, clock, steps=5)
    backends = [bb]
    for op in ops:
        if op == "restart":
            b, nb = _restart_b(a, ab, n, clock)
            backends.append(nb)
            restarts += 1
        elif op == "dup":
            b._queue_hello()
        else:
            assert isinstance(op, int)
            for _i in range(op):
                a.send(Data(1, bytes(300)))
                b.send(Data(2, bytes(300)))
        got_a, got_b = settle(a, b, clock, steps=5)
        if isinstance(op, int):
            assert sum(isinstance(m, Data) for m in got_a) == op
            assert sum(isinstance(m, Data) for m in got_b) == op
        assert a.established and b.established
    assert a.peer_restarts == restarts
    assert events == [False] + [True] * restarts
    assert ab.statistics().rx_fill_empty == 0
    assert all(x.statistics().rx_fill_empty == 0 for x in backends)


def test_set_window_only_before_anything_was_sent() -> None:
    clock = FakeClock()
    ab, bb = MemoryBackend(), MemoryBackend()
    wire(ab, bb)
    a, b = Link(ab, AGENT), Link(bb, HOST)
    a.set_window(8, 3 << 20)
    settle(a, b, clock)
    assert b.peer_hello is not None
    assert (b.peer_hello.window_messages, b.peer_hello.window_bytes) == (8, 3 << 20)
    with pytest.raises(RuntimeError):
        a.set_window(9, 3 << 20)  # the peer has seen a window: never another one
