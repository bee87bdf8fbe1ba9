"""The link's optional C accelerator (``xport._linkfast``) against its
pure-Python loops: the same ``poll`` output (object types and payload types
included), the same drop counters, statistics and credit state for random
frames, well-formed or not; the same frames, bit for bit, and the same queue
remainder for random send queues. A link takes the pure-Python loops when its
``accelerated`` attribute is False; ``XPORT_PURE_PYTHON=1`` turns the
accelerator off for the whole process (the rest of the suite then runs on the
fallback, and this module is skipped)."""

from __future__ import annotations

import gc
import os
import re
import struct
import sys
import tracemalloc
from array import array
from collections import deque
from dataclasses import asdict
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xport import _link
from xport._link import Link, LinkConfig
from xport._protocol import (
    COMMON_HEADER,
    HEADER_SIZE,
    PROTOCOL_VERSION,
    Close,
    Credit,
    Data,
    Hello,
    Keepalive,
    MessageType,
    Role,
    encode,
)
from xport._wire import FRAME_HEADER_SIZE, pack_frame_header
from xport.testing import memory_backend_pair

# scripts/setup.sh always builds the accelerator: a missing build is a failure,
# not a skip. Only a run that forces the fallback (XPORT_PURE_PYTHON=1) skips.
pytestmark = pytest.mark.skipif(
    os.environ.get("XPORT_PURE_PYTHON") == "1", reason="XPORT_PURE_PYTHON=1 forces the fallback"
)

SETTINGS = settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
DATA = int(MessageType.DATA)
CREDIT = int(MessageType.CREDIT)
FRAME_SIZE = 9000


def test_accelerator_is_built() -> None:
    assert _link.ACCELERATED, "xport._linkfast not built: run scripts/setup.sh"
    assert _link._linkfast is not None
    # the constants the C side hard-codes are the wire's
    assert _link._linkfast.PROTOCOL_VERSION == PROTOCOL_VERSION
    assert _link._linkfast.HEADER_SIZE == HEADER_SIZE == 16
    assert (_link._linkfast.DATA, _link._linkfast.CREDIT) == (DATA, CREDIT)


