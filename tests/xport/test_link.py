"""The link (xport._link) over the in-memory backend pair (xport.testing)."""

from __future__ import annotations

import asyncio
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xport._link import AsyncLink, Link, LinkConfig, LinkLostError
from xport._protocol import (
    Close,
    Credit,
    Data,
    Hello,
    Keepalive,
    Listen,
    Message,
    MessageType,
    Role,
    encode,
)
from xport._wire import FRAME_HEADER_SIZE, pack_frame_header
from xport.testing import FakeClock, MemoryBackend, memory_backend_pair, memory_link_pair


def pump(a: Link, b: Link, rounds: int = 10_000) -> tuple[list[Message], list[Message]]:
    """Flush and poll both ends until nothing moves; (received by a, received by b)."""
    got_a: list[Message] = []
    got_b: list[Message] = []
    for _ in range(rounds):
        moved = a.flush() + b.flush()
        ra, rb = a.poll(), b.poll()
        got_a += ra
        got_b += rb
        if not moved and not ra and not rb and not a.queued_messages and not b.queued_messages:
            break
    return got_a, got_b


def no_drops(*links: Link) -> None:
    for link in links:
        st = link.statistics()
        assert st.backend is not None and st.backend.rx_fill_empty == 0
        assert st.dropped == {}


def test_hello_exchange() -> None:
    a, b = memory_link_pair()
    pump(a, b)
    assert a.peer_hello is not None and a.peer_hello.role == Role.HOST
    assert b.peer_hello is not None and b.peer_hello.role == Role.AGENT
    no_drops(a, b)


def test_small_messages_share_frames() -> None:
    a, b = memory_link_pair()
    pump(a, b)
    frames_before = a.stats.frames_out
    for i in range(400):
        a.send(Data(i % 7, b"m" * 20))
    _, got = pump(a, b)
    assert [bytes(m.payload) for m in got] == [b"m" * 20] * 400  # type: ignore[union-attr]
    # 36 bytes per message: ~40 per 1514-byte frame
    assert a.stats.frames_out - frames_before <= 11
    no_drops(a, b)


messages = st.one_of(
    st.builds(Data, st.integers(0, 5), st.binary(max_size=5000)),
    st.builds(Credit, st.integers(0, 5), st.integers(0, 100), st.integers(0, 10_000)),
    st.builds(
        Listen, st.integers(0, 9), st.just("0.0.0.0"), st.integers(0, 65535), st.text(max_size=20)
    ),
    st.builds(Close, st.integers(0, 5), st.booleans()),
)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(messages, max_size=60),
    st.lists(messages, max_size=60),
    st.integers(3, 10),
    st.lists(st.sampled_from(["fa", "fb", "pa", "pb"]), max_size=80),
    st.integers(1, 4),
)
def test_lossless_in_order_both_ways_with_few_buffers(ma, mb, rx_buffers, ops, pollmax) -> None:  # type: ignore[no-untyped-def]
    cfg = {"credit_reserve": 2, "initial_peer_credit": 3, "credit_update_threshold": 2}
    a, b = memory_link_pair(
        LinkConfig(role=Role.AGENT, **cfg),  # type: ignore[arg-type]
        LinkConfig(role=Role.HOST, **cfg),  # type: ignore[arg-type]
        rx_buffers=rx_buffers,
    )
    got_a: list[Message] = []
    got_b: list[Message] = []
    for m in ma:
        a.send(m)
    for m in mb:
        b.send(m)
    for op in ops:  # random schedule first, then a fair one
        if op == "fa":
            a.flush()
        elif op == "fb":
            b.flush()
        elif op == "pa":
            got_a += a.poll(pollmax)
        else:
            got_b += b.poll(pollmax)
    ra, rb = pump(a, b)
    assert got_b + rb == ma
    assert got_a + ra == mb
    no_drops(a, b)


def test_without_credit_the_same_traffic_would_drop() -> None:
    """The memory backend really drops on overrun: the credits are doing the work."""
    a_be, b_be = memory_backend_pair(rx_buffers=2)
    frame = bytearray(FRAME_HEADER_SIZE)
    a_be.send_batch([frame] * 5)
    assert b_be.statistics().rx_fill_empty == 3


