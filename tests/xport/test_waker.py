"""``AsyncLink._on_readable`` in one C call (``xport._linkfast.Waker``, the
reader AsyncLink registers for an accelerated link) against the Python
``_on_readable`` it stands for, over the fake AF_XDP rings of
test_umem_rings (no kernel; the link has its ``Poller`` and ``Flusher``).

Two identical worlds run the same random program: frames of the peer
(test_link_fast_frames' batches: the HELLO, clean frames and every §1-§4
anomaly, fragments and control messages, so the Poller hands tuples to
``_poll_rest``) delivered a few at a time, wake-ups, sends (small, and
large ones that need fragments, so the Flusher hands a tuple to Python),
link credit arriving, a TX ring that fills (short sends, the backlog: the
Flusher answers None), loop iterations (the scheduled ``_flush``), and the
callback switched between none (the inbox), a recorder, a replier that
sends at once and one that raises. One world wakes through ``_on_readable``,
the other through the Waker; both must deliver the same messages (with the
same ``_flush_scheduled`` seen inside the callback), raise the same
exceptions, put the same frames on the wire and leave the same statistics,
credit state, queue, backlog, ``_flush_scheduled``, ``_blocked``,
``_writable``, inbox and clock readings. Skipped only when
``XPORT_PURE_PYTHON=1`` forces the fallback."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from itertools import count
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_link_fast_frames import _shape, batches  # beside this file
from test_umem_rings import PAYLOAD, make_fake

from xport import _link
from xport._backend import BackendStats
from xport._link import AsyncLink, Link, LinkConfig
from xport._protocol import Data, Role

pytestmark = pytest.mark.skipif(
    os.environ.get("XPORT_PURE_PYTHON") == "1", reason="XPORT_PURE_PYTHON=1 forces the fallback"
)

modes_st = st.sampled_from(["none", "record", "reply", "reply", "raise"])
ops_st = st.lists(
    st.one_of(
        st.tuples(st.just("deliver"), st.integers(1, 4)),
        st.tuples(st.just("wake"), st.integers(0, 4)),  # frames delivered first
        st.tuples(st.just("wake"), st.integers(1, 4)),
        st.tuples(st.just("wake"), st.integers(1, 4)),
        st.tuples(st.just("send"), st.integers(0, 120)),
        st.tuples(st.just("big"), st.integers(PAYLOAD, 3 * PAYLOAD)),
        st.tuples(st.just("wire"), st.integers(0, 6)),
        st.tuples(st.just("peer"), st.integers(0, 6)),
        st.tuples(st.just("loop"), st.integers(0, 0)),
        st.tuples(st.just("mode"), modes_st),
    ),
    max_size=50,
)


class Boom(Exception):
    pass


@st.composite
def clean_batches(draw: st.DrawFn) -> list[bytes]:
    """The peer's HELLO, then frames in sequence, each of whole DATA (with or
    without a ULP header) and CREDIT messages and now and then a KEEPALIVE
    (which the Poller leaves to _poll_rest)."""
    from test_link_fast_frames import _frame

    from xport._protocol import Credit, Hello, Keepalive, encode

    hello = encode(Hello(Role.AGENT, session=7, peer_session=draw(st.sampled_from([0, 1]))))
    posted = draw(st.sampled_from([64, 2**32 - 2]))
    out = [_frame(0, 1, 0, posted, 0, hello)]
    msg = st.one_of(
        st.builds(lambda c, p: encode(Data(c, p)), st.integers(0, 3), st.binary(max_size=40)),
        st.builds(lambda c, p: encode(Data(c, p, 1)), st.integers(0, 3),
                  st.binary(min_size=1, max_size=9)),
        st.builds(lambda c: encode(Credit(c, 1, 10)), st.integers(0, 3)),
    )
    for seq in range(1, draw(st.integers(1, 12))):
        msgs = draw(st.lists(msg, min_size=1, max_size=6))
        if draw(st.integers(0, 7)) == 0:
            msgs.insert(draw(st.integers(0, len(msgs))), encode(Keepalive()))
        posted += draw(st.sampled_from([0, 1, 2]))
        out.append(_frame(0, len(msgs), seq, posted & 0xFFFFFFFF, 0, b"".join(msgs)))
    return out


def _pollable_fake(**kw: Any) -> tuple[Any, Any, Callable[[], None]]:
    """make_fake's host backend with no kernel counters and a descriptor
    add_reader accepts (the fake rings have none), and what closes them."""
    be, kern, _ = make_fake(0, **kw)
    be.statistics = lambda: BackendStats()  # type: ignore[method-assign]
    rfd, wfd = os.pipe()
    be.fileno = lambda: rfd  # type: ignore[method-assign]

    def close() -> None:
        os.close(rfd)
        os.close(wfd)
        be.close()

    return be, kern, close


def _world(c_waker: bool, frames: list[bytes], ops: list[tuple[str, Any]], mode: str,
           tx_ring: int, raw: int, max_queued: int, fake_clock: bool) -> Any:
    """Run ``ops`` on one AsyncLink; everything observable, in order."""
    be, kern, close = _pollable_fake(n_rx=8, n_tx=8, rx_ring=4, tx_ring=tx_ring)
    log: list[Any] = []

    async def main() -> Any:
        link = Link(be, LinkConfig(role=Role.HOST, max_frame_size=PAYLOAD, min_fragment=64,
                                   max_frames_per_flush=4, credit_update_threshold=1,
                                   max_queued_bytes=max_queued, keepalive_interval=1000.0,
                                   peer_timeout=2000.0, hello_interval=1000.0),
                    session=1)  # fmt: skip
        assert link._poll_c is not None and link._flush_c is not None
        link.raw_data = raw == 1
        link.raw_runs = raw == 2
        ticks = count(1)
        clock: Callable[[], float] = (lambda: float(next(ticks))) if fake_clock else time.monotonic
        al = AsyncLink(link, clock=clock)
        assert type(al._reader) is _link._Waker
        wake = al._reader if c_waker else al._on_readable

        def record(msgs: list[Any]) -> None:
            log.append(("cb", al._flush_scheduled, [_shape(m) for m in msgs]))

        def reply(msgs: list[Any]) -> None:
            record(msgs)
            for m in msgs:
                if isinstance(m, Data):
                    al.try_send_data(m.conn_id, bytes(m.payload)[:50])
                elif isinstance(m, tuple) and isinstance(m[1], list):
                    al.try_send_runs([(m[0], [bytes(p)[:50] for p in m[1]])], [(m[0], 1, 9)],
                                     sum(len(bytes(p)[:50]) for p in m[1]))
                elif isinstance(m, tuple):
                    al.try_send_data(m[0], bytes(m[1])[:50])

        def boom(msgs: list[Any]) -> None:
            record(msgs)
            al.try_send_data(3, b"before the raise")
            raise Boom(len(msgs))

        modes = {"none": None, "record": record, "reply": reply, "raise": boom}
        al.set_on_messages(modes[mode])
        pending = [f[:PAYLOAD] for f in frames]
        for op, a in ops:
            if op in ("deliver", "wake"):
                for _ in range(a):
                    if pending and kern.receive(pending[0]):
                        pending.pop(0)
            if op == "wake":
                frames_in = link.stats.frames_in
                log.append(("blocked", al._blocked))
                t0 = time.monotonic()
                try:
                    wake()
                    log.append(("woke",))
                except Boom as exc:
                    log.append(("raised", exc.args))
                if not fake_clock and link.stats.frames_in > frames_in:
                    # time.monotonic's reading, taken in this wake-up
                    assert link._last_rx.__class__ is float
                    assert t0 <= link._last_rx <= time.monotonic()
                log.append((al._flush_scheduled, al._blocked, al._writable.is_set(),
                            len(al._inbox), al._inbox_ready.is_set()))
            elif op == "send":
                log.append(("sent", al.try_send_data(a % 4, bytes([a % 251]) * a)))
            elif op == "big":
                log.append(("sent", al.try_send_data(1, b"z" * min(a, link._max_send))))
            elif op == "wire":
                log.append(("wire", kern.transmit(a)))
            elif op == "peer":  # the peer's header would bring this: more buffers posted
                link.credit.peer_posted += a
            elif op == "loop":
                await asyncio.sleep(0)  # the scheduled _flush runs
            elif op == "mode":
                al.set_on_messages(modes[a])
        log.append(("wire", kern.transmit(64)))
        stats = asdict(link.stats)
        stats.pop("backend")
        lc = link.credit
        inbox = [_shape(m) for m in al._inbox]
        state = (stats, {n: getattr(lc, n) for n in type(lc).__slots__},
                 [(t, c, x, bytes(p)) for t, c, x, p in link._queue], list(link._backlog),
                 link._head_sent, link.queued_bytes, link.peer_session,
                 al._flush_scheduled, al._blocked, al._writable.is_set(), inbox,
                 al._inbox_ready.is_set())  # fmt: skip
        times = (link._last_rx, link._last_tx) if fake_clock else ()
        al.close()
        return state, times

    try:
        state, times = asyncio.run(main())
        return log, state, times
    finally:
        close()


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.one_of(batches(), clean_batches()), ops_st, modes_st, st.integers(1, 8), st.integers(0, 2),
       st.sampled_from([300, 4 << 20]), st.sampled_from([True] * 3 + [False]))
def test_c_waker_is_on_readable(frames: list[bytes], ops: list[tuple[str, Any]], mode: str,
                                tx_ring: int, raw: int, max_queued: int,
                                fake_clock: bool) -> None:
    assert _link._Waker is not None, "xport._linkfast not built: run scripts/setup.sh"
    c = _world(True, frames, ops, mode, tx_ring, raw, max_queued, fake_clock)
    py = _world(False, frames, ops, mode, tx_ring, raw, max_queued, fake_clock)
    assert c == py


def test_c_monotonic_is_time_monotonic() -> None:
    """The Waker's reading of CLOCK_MONOTONIC is time.monotonic's."""
    for _ in range(1000):
        t0 = time.monotonic()
        t = _link._linkfast.monotonic()
        t1 = time.monotonic()
        assert t.__class__ is float and t0 <= t <= t1


def test_waker_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """The common wake-up is one C call: Poller and Flusher called directly,
    no Python method of the link; a clock other than time.monotonic is called
    once; the Poller's tuple goes to _poll_rest, the Flusher's tuple to
    _flush_packed and its None to Link.flush; a raising callback leaves
    _flush_scheduled as it was and the exception goes out."""
    be, kern, close = _pollable_fake(n_rx=8, n_tx=8, rx_ring=4, tx_ring=8)
    frames = [f[:PAYLOAD] for f in _hello_and_data()]
    calls: list[str] = []

    async def main() -> None:
        link = Link(be, LinkConfig(role=Role.HOST, max_frame_size=PAYLOAD, min_fragment=64,
                                   initial_peer_credit=40, keepalive_interval=1000.0,
                                   peer_timeout=2000.0, hello_interval=1000.0), session=1)
        for name in ("poll", "flush", "_poll_rest", "_flush_packed"):
            orig = getattr(link, name)
            monkeypatch.setattr(link, name,
                                lambda *a, _n=name, _o=orig: (calls.append(_n), _o(*a))[1])
        clocks = count(1)
        al = AsyncLink(link, clock=lambda: (calls.append("clock"), float(next(clocks)))[1])
        waker = al._reader
        assert type(waker) is _link._Waker
        got: list[Any] = []
        al.set_on_messages(got.extend)
        kern.receive(frames[0])  # the HELLO: before the peer's session, Link.poll's Python
        waker()
        # (Link.poll's Python loop; the Flusher sends the HELLO answer)
        assert calls == ["clock", "poll", "_poll_rest"] and link.peer_session == 7
        calls.clear()
        kern.receive(frames[1])
        waker()
        assert calls == ["clock"] and len(got) == 1  # Poller and Flusher, nothing else
        assert link._last_rx == 2.0
        calls.clear()
        kern.receive(frames[2])  # a KEEPALIVE in it: the Poller leaves it to _poll_rest
        waker()
        assert calls == ["clock", "_poll_rest"] and len(got) == 2
        calls.clear()
        kern.transmit(64)
        al.try_send_data(1, b"f" * (2 * PAYLOAD))  # fragments: the Flusher's tuple
        waker()
        assert calls == ["clock", "_flush_packed"]
        calls.clear()
        link._backlog.append(b"x" * 60)  # a backlog: the Flusher's None
        waker()
        assert calls == ["clock", "flush"] and not link._backlog
        calls.clear()

        def boom(msgs: list[Any]) -> None:
            assert al._flush_scheduled
            raise Boom

        al.set_on_messages(boom)
        kern.receive(frames[3])
        for before in (False, True):
            al._flush_scheduled = before
            with pytest.raises(Boom):
                waker()
            assert al._flush_scheduled is before
            kern.receive(frames[4])
        al.set_on_messages(None)  # the inbox
        waker()
        assert len(al._inbox) == 1 and al._inbox_ready.is_set()
        calls.clear()
        link.close()  # a closed link: nothing polled or flushed
        waker()
        assert calls == ["clock"]
        al.close()
        with pytest.raises(TypeError):
            waker(1)  # type: ignore[call-arg]

    try:
        asyncio.run(main())
    finally:
        close()


def test_waker_lifetime() -> None:
    """The Waker holds the AsyncLink (through the loop's reader) and nothing
    of the socket's: a closed, dropped link with its waker is collected, and a
    waker called after its backend closed only sees link.closed."""
    be, kern, close = _pollable_fake()

    async def main() -> Any:
        link = Link(be, LinkConfig(role=Role.HOST, max_frame_size=PAYLOAD), session=1)
        al = AsyncLink(link)
        waker = al._reader
        al.close()
        be.close()  # the context freed: the live word is 0
        waker()  # link.closed: neither the Poller nor the Flusher is called
        import weakref

        ref = weakref.ref(al)
        del al, link, waker
        return ref

    try:
        ref = asyncio.run(main())
        gc.collect()
        assert ref() is None
    finally:
        close()


def test_reference_reader_when_not_accelerated() -> None:
    """_on_readable stays the reader for a link that is not accelerated."""
    be, kern, close = _pollable_fake()

    async def main() -> None:
        link = Link(be, LinkConfig(role=Role.HOST, max_frame_size=PAYLOAD), session=1)
        link.accelerated = False
        al = AsyncLink(link)
        assert al._reader == al._on_readable
        al.close()

    try:
        asyncio.run(main())
    finally:
        close()


def _hello_and_data() -> list[bytes]:
    """The peer's HELLO (acknowledging session 1), then frames in sequence:
    one DATA, DATA + KEEPALIVE, and two more DATA."""
    from test_link_fast_frames import _frame

    from xport._protocol import Hello, Keepalive, encode

    hello = encode(Hello(Role.AGENT, session=7, peer_session=1))
    out = [_frame(0, 1, 0, 64, 0, hello)]
    bodies = [[encode(Data(1, b"a"))], [encode(Data(1, b"b")), encode(Keepalive())],
              [encode(Data(2, b"c"))], [encode(Data(2, b"d"))]]
    for seq, msgs in enumerate(bodies, 1):
        out.append(_frame(0, len(msgs), seq, 64, 0, b"".join(msgs)))
    return out


def test_stats_counters_beyond_the_fast_range() -> None:
    """The Poller's in-place LinkStats additions fall back to Python's
    arithmetic for counters C does not hold (beyond 2**62, not an int) and
    to getattr/setattr for a stats object without those slots."""
    from types import SimpleNamespace

    for stats in (_link.LinkStats(frames_in=2**64, messages_in=2**62 - 1, credit_only_in=True),
                  SimpleNamespace(**(asdict(_link.LinkStats()) | {"frames_in": 5}))):
        frames = [f[:PAYLOAD] for f in _hello_and_data()]
        be, kern, _ = make_fake(0)
        be.statistics = lambda: BackendStats()  # type: ignore[method-assign]
        try:
            link = Link(be, LinkConfig(role=Role.HOST, max_frame_size=PAYLOAD), session=1)
            link.stats = stats  # type: ignore[assignment]
            link._poll_c = _link._Poller(link._recv_copies, stats)
            kern.receive(frames[0])
            link.poll()  # the HELLO: Python's loop
            before = (stats.frames_in, stats.messages_in)
            kern.receive(frames[1])
            kern.receive(frames[3])
            assert len(link.poll()) == 2  # the Poller
            assert stats.frames_in == before[0] + 2
            assert stats.messages_in == before[1] + 2
            assert type(stats.frames_in) is int
        finally:
            be.close()


@pytest.mark.afxdp
@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_waker_over_real_afxdp(loop_kind: str) -> None:
    """Two AsyncLinks over a veth pair, each woken by its Waker from the
    event loop: requests, their replies queued from the callback and sent in
    the wake-up's flush, backpressure released; nothing dropped."""
    from conftest import afxdp_required

    afxdp_required()
    from xport._afxdp import AfXdpBackend
    from xport._topology import VethPair

    n = 300

    async def main(ends: list[Any]) -> None:
        agent = Link(ends[0], LinkConfig(role=Role.AGENT, max_queued_bytes=2000))
        host = Link(ends[1], LinkConfig(role=Role.HOST))
        host.raw_runs = True
        replies: list[Any] = []
        done = asyncio.Event()
        ha: AsyncLink | None = None

        def serve(msgs: list[Any]) -> None:
            assert ha is not None
            runs = [(c, [b"re:" + p for p in ps]) for c, ps in msgs if isinstance(ps, list)]
            assert ha.try_send_runs(runs, [], sum(len(p) for _c, ps in runs for p in ps))

        def got(msgs: list[Any]) -> None:
            replies.extend(m for m in msgs if isinstance(m, Data))
            if len(replies) >= n:
                done.set()

        ha = AsyncLink(host, on_messages=serve)
        aa = AsyncLink(agent, on_messages=got)
        assert type(ha._reader) is _link._Waker and type(aa._reader) is _link._Waker
        try:
            for i in range(n):
                while not aa.try_send_data(1 + i % 3, b"req%d" % i):
                    await aa.drain()  # the agent's queue is small: backpressure
            await asyncio.wait_for(done.wait(), 10)
        finally:
            ha.close()
            aa.close()
        by_conn: dict[int, list[bytes]] = {}
        for m in replies:
            by_conn.setdefault(m.conn_id, []).append(bytes(m.payload))
        for c in (1, 2, 3):
            assert by_conn[c] == [b"re:req%d" % i for i in range(n) if 1 + i % 3 == c]
        assert agent.stats.dropped == {} and host.stats.dropped == {}
        assert host.stats.messages_in >= n and host.stats.messages_out >= n

    with VethPair(queues=1) as pair, contextlib.ExitStack() as st:
        assert pair.agent is not None and pair.host is not None
        ends = [st.enter_context(AfXdpBackend.open(e.ifname, 0, frame_count=512,
                                                   rx_size=256, tx_size=256))
                for e in (pair.agent, pair.host)]
        if loop_kind == "uvloop":
            uvloop = pytest.importorskip("uvloop")
            uvloop.run(main(ends))
        else:
            asyncio.run(main(ends))
