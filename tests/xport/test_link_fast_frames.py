"""``Link.poll``'s per-frame loop in C (``xport._linkfast.rx_frames``)
against the pure-Python loop it stands for: random receive batches of
clean frames mixed with every anomaly of docs/protocol.md §1-§4 (bad
EtherType, version, length and msg_count; sequence gaps and repeats;
credit going backwards; credit-only frames; fragments; control messages;
the peer restarting with a new HELLO, in its own frame or after data), with
counters near the 2**32 wrap, polled in random slices. Both must give the
same messages (types included), drop counters, statistics, handshake state
and ``LinkCredit`` state. Skipped only when ``XPORT_PURE_PYTHON=1`` forces
the fallback for the whole process."""

from __future__ import annotations

import os
from dataclasses import asdict
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xport import _link
from xport._link import Link
from xport._linkcredit import LinkCredit
from xport._protocol import (
    COMMON_HEADER,
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

pytestmark = pytest.mark.skipif(
    os.environ.get("XPORT_PURE_PYTHON") == "1", reason="XPORT_PURE_PYTHON=1 forces the fallback"
)

DATA = int(MessageType.DATA)
MASK = 0xFFFFFFFF


def _msg_header(mtype: int, flags: int, conn: int, length: int, aux: int, total: int) -> bytes:
    return COMMON_HEADER.pack(1, mtype, flags, 0, conn, length, aux, total)


@st.composite
def _fragment(draw: st.DrawFn) -> bytes:
    body = draw(st.binary(max_size=30))
    total = len(body) + draw(st.integers(0, 40))
    flags = draw(st.sampled_from([0, 1, 2]))
    return _msg_header(DATA, flags, draw(st.integers(0, 2)), len(body), 0, total) + body


_messages = st.one_of(
    st.builds(lambda c, p: encode(Data(c, p)), st.integers(0, 3), st.binary(max_size=40)),
    st.builds(lambda c, p: encode(Data(c, p)), st.integers(0, 3), st.binary(max_size=40)),
    st.builds(lambda c, p: encode(Data(c, p, len(p))), st.integers(0, 3), st.binary(max_size=9)),
    st.builds(lambda c, m, b: encode(Credit(c, m, b)), st.integers(0, 3),
              st.integers(0, MASK), st.integers(0, MASK)),  # fmt: skip
    _fragment(),
    st.just(encode(Keepalive())),
    st.builds(lambda c: encode(Close(c)), st.integers(0, 3)),
    st.binary(min_size=1, max_size=20),  # garbage
)

_KINDS = ["data"] * 8 + ["credit_only"] * 3 + [
    "gap", "repeat", "regress", "ethertype", "version", "plen", "short", "bad_count",
    "restart", "restart_after_data",
]  # fmt: skip


def _frame(flags: int, count: int, seq: int, credit: int, ack: int, payload: bytes,
           plen_extra: int = 0, ethertype: int = 0x88B5, version: int = 1) -> bytes:  # fmt: skip
    buf = bytearray(FRAME_HEADER_SIZE + len(payload))
    pack_frame_header(buf, bytes(6), bytes(6), flags, count, seq, credit, ack,
                      len(payload) + plen_extra)  # fmt: skip
    buf[12:14] = ethertype.to_bytes(2, "big")
    buf[14] = version
    buf[FRAME_HEADER_SIZE:] = payload
    return bytes(buf)


@st.composite
def batches(draw: st.DrawFn) -> list[bytes]:
    """The peer's HELLO frame, then random frames from a peer whose counters
    start anywhere (near the wrap too)."""
    seq = draw(st.sampled_from([0, MASK - 3, draw(st.integers(0, MASK))]))
    posted = draw(st.sampled_from([64, MASK - 1, draw(st.integers(0, MASK))]))
    ack = draw(st.sampled_from([0, MASK, draw(st.integers(0, MASK))]))
    session = 7

    def hello(s: int) -> bytes:
        return encode(Hello(Role.AGENT, session=s, peer_session=draw(st.sampled_from([0, 1]))))

    out = [_frame(0, 1, seq, posted, ack, hello(session))]
    seq += 1
    for _ in range(draw(st.integers(0, 14))):
        kind = draw(st.sampled_from(_KINDS))
        posted += draw(st.sampled_from([0, 0, 1, 3]))
        if draw(st.booleans()):
            ack += 1
            posted += 1  # a credit-only frame's buffer came back first (§4.1)
        msgs = draw(st.lists(_messages, max_size=6))
        if kind == "restart_after_data":
            session += 1
            msgs.append(hello(session))
        elif kind == "restart":
            session += 1
            msgs = [hello(session)]
            seq = draw(st.integers(0, MASK))  # a new incarnation counts afresh
        payload = b"".join(msgs)
        flags, count, c, a, extra = 0, len(msgs), posted, ack, 0
        ethertype, version = 0x88B5, 1
        if kind == "credit_only":
            flags, count, payload = 1, 0, b""
        elif kind == "gap":
            seq += draw(st.integers(1, 3))
        elif kind == "repeat":
            seq -= 1
        elif kind == "regress":
            c = posted - draw(st.integers(1, 5))
        elif kind == "ethertype":
            ethertype = 0x0800
        elif kind == "version":
            version = 2
        elif kind == "plen":
            extra = 3
        elif kind == "bad_count":
            flags = 1
        elif kind == "data" and draw(st.integers(0, 9)) == 0:
            count += draw(st.sampled_from([-1, 1]))  # msg_count disagrees with the payload
            count = max(count, 1)
        frame = _frame(flags, count, seq & MASK, c & MASK, a & MASK, payload, extra,
                       ethertype, version)  # fmt: skip
        if kind == "short":
            frame = frame[: draw(st.integers(0, FRAME_HEADER_SIZE - 1))]
        out.append(frame)
        seq += 1
    return out


def _shape(m: object) -> object:
    if isinstance(m, tuple) and isinstance(m[1], list):
        return ("run", m[0], [(type(p).__name__, bytes(p)) for p in m[1]])
    if isinstance(m, tuple):
        return ("tuple", m[0], type(m[1]).__name__, bytes(m[1]))
    if isinstance(m, Data):
        return ("Data", m.conn_id, type(m.payload).__name__, bytes(m.payload), m.header_length)
    return (type(m).__name__, repr(m))


def _receive(frames: list[bytes], raw: int, accelerated: bool, slices: list[int]) -> Any:
    peer_be, be = memory_backend_pair(frame_size=4096, rx_buffers=256)
    link = Link(be, session=1)
    link.accelerated = accelerated
    link.raw_data = raw == 1
    link.raw_runs = raw == 2
    restarts: list[bool] = []
    link.on_peer_hello = lambda hello, restarted: restarts.append(restarted)
    peer_be.send_batch(frames)
    got: list[object] = []
    i = 0
    while be.rx_pending():
        got += [_shape(m) for m in link.poll(slices[i % len(slices)])]
        i += 1
    stats = asdict(link.stats)
    stats.pop("backend")
    lc = link.credit
    return (
        got,
        stats,
        restarts,
        link.peer_session,
        link.established,
        link._posted_base,
        [(t, c, a, bytes(p)) for t, c, a, p in link._queue],
        {name: getattr(lc, name) for name in type(lc).__slots__},
        lc.want_credit_only(link._posted()),
    )


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
@given(batches(), st.integers(0, 2), st.lists(st.integers(1, 8), min_size=1, max_size=4))
def test_rx_frames_same_as_the_python_loop(frames: list[bytes], raw: int, slices: list[int]) -> None:
    assert _link._rx_frames is not None
    assert _receive(frames, raw, True, slices) == _receive(frames, raw, False, slices)


def test_clean_frames_go_through_c(monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch of clean frames is one rx_frames call; an anomaly hands the
    rest of the batch to the Python loop, which counts it."""
    rx_frames = _link._rx_frames
    assert rx_frames is not None
    calls: list[tuple[int, int]] = []

    def spy(rx: list[bytes], start: int, *args: Any) -> tuple[int, int, int, int, int]:
        res = rx_frames(rx, start, *args)
        calls.append((start, res[0]))
        return res

    monkeypatch.setattr(_link, "_rx_frames", spy)
    hello = _frame(0, 1, 0, 64, 0, encode(Hello(Role.AGENT, session=7)))
    clean = [_frame(0, 1, s, 64, 0, encode(Data(1, b"x"))) for s in range(1, 5)]
    co = _frame(1, 0, 5, 65, 1, b"")
    gap = _frame(0, 1, 9, 65, 1, encode(Data(2, b"y")))
    _receive([hello], 1, True, [64])
    assert calls == []  # before the peer's HELLO: the Python loop (§3.1.6)
    peer_be, be = memory_backend_pair(frame_size=4096, rx_buffers=256)
    link = Link(be, session=1)
    link.raw_data = True
    peer_be.send_batch([hello])
    link.poll()
    peer_be.send_batch([*clean, co, gap])
    got = link.poll()
    assert got == [(1, b"x")] * 4 + [(2, b"y")]
    assert calls == [(0, 5)]  # 4 data + 1 credit-only in C, the gap frame in Python
    assert link.stats.dropped == {"seq_gap": 1}
    assert link.stats.credit_only_in == 1 and link.stats.messages_in == 5
    lc = link.credit
    assert (lc.frames_rx, lc.co_recv, lc.co_rx, lc.peer_posted, lc.peer_ack) == (10, 1, 1, 65, 1)


def test_rx_frames_leaves_huge_counters_to_python() -> None:
    """Counters beyond what C keeps (Python ints never overflow) are Python's."""
    rx_frames = _link._rx_frames
    assert rx_frames is not None
    peer_be, be = memory_backend_pair(frame_size=4096, rx_buffers=256)
    link = Link(be, session=1)
    lc = link.credit
    lc.frames_rx = 1 << 70
    frame = _frame(0, 1, 0, 64, 0, encode(Data(1, b"x")))
    out: list[Any] = []
    assert rx_frames([frame], 0, lc, 0, out) == (0, 0, 0, 0, 0)
    assert out == [] and lc.frames_rx == 1 << 70
    with pytest.raises(TypeError):
        rx_frames((frame,), 0, lc, 0, out)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        rx_frames([frame], 2, lc, 0, out)
    with pytest.raises(ValueError):
        rx_frames([frame], 0, lc, 3, out)


class _SetattrCredit(LinkCredit):
    """A LinkCredit whose writes go through a __setattr__ of its own."""

    __slots__ = ("writes",)

    def __setattr__(self, name: str, value: object) -> None:
        if name != "writes":
            self.writes.append(name)
        object.__setattr__(self, name, value)


class _DictCredit:
    """The counters rx_frames reads, as plain instance attributes."""

    def __init__(self, lc: LinkCredit) -> None:
        self.__dict__.update({n: getattr(lc, n) for n in type(lc).__slots__})


@settings(max_examples=60, deadline=None)
@given(st.integers(0, MASK), st.integers(0, MASK), st.lists(
    st.tuples(st.booleans(), st.lists(st.binary(max_size=20), min_size=1, max_size=4)),
    min_size=1, max_size=5))
def test_rx_frames_counters_in_place_or_by_attribute(
    seq: int, posted: int, frames: list[tuple[bool, list[bytes]]]
) -> None:
    """rx_frames writes LinkCredit's counters in place (its slots); any other
    object (a __setattr__ of its own, a plain object) goes through
    getattr/setattr, with the same result; unchanged counters stay as they were."""
    rx = []
    for i, (credit_only, payloads) in enumerate(frames):
        body = b"".join(encode(Data(1 + i % 2, p)) for p in payloads)
        rx.append(_frame(1, 0, (seq + i) & MASK, posted & MASK, 0, b"") if credit_only
                  else _frame(0, len(payloads), (seq + i) & MASK, posted & MASK, 0, body))
    assert _link._rx_frames is not None
    results = []
    for kind in ("slots", "setattr", "dict"):
        base = LinkCredit()
        base.frames_rx, base.peer_posted = seq, posted
        lc: Any = base
        if kind == "setattr":
            lc = object.__new__(_SetattrCredit)
            object.__setattr__(lc, "writes", [])
            for n in LinkCredit.__slots__:
                object.__setattr__(lc, n, getattr(base, n))
        elif kind == "dict":
            lc = _DictCredit(base)
        out: list[Any] = []
        ret = _link._rx_frames(rx, 0, lc, 2, out)
        results.append((ret, out, {n: getattr(lc, n) for n in LinkCredit.__slots__}))
        if kind == "setattr":
            # the peer's (P, A) did not move: only the frame counters are written
            co = any(c for c, _p in frames)
            assert set(lc.writes) == {"frames_rx"} | ({"co_recv", "co_rx"} if co else set())
    assert results[0] == results[1] == results[2]
    assert results[0][0][0] == len(frames)  # every frame taken