def test_tx_ring_full_keeps_order() -> None:
    a_be, b_be = memory_backend_pair(rx_buffers=32, tx_batch_limit=3)
    a, b = Link(a_be, LinkConfig(role=Role.AGENT)), Link(b_be, LinkConfig(role=Role.HOST))
    sent = [Data(1, bytes([i]) * 1400) for i in range(40)]
    for m in sent:
        a.send(m)
    _, got = pump(a, b)
    assert got == sent
    assert a.stats.tx_short > 0
    no_drops(a, b)


def test_large_messages_fragment_and_reassemble() -> None:
    a, b = memory_link_pair(rx_buffers=8)
    big = bytes(range(256)) * 300
    a.send(Data(3, big, 10))
    a.send(Data(4, b"small"))
    _, got = pump(a, b)
    assert got == [Data(3, big, 10), Data(4, b"small")]
    assert a.stats.fragments_out > 50
    no_drops(a, b)


def test_message_over_max_size_refused_on_send() -> None:
    a, _ = memory_link_pair(LinkConfig(max_message_size=100, max_reassembly_bytes=100))
    with pytest.raises(ValueError):
        a.send(Data(1, bytes(101)))


def test_peer_over_max_size_is_counted_not_raised() -> None:
    a, b = memory_link_pair(
        LinkConfig(role=Role.AGENT), LinkConfig(max_message_size=2000, max_reassembly_bytes=2000)
    )
    a.send(Data(1, bytes(5000)))
    a.send(Data(2, b"after"))
    _, got = pump(a, b)
    assert got == [Data(2, b"after")]
    assert b.stats.dropped["too_large"] == 1


def test_keepalive_and_peer_lost_with_fake_clock() -> None:
    clock = FakeClock()
    cfg = LinkConfig(keepalive_interval=1.0, peer_timeout=3.0)
    a, b = memory_link_pair(cfg, cfg)
    pump(a, b)
    for _ in range(10):  # both alive: keepalives flow, nobody is lost
        clock.advance(0.5)
        for link in (a, b):
            link.tick(clock.now())
            link.flush(clock.now())
        a.poll(now=clock.now())
        b.poll(now=clock.now())
    assert a.stats.keepalives_out >= 2 and not a.peer_lost and not b.peer_lost
    for _ in range(8):  # b goes silent
        clock.advance(0.5)
        a.tick(clock.now())
        a.flush(clock.now())
    assert a.peer_lost


HELLO = encode(Hello(Role.AGENT, session=7))


def _raw_frame(payload: bytes, count: int, seq: int, credit: int = 64) -> bytes:
    buf = bytearray(FRAME_HEADER_SIZE + len(payload))
    pack_frame_header(buf, bytes(6), bytes(6), 0, count, seq, credit, 0, len(payload))
    buf[FRAME_HEADER_SIZE:] = payload
    return bytes(buf)


def test_bad_messages_in_a_frame_are_skipped_and_counted() -> None:
    raw_be, link_be = memory_backend_pair()
    link = Link(link_be)
    unknown = bytearray(encode(Keepalive()))
    unknown[1] = 77
    future = bytearray(encode(Data(1, b"v2")))
    future[0] = 9
    bad_body = bytearray(encode(Credit(1, 2, 3)))
    struct.pack_into("!H", bad_body, 8, 7)  # length and total 7: not a CREDIT body
    struct.pack_into("!I", bad_body, 12, 7)
    bad_body = bad_body[:-1]
    # the peer's HELLO first (§3.1.6: a link takes nothing before it)
    payload = (HELLO + bytes(unknown) + bytes(future) + bytes(bad_body)
               + encode(Data(1, b"ok")))
    raw_be.send_batch([_raw_frame(payload, 5, 0), b"\x00" * 10, _raw_frame(b"", 1, 1)[:20]])
    assert link.poll() == [Data(1, b"ok")]
    assert link.stats.dropped == {
        "unknown_type": 1,
        "bad_version": 1,
        "bad_body": 1,
        "truncated": 2,
    }


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 70), st.integers(0, 3), st.booleans())
def test_poll_never_raises_on_garbage(
    payload: bytes, count: int, seq: int, credit_only: bool
) -> None:
    raw_be, link_be = memory_backend_pair()
    link = Link(link_be)
    frame = bytearray(_raw_frame(payload, count, seq))
    if credit_only:
        frame[15] = 1
    # garbage before and after the peer's HELLO
    raw_be.send_batch([frame, _raw_frame(HELLO, 1, 0), bytes(frame), payload[:1514]])
    link.poll()
    link.flush()