def test_links_use_the_accelerator(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both loops go through C, once per frame, when not forced off."""
    calls = {"rx": 0, "tx": 0}
    rx_whole, pack_whole, pack_frames = _link._rx_whole, _link._pack_whole, _link._pack_frames
    assert rx_whole is not None and pack_whole is not None and pack_frames is not None

    def rx(*args: Any) -> tuple[int, int, int]:
        calls["rx"] += 1
        return rx_whole(*args)

    def tx(*args: Any) -> tuple[int, int, int]:
        calls["tx"] += 1
        return pack_whole(*args)

    def frames(*args: Any) -> tuple[int, int, int, int, int]:
        calls["tx"] += 1
        return pack_frames(*args)

    rx_frames = _link._rx_frames
    assert rx_frames is not None

    def rx_many(*args: Any) -> tuple[int, int, int, int, int]:
        calls["rx"] += 1
        return rx_frames(*args)

    monkeypatch.setattr(_link, "_rx_whole", rx)
    monkeypatch.setattr(_link, "_pack_whole", tx)
    monkeypatch.setattr(_link, "_pack_frames", frames)
    monkeypatch.setattr(_link, "_rx_frames", rx_many)
    a_be, b_be = memory_backend_pair()
    a, b = Link(a_be, session=1), Link(b_be, session=2)
    assert a.accelerated and b.accelerated
    for _ in range(5):
        a.flush(), b.flush(), a.poll(), b.poll()
    assert a.established and b.established
    calls.update(rx=0, tx=0)
    for i in range(100):
        a.send_data(i, b"x" * 10)
    a.flush()
    got = b.poll()
    assert [(m.conn_id, m.payload) for m in got if isinstance(m, Data)] == [
        (i, b"x" * 10) for i in range(100)
    ]
    frames = a.stats.frames_out
    assert 0 < calls["tx"] <= 2 * frames  # per frame, not per message
    assert 0 < calls["rx"] <= 2 * frames


# -- receive: random frames ----------------------------------------------------


def _header(
    mtype: int, flags: int, conn: int, length: int, aux: int, total: int, v: int = 1
) -> bytes:
    return COMMON_HEADER.pack(v, mtype, flags, 0, conn, length, aux, total)


conn_ids = st.integers(0, 2**32 - 1)
u32 = st.integers(0, 2**32 - 1)


@st.composite
def whole_data(draw: st.DrawFn) -> bytes:
    payload = draw(st.binary(max_size=80))
    aux = draw(st.sampled_from([0, 0, 0, draw(st.integers(0, len(payload) + 3))]))  # > len: bad_body
    conn = draw(st.one_of(st.integers(0, 2), conn_ids))  # a few: runs of one connection
    return _header(DATA, 3, conn, len(payload), aux, len(payload)) + payload


@st.composite
def odd_whole(draw: st.DrawFn) -> bytes:
    """Whole-looking messages that are not the hot case: other flags bits set,
    length != total, another version, a CREDIT of the wrong size."""
    body = draw(st.binary(max_size=12))
    mtype = draw(st.sampled_from([DATA, CREDIT]))
    flags = draw(st.sampled_from([3, 7, 0xFF]))
    total = len(body) + draw(st.sampled_from([0, 0, 1]))
    version = draw(st.sampled_from([PROTOCOL_VERSION, 0, 2, 255]))
    return _header(mtype, flags, draw(conn_ids), len(body), 0, total, version) + body


@st.composite
def fragment(draw: st.DrawFn) -> bytes:
    body = draw(st.binary(max_size=40))
    total = len(body) + draw(st.integers(0, 60))
    mtype = draw(st.sampled_from([DATA, CREDIT, int(MessageType.CLOSE)]))
    flags = draw(st.sampled_from([0, 1, 2]))
    conn = draw(st.integers(0, 3))
    return _header(mtype, flags, conn, len(body), draw(st.integers(0, 4)), total) + body


messages = st.one_of(
    whole_data(),
    whole_data(),
    st.builds(lambda c, m, b: encode(Credit(c, m, b)), conn_ids, u32, u32),
    st.builds(lambda c, m, b: encode(Credit(c, m, b)), conn_ids, u32, u32),
    odd_whole(),
    fragment(),
    st.builds(
        lambda s, p: encode(Hello(Role.AGENT, session=s, peer_session=p)),
        st.sampled_from([7, 8]),
        st.sampled_from([0, 1]),
    ),
    st.just(encode(Keepalive())),
    st.builds(lambda c: encode(Close(c)), conn_ids),
    st.binary(min_size=1, max_size=40),  # garbage
)


@st.composite
def frames(draw: st.DrawFn) -> list[bytes]:
    """The peer's HELLO frame, then random frames (some malformed)."""
    out = [_frame(encode(Hello(Role.AGENT, session=7)), 1, 0)]
    for seq in range(1, draw(st.integers(1, 5)) + 1):
        msgs = draw(st.lists(messages, max_size=12))
        payload = b"".join(msgs)
        cut = draw(st.sampled_from([None, None, None, draw(st.integers(0, len(payload)))]))
        if cut is not None:
            payload = payload[:cut]  # the last messages truncated
        count = len(msgs) + draw(st.sampled_from([0, 0, 0, -1, 1, 5]))
        count = min(max(count, 0), 0xFFFF)
        out.append(_frame(payload, count, seq, plen_extra=draw(st.sampled_from([0] * 8 + [3]))))
    return out


def _frame(payload: bytes, count: int, seq: int, plen_extra: int = 0) -> bytes:
    buf = bytearray(FRAME_HEADER_SIZE + len(payload))
    pack_frame_header(buf, bytes(6), bytes(6), 0, count, seq, 64, 0, len(payload) + plen_extra)
    buf[FRAME_HEADER_SIZE:] = payload
    return bytes(buf)


def _shape(m: object) -> object:
    """What a message is, exactly: class, fields and the payload's type."""
    if isinstance(m, tuple) and isinstance(m[1], list):
        conn, run = m
        return ("run", len(m), conn, [(type(p).__name__, bytes(p)) for p in run])
    if isinstance(m, tuple):
        conn, payload = m
        return ("tuple", len(m), conn, type(payload).__name__, bytes(payload))
    if isinstance(m, Data):
        p = m.payload
        return ("Data", m.conn_id, type(p).__name__, bytes(p), m.header_length)
    return (type(m).__name__, repr(m))


def _receive(raw_frames: list[bytes], raw: int, accelerated: bool, per_poll: int) -> Any:
    """``raw``: 0 objects, 1 ``Link.raw_data``, 2 ``Link.raw_runs``."""
    raw_be, link_be = memory_backend_pair(frame_size=FRAME_SIZE)
    link = Link(link_be, session=1)
    link.accelerated = accelerated
    link.raw_data = raw == 1
    link.raw_runs = raw == 2
    restarts: list[bool] = []
    link.on_peer_hello = lambda hello, restarted: restarts.append(restarted)
    raw_be.send_batch(raw_frames)
    got: list[object] = []
    while link_be.rx_pending():
        batch = link.poll(per_poll)
        if raw == 2:  # consecutive runs are never of one connection
            conns = [m[0] if isinstance(m, tuple) else None for m in batch]
            assert all(a is None or a != b for a, b in zip(conns, conns[1:], strict=False))
        got += [_shape(m) for m in batch]
    lc = link.credit
    stats = asdict(link.stats)
    stats.pop("backend")
    return (
        got,
        stats,
        restarts,
        link.peer_session,
        list(link._queue),
        {name: getattr(lc, name) for name in type(lc).__slots__},
    )


@SETTINGS
@given(frames(), st.integers(0, 2), st.integers(1, 4))
def test_poll_same_with_and_without_c(raw_frames: list[bytes], raw: int, per_poll: int) -> None:
    fast = _receive(raw_frames, raw, True, per_poll)
    slow = _receive(raw_frames, raw, False, per_poll)
    assert fast == slow


def _flatten(got: list[Any]) -> list[Any]:
    out: list[Any] = []
    for g in got:
        if g[0] == "run":
            out += [("tuple", 2, g[2], t, p) for t, p in g[3]]
        else:
            out.append(g)
    return out


@SETTINGS
@given(frames(), st.integers(1, 4), st.booleans())
def test_runs_are_the_raw_messages_grouped(
    raw_frames: list[bytes], per_poll: int, accelerated: bool
) -> None:
    """Link.raw_runs gives what Link.raw_data gives, only grouped: the same
    messages, order, counters and credit state."""
    runs = _receive(raw_frames, 2, accelerated, per_poll)
    tuples = _receive(raw_frames, 1, accelerated, per_poll)
    assert (_flatten(runs[0]), *runs[1:]) == tuples


def test_runs_span_frames_and_end_at_other_messages() -> None:
    def f(seq: int, *msgs: object) -> bytes:
        return _frame(b"".join(encode(m) for m in msgs), len(msgs), seq)  # type: ignore[arg-type]

    raw_frames = [
        f(0, Hello(Role.AGENT, session=7), Data(5, b"a"), Data(5, b"b")),
        f(1, Data(5, b"c"), Data(6, b"d"), Credit(6, 1, 1), Data(6, b"e")),
        f(2, Data(6, b"f"), Data(6, b"gh", 1), Data(6, b"i"), Data(5, b"j")),
    ]
    for accelerated in (True, False):
        got, stats, *_ = _receive(raw_frames, 2, accelerated, 64)
        assert got == [
            ("run", 2, 5, [("bytes", b"a"), ("bytes", b"b"), ("bytes", b"c")]),
            ("run", 2, 6, [("bytes", b"d")]),
            ("Credit", repr(Credit(6, 1, 1))),
            ("run", 2, 6, [("bytes", b"e"), ("bytes", b"f")]),
            ("Data", 6, "bytes", b"gh", 1),
            ("run", 2, 6, [("bytes", b"i")]),
            ("run", 2, 5, [("bytes", b"j")]),
        ]
        assert stats["messages_in"] == 10 and stats["dropped"] == {}


def test_poll_hot_messages_come_out_as_python_builds_them() -> None:
    """A hand-made frame: every shape the C path builds, next to the rare ones."""
    payload = (
        encode(Hello(Role.AGENT, session=7))
        + encode(Data(5, b"raw"))
        + encode(Data(6, b"hdr+body", 3))
        + encode(Credit(2**32 - 1, 2**32 - 1, 0))
        + encode(Data(7, b""))
        + _header(DATA, 1, 9, 2, 0, 4) + b"ab"  # a FIRST fragment: Python goes on
        + _header(DATA, 2, 9, 2, 0, 4) + b"cd"
        + encode(Data(8, b"after"))
        + _header(DATA, 3, 1, 1, 2, 1) + b"x"  # aux > length: bad_body
        + encode(Data(10, b"end"))
    )  # fmt: skip
    for raw in (0, 1, 2):
        fast = _receive([_frame(payload, 10, 0)], raw, True, 64)
        assert fast == _receive([_frame(payload, 10, 0)], raw, False, 64)
        got, stats = fast[0], fast[1]
        assert stats["dropped"] == {"bad_body": 1}
        assert stats["fragments_in"] == 2 and stats["messages_in"] == 7
        tuples = [g for g in got if g[0] == "tuple"]
        assert len(tuples) == (4 if raw == 1 else 0)
        runs = [g for g in got if g[0] == "run"]
        assert len(runs) == (4 if raw == 2 else 0)


# -- the C functions' own guards ------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.data())
def test_rx_whole_never_reads_past_end(data: bytes, draw: st.DataObject) -> None:
    rx_whole = _link._rx_whole
    assert rx_whole is not None
    end = draw.draw(st.integers(0, len(data)))
    off = draw.draw(st.integers(0, end))
    left = draw.draw(st.integers(0, 20))
    raw = draw.draw(st.integers(0, 2))
    out: list[Any] = []
    new_off, new_left, merged = rx_whole(data, off, end, left, raw, out)
    assert off <= new_off <= end
    assert new_left == left - len(out) - merged >= 0
    assert merged == 0 or raw == 2
    # what it took is exactly whole DATA/CREDIT, and it stopped before the rest
    pos = off
    for m in out:
        for _ in m[1] if raw == 2 and isinstance(m, tuple) else [m]:
            _v, mtype, _f, _r, conn, length, aux, total = COMMON_HEADER.unpack_from(data, pos)
            assert mtype in (DATA, CREDIT) and length == total and m is not None
            if isinstance(m, tuple):
                assert (mtype, aux, conn) == (DATA, 0, m[0])
            pos += HEADER_SIZE + length
    assert pos == new_off


def test_rx_whole_rejects_offsets_outside_the_data() -> None:
    rx_whole = _link._rx_whole
    assert rx_whole is not None
    msg = encode(Data(1, b"abc"))
    with pytest.raises(ValueError):
        rx_whole(msg, 0, len(msg) + 1, 1, False, [])
    with pytest.raises(ValueError):
        rx_whole(msg, -1, len(msg), 1, False, [])
    with pytest.raises(TypeError):
        rx_whole(bytearray(msg), 0, len(msg), 1, False, [])  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        rx_whole(msg, 0, len(msg), 1, 3, [])
    assert rx_whole(msg, 0, len(msg), 1, False, []) == (len(msg), 0, 0)
    # a run ending the list joins only if it is one of ours, of this connection
    for last, joined in (((1, [b"x"]), 1), ((2, [b"x"]), 0), ((1, (b"x",)), 0),
                         ((-1, [b"x"]), 0), (("1", [b"x"]), 0), ((1 << 70, [b"x"]), 0)):
        out: list[Any] = [last]
        assert rx_whole(msg, 0, len(msg), 1, 2, out) == (len(msg), 0, joined)
        assert len(out) == 2 - joined


def test_pack_whole_rejects_a_short_buffer() -> None:
    pack_whole = _link._pack_whole
    assert pack_whole is not None
    with pytest.raises(ValueError):
        pack_whole(deque([(DATA, 1, 0, b"x")]), bytearray(100), 34, 0, 101)
    with pytest.raises(TypeError):
        pack_whole(deque(), b"not a bytearray", 34, 0, 100)  # type: ignore[arg-type]


# -- sending: random queues --------------------------------------------------------


@st.composite
def payloads(draw: st.DrawFn) -> bytes | bytearray | memoryview:
    size = draw(st.sampled_from([0, 1, 8, 50, 200, 700, 1500, 3000]))
    size = draw(st.integers(0, size))
    raw = bytes((i * 7 + size) & 0xFF for i in range(size))
    kind = draw(st.sampled_from(["bytes", "bytes", "bytearray", "memoryview", "slice"]))
    if kind == "bytearray":
        return bytearray(raw)
    if kind == "memoryview":
        return memoryview(raw)
    if kind == "slice":
        return memoryview(b"\x00" + raw + b"\x00")[1:-1]
    return raw


entries = st.one_of(
    st.builds(
        lambda c, p, a: (DATA, c, min(a, len(p)), p), conn_ids, payloads(), st.integers(0, 0xFFFF)
    ),
    st.builds(lambda c, m, b: (CREDIT, c, 0, struct.pack("!II", m, b)), conn_ids, u32, u32),
)


def _send(
    queue: list[tuple[int, int, int, Any]], frame_size: int, per_flush: int, accelerated: bool
) -> Any:
    a_be, b_be = memory_backend_pair(frame_size=frame_size, rx_buffers=512)
    cfg = LinkConfig(max_frames_per_flush=per_flush, initial_peer_credit=8, min_fragment=64)
    link = Link(a_be, cfg, session=1)
    link.accelerated = accelerated
    for mtype, conn, aux, payload in queue:
        if mtype == DATA:
            link.send_data(conn, payload, aux)
        else:
            link.send(Credit(conn, *struct.unpack("!II", payload)))
    sent: list[bytes] = []
    for _ in range(3):  # credit runs out: a remainder stays queued
        link.flush()
        sent += [bytes(f.data) for f in b_be.recv_batch(512)]
    stats = asdict(link.stats)
    stats.pop("backend")
    rest = [(t, c, a, bytes(p)) for t, c, a, p in link._queue]
    return sent, rest, link._head_sent, link.queued_bytes, stats


@SETTINGS
@given(
    st.lists(entries, max_size=40),
    st.sampled_from([160, 300, 1514, 4000]),
    st.integers(1, 3),
)
def test_frames_same_with_and_without_c(
    queue: list[tuple[int, int, int, Any]], frame_size: int, per_flush: int
) -> None:
    fast = _send(queue, frame_size, per_flush, True)
    slow = _send(queue, frame_size, per_flush, False)
    assert fast == slow


def test_pack_whole_stops_at_0xffff_messages() -> None:
    """msg_count is a u16 (§1): the C loop stops at 0xFFFF, as the Python one
    (unreachable through a Link today: payload_length, a u16 too, runs out first)."""
    pack_whole = _link._pack_whole
    assert pack_whole is not None
    queue = deque([(DATA, 1, 0, b"")] * 5)
    buf = bytearray(200)
    assert pack_whole(queue, buf, 34, 0xFFFF - 3, 200) == (34 + 3 * 16, 3, 0)
    assert len(queue) == 2
    assert buf[34:50] == _header(DATA, 3, 1, 0, 0, 0)


def test_an_entry_for_python_mid_frame_keeps_the_frame_open() -> None:
    """pack_frames leaves an entry it does not pack (a payload that is no
    bytes/bytearray/memoryview) to Python with the frame still open: the
    same frames as the Python loop, one frame for all three."""
    queue: list[tuple[int, int, int, Any]] = [
        (DATA, 1, 0, b"a" * 10),
        (DATA, 2, 0, array("B", b"b" * 20)),
        (DATA, 3, 0, b"c" * 30),
    ]
    fast = _send(queue, 1514, 2, True)
    assert fast == _send(queue, 1514, 2, False)
    (frame,) = fast[0]
    body = b"".join(_header(DATA, 3, c, n, 0, n) + p * n for c, n, p in
                    ((1, 10, b"a"), (2, 20, b"b"), (3, 30, b"c")))  # fmt: skip
    assert frame.endswith(body)


def test_queue_entries_c_cannot_pack_fall_back_to_python() -> None:
    """Out-of-range fields raise as struct.pack_into does; the queue is left as
    the Python loop leaves it."""
    outcomes = []
    for accelerated in (True, False):
        a_be, _b_be = memory_backend_pair()
        link = Link(a_be, LinkConfig(initial_peer_credit=8), session=1)
        link.accelerated = accelerated
        link.send_data(1, b"ok")
        link.send_data(2**32, b"conn_id too large")  # send_data does not check it
        with pytest.raises(struct.error):
            link.flush()
        outcomes.append([(t, c, bytes(p)) for t, c, _a, p in link._queue])
    assert outcomes[0] == outcomes[1]


# -- references ---------------------------------------------------------------


ROUNDS = 10_000


def test_no_reference_leaks() -> None:
    rx_whole, pack_whole, pack_frames = _link._rx_whole, _link._pack_whole, _link._pack_frames
    assert rx_whole is not None and pack_whole is not None and pack_frames is not None
    payload = b"".join(
        encode(m) for m in (Data(2**31, b"p" * 40), Data(3, b"hh" * 10, 2), Credit(2**32 - 1, 5, 6))
    ) + encode(Keepalive())
    body = b"q" * 30
    entry = (DATA, 2**31 + 1, 3, body)

    def once() -> None:
        for raw in (0, 1, 2):
            out: list[object] = []
            assert rx_whole(payload, 0, len(payload), 4, raw, out) == (len(payload) - 16, 1, 0)
        run: list[object] = [(2**31, [b"p"])]
        assert rx_whole(payload, 0, len(payload), 4, 2, run) == (len(payload) - 16, 1, 1)
        q = deque([entry] * 3)
        buf = bytearray(400)
        assert pack_whole(q, buf, 34, 0, 400) == (34 + 3 * 46, 3, 90)

    once()
    gc.collect()
    refs = (sys.getrefcount(payload), sys.getrefcount(body), sys.getrefcount(entry))
    types = (sys.getrefcount(Data), sys.getrefcount(Credit))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(ROUNDS):
            once()
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert (sys.getrefcount(payload), sys.getrefcount(body), sys.getrefcount(entry)) == refs
    assert (sys.getrefcount(Data), sys.getrefcount(Credit)) == types
    # one object leaked per round would be >= ROUNDS * 40 bytes; the rest of a
    # busy suite (hypothesis, threads) moves the traced total by tens of kB
    assert grown < ROUNDS * 40 // 4, f"{grown} bytes still allocated after {ROUNDS} rounds"


@pytest.mark.parametrize(("name", "args", "text"), [
    ("StrideTx", (1, array("I", [0]), None, bytearray(64), 32, array("I", [0, 0]), print),
     "StrideTx: live must be array('Q') of one item"),
    ("StrideTx", (1, array("Q", [0, 0]), None, bytearray(64), 32, array("I", [0, 0]), print),
     "StrideTx: live must be array('Q') of one item"),
    ("StrideTx", (1, array("Q", [0]), None, bytearray(64), 32, array("Q", [0, 0]), print),
     "StrideTx: lens must be array('I')"),
    ("CounterReader", (array("Q", [0, 0]), 0, None, [], print),
     "CounterReader: live must be array('Q') of one item"),
])
def test_c_callables_refuse_buffers_of_the_wrong_shape(name: str, args: tuple[Any, ...],
                                                       text: str) -> None:
    # the socket's live word and the frame lengths are read through these
    # buffers for the callable's whole life: a wrong shape fails at once
    from xport import _linkfast

    with pytest.raises(ValueError, match=re.escape(text)):
        getattr(_linkfast, name)(*args)
