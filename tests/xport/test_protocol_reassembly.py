"""Fragment reassembly (xport._reassembly): order, interleaving and memory bounds."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xport._protocol import MessageType, ProtocolError
from xport._reassembly import Reassembler

F, L = 0x01, 0x02
DATA = MessageType.DATA


def fragments(body: bytes, cuts: list[int]) -> list[tuple[int, bytes]]:
    points = sorted({c % (len(body) + 1) for c in cuts} - {0, len(body)})
    edges = [0, *points, len(body)]
    out = []
    for i in range(len(edges) - 1):
        flags = (F if i == 0 else 0) | (L if i == len(edges) - 2 else 0)
        out.append((flags, body[edges[i] : edges[i + 1]]))
    return out


@given(
    st.lists(
        st.tuples(
            st.integers(1, 4),
            st.binary(min_size=1, max_size=300),
            st.lists(st.integers(0, 300), max_size=5),
        ),
        max_size=12,
    ),
    st.randoms(use_true_random=False),
)
def test_interleaved_connections_reassemble_in_order(msgs, rnd) -> None:  # type: ignore[no-untyped-def]
    # per connection the fragments stay in order; connections interleave at random
    per_conn: dict[int, list[tuple[int, int, bytes]]] = {}
    for conn, body, cuts in msgs:
        for flags, piece in fragments(body, cuts):
            per_conn.setdefault(conn, []).append((flags, len(body), piece))
    r = Reassembler(300, 4 * 300)
    got: dict[int, list[bytes]] = {}
    queues = {c: list(v) for c, v in per_conn.items()}
    while queues:
        conn = rnd.choice(sorted(queues))
        flags, total, piece = queues[conn].pop(0)
        if not queues[conn]:
            del queues[conn]
        out = r.feed(conn, DATA, flags, 7, total, memoryview(piece))
        if out is not None:
            assert out[0] == DATA and out[1] == 7
            got.setdefault(conn, []).append(bytes(out[2]))
    want: dict[int, list[bytes]] = {}
    for conn, body, _ in msgs:
        want.setdefault(conn, []).append(body)
    assert got == want
    assert r.buffered_bytes == 0 and r.partial_count == 0


def test_too_large_is_refused_before_buffering() -> None:
    r = Reassembler(100, 1000)
    with pytest.raises(ProtocolError) as info:
        r.feed(1, DATA, F, 0, 101, memoryview(b"x"))
    assert info.value.reason == "too_large" and r.buffered_bytes == 0


def test_total_memory_bound_across_connections() -> None:
    r = Reassembler(100, 250)
    r.feed(1, DATA, F, 0, 100, memoryview(b"x"))
    r.feed(2, DATA, F, 0, 100, memoryview(b"x"))
    with pytest.raises(ProtocolError) as info:
        r.feed(3, DATA, F, 0, 100, memoryview(b"x"))
    assert info.value.reason == "reassembly_full"
    assert r.buffered_bytes == 200


@pytest.mark.parametrize(
    "steps, reason",
    [
        ([(0, 10, b"ab")], "fragment_order"),  # no FIRST
        ([(F, 10, b"ab"), (F, 10, b"cd")], "fragment_order"),  # FIRST inside a message
        ([(F, 10, b"ab"), (0, 11, b"cd")], "fragment_order"),  # another message's total
        ([(F, 4, b"ab"), (0, 4, b"cde")], "bad_length"),  # beyond total
        ([(F, 4, b"ab"), (L, 4, b"c")], "bad_length"),  # LAST short of total
    ],
)
def test_broken_fragment_sequences(steps, reason) -> None:  # type: ignore[no-untyped-def]
    r = Reassembler(100, 1000)
    *ok, (flags, total, body) = steps
    for f, t, b in ok:
        r.feed(1, DATA, f, 0, t, memoryview(b))
    with pytest.raises(ProtocolError) as info:
        r.feed(1, DATA, flags, 0, total, memoryview(body))
    assert info.value.reason == reason
    # the broken partial message is gone; its memory is released
    assert r.partial_count == 0 and r.buffered_bytes == 0


def test_other_connections_unaffected_by_one_broken() -> None:
    r = Reassembler(100, 1000)
    r.feed(2, DATA, F, 0, 4, memoryview(b"ab"))
    with pytest.raises(ProtocolError):
        r.feed(1, DATA, 0, 0, 4, memoryview(b"zz"))
    assert r.feed(2, DATA, L, 0, 4, memoryview(b"cd")) == (DATA, 0, bytearray(b"abcd"))