def test_async_link_batches_and_delivers() -> None:
    async def main() -> None:
        a_link, b_link = memory_link_pair(rx_buffers=16)
        got: list[Message] = []
        done = asyncio.Event()

        def on_messages(msgs: list[Message]) -> None:
            got.extend(msgs)
            if len(got) >= 2000:
                done.set()

        a = AsyncLink(a_link)
        b = AsyncLink(b_link, on_messages=on_messages)
        for i in range(2000):
            a.send_data(i % 9, i.to_bytes(4, "big"))
            if i % 500 == 0:
                await a.drain()
        await asyncio.wait_for(done.wait(), 5)
        assert [int.from_bytes(m.payload, "big") for m in got] == list(range(2000))  # type: ignore[union-attr]
        # 2000 sends in one loop iteration: few frames, not 2000
        assert a_link.stats.frames_out < 100
        # a lone message goes out on the next loop iteration
        b.send(Close(3))
        assert isinstance(await asyncio.wait_for(a.recv(), 1), Close)
        no_drops(a_link, b_link)
        a.close()
        b.close()

    asyncio.run(main())


def test_async_drain_blocks_until_credit_returns() -> None:
    async def main() -> None:
        a_be, b_be = memory_backend_pair(rx_buffers=4)
        a_link = Link(a_be, LinkConfig(max_queued_bytes=1000))
        b_link = Link(b_be)
        a = AsyncLink(a_link)
        for _ in range(50):
            a.send_data(1, bytes(1400))
        assert not a_link.writable
        drain = asyncio.ensure_future(a.drain())
        await asyncio.sleep(0.01)
        assert not drain.done()  # b never polls: no credit comes back
        b = AsyncLink(b_link, on_messages=lambda msgs: None)
        await asyncio.wait_for(drain, 2)
        no_drops(a_link, b_link)
        a.close()
        b.close()

    asyncio.run(main())


def test_async_recv_raises_when_peer_lost() -> None:
    async def main() -> None:
        clock = FakeClock()
        a_link, _b = memory_link_pair(LinkConfig(keepalive_interval=0.01, peer_timeout=0.02))
        a = AsyncLink(a_link, clock=clock)
        clock.advance(1.0)
        with pytest.raises(LinkLostError):
            await asyncio.wait_for(a.recv(), 1)
        a.close()

    asyncio.run(main())


def test_memory_backend_zero_copy_release_reposts() -> None:
    a, b = memory_backend_pair(rx_buffers=2)
    a.send_batch([b"x" * 60, b"y" * 60])
    posted = b.rx_buffers_posted()
    frames = b.recv_batch(copy=False)
    assert b.rx_buffers_posted() == posted
    frames[0].release()
    assert b.rx_buffers_posted() == posted + 1
    assert isinstance(b, MemoryBackend) and MessageType.DATA == 8


def test_send_respects_the_peers_max_message_size() -> None:
    a, b = memory_link_pair(
        LinkConfig(role=Role.AGENT),
        LinkConfig(role=Role.HOST, max_message_size=1000, max_reassembly_bytes=1000),
    )
    pump(a, b)
    a.send(Data(1, bytes(1000)))
    with pytest.raises(ValueError):
        a.send_data(1, bytes(1001))


def test_max_frame_size_caps_frames_below_the_backend() -> None:
    a_be, b_be = memory_backend_pair(frame_size=4096)
    a = Link(a_be, LinkConfig(role=Role.AGENT, max_frame_size=600))
    b = Link(b_be, LinkConfig(role=Role.HOST))
    a.send(Data(1, bytes(3000)))
    for _ in range(100):
        a.send(Data(2, b"x" * 30))
    _, got = pump(a, b)
    assert len(got) == 101
    assert a_be.statistics().tx_bytes <= a_be.statistics().tx_frames * 600
