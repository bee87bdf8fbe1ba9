"""The connection shell driven directly: fake transport, fake owner, no sleeping."""

from __future__ import annotations

import struct

from agent_fakes import FakeOwner, FakeTransport, frame
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import AgentConfig, Connection, ConnState
from agent._codec import make_framer


def make(owner: FakeOwner | None = None, *, window: tuple[int, int] = (4, 1000),
         hold: bool = False, spec: str = "length", outbound: bool = False,
         ) -> tuple[Connection, FakeOwner, FakeTransport]:
    owner = owner or FakeOwner(AgentConfig(initial_window_messages=4, initial_window_bytes=1000,
                                           max_message_size=1000,
                                           max_buffered_per_connection=8192))
    framer = make_framer(spec, owner.config.max_message_size)
    conn = Connection(owner, 7, framer, host_window=window, outbound=outbound)
    tr = FakeTransport(hold=hold)
    conn.connection_made(tr)
    return conn, owner, tr


def test_accepted_connection_is_announced_and_forwards_whole_messages() -> None:
    conn, owner, tr = make()
    assert owner.new == [7] and conn.state is ConnState.OPEN
    data = frame(b"hello") + frame(b"world")
    conn.data_received(data[:3])
    assert owner.data == []
    conn.data_received(data[3:])
    assert owner.data == [(7, frame(b"hello"), 4), (7, frame(b"world"), 4)]
    assert tr.reading


def test_out_of_credit_pauses_reading_and_credit_resumes_in_order() -> None:
    conn, owner, tr = make(window=(2, 1000))
    conn.data_received(b"".join(frame(bytes([i]) * 3) for i in range(5)))
    assert [d[1] for d in owner.data] == [frame(b"\0" * 3), frame(b"\1" * 3)]
    assert not tr.reading and len(conn.pending) == 3
    assert owner.budget.used == 3 * 7
    conn.on_credit(1, 7)
    assert len(owner.data) == 3 and not tr.reading
    conn.on_credit(5, 100)
    assert [d[1][4] for d in owner.data] == [0, 1, 2, 3, 4]
    assert tr.reading and owner.budget.used == 0


def test_byte_credit_limits_too() -> None:
    conn, owner, tr = make(window=(10, 20))
    conn.data_received(frame(b"x" * 10) + frame(b"y" * 10))
    assert len(owner.data) == 1 and not tr.reading  # 14 + 14 > 20
    conn.on_credit(1, 14)
    assert len(owner.data) == 2 and tr.reading


def test_largest_message_waits_for_byte_credit_then_goes() -> None:
    # the host's window is at least its largest message (HELLO, §5.1): a large
    # message waits for the credit of what is outstanding, then always fits
    conn, owner, tr = make(window=(4, 310))
    conn.data_received(frame(b"a" * 10) + frame(b"b" * 300))
    assert len(owner.data) == 1 and not tr.reading  # 14 + 304 > 310
    conn.on_credit(1, 14)
    assert len(owner.data) == 2 and tr.reading
    assert (conn.send_window.messages, conn.send_window.bytes) == (3, 310 - 14 + 14 - 304)


def test_framing_error_closes_only_after_earlier_messages() -> None:
    conn, owner, tr = make()
    conn.data_received(frame(b"ok") + struct.pack("!I", 10_000_000) + b"zz")
    assert owner.data == [(7, frame(b"ok"), 4)]
    assert tr.aborted and conn.state is ConnState.CLOSED
    assert owner.closed[0][:2] == (7, "frame_too_long") and owner.closed[0][3]
    conn.data_received(frame(b"late"))  # ignored
    assert len(owner.data) == 1
    assert owner.stats.counters["framing_errors"] == 1


def test_eof_mid_message_is_truncated() -> None:
    conn, owner, tr = make()
    conn.data_received(frame(b"abc")[:5])
    conn.eof_received()
    assert owner.closed[0][1] == "truncated_message" and tr.aborted


def test_eof_drains_pending_then_tells_the_host_and_keeps_answering() -> None:
    conn, owner, tr = make(window=(1, 1000), hold=True)
    conn.data_received(frame(b"1") + frame(b"2"))
    assert conn.eof_received() is True  # the write side stays open
    assert conn.state is ConnState.DRAINING and not tr.closed and owner.eofs == []
    conn.host_data(b"reply")  # the client may still get replies
    assert tr.written == frame(b"reply")
    conn.on_credit(1, 5)
    # everything went to the host, then EOF; the socket stays open
    assert [d[1] for d in owner.data] == [frame(b"1"), frame(b"2")]
    assert owner.eofs == [7] and conn.state is ConnState.HALF_CLOSED
    assert not tr.closed and owner.closed == [] and owner.budget.used == 0
    conn.host_data(b"late reply")  # well after the FIN
    assert tr.written == frame(b"reply") + frame(b"late reply")
    # replies drain: their credit still goes back to the host
    tr.drain()
    conn.check_drain()
    assert sum(c[1] for c in owner.credits) == 2
    conn.host_close()  # the host is done: flush, then FIN
    assert conn.state is ConnState.CLOSED and tr.closed and not tr.aborted
    assert owner.closed == [(7, "closed_by_host", "", True)] and owner.eofs == [7]


def test_eof_waits_for_the_last_pending_message_before_telling_the_host() -> None:
    conn, owner, tr = make(window=(1, 1000))
    conn.data_received(frame(b"1") + frame(b"2") + frame(b"3"))
    conn.eof_received()
    assert owner.eofs == [] and len(owner.data) == 1
    conn.on_credit(1, 5)
    assert owner.eofs == [] and len(owner.data) == 2
    conn.on_credit(1, 5)
    assert owner.eofs == [7] and len(owner.data) == 3
    conn.on_credit(1, 5)  # more credit after EOF changes nothing
    assert owner.eofs == [7] and conn.state is ConnState.HALF_CLOSED


def test_half_closed_host_close_flushes_replies_before_the_fin() -> None:
    conn, owner, tr = make(hold=True)
    conn.eof_received()
    assert owner.eofs == [7]
    conn.host_data(b"answer")
    conn.host_close()
    assert conn.state is ConnState.CLOSING and not tr.closed  # still flushing
    tr.drain()
    conn.check_drain()
    assert conn.state is ConnState.CLOSED and tr.closed and not tr.aborted
    assert tr.written == frame(b"answer")


def test_half_close_timeout_counts_from_the_last_reply() -> None:
    conn, owner, tr = make()
    timeout = owner.config.half_close_timeout
    owner.clock = 100.0
    conn.eof_received()
    conn.check_timeouts(100.0 + timeout - 1)
    owner.clock = 100.0 + timeout - 1
    conn.host_data(b"still answering")  # restarts the clock
    conn.check_timeouts(100.0 + timeout + 1)
    assert conn.state is ConnState.HALF_CLOSED
    conn.check_timeouts(100.0 + 2 * timeout)
    assert conn.state is ConnState.CLOSED and tr.closed and not tr.aborted
    assert owner.closed[0][:2] == (7, "half_close_timeout") and owner.closed[0][3]
    assert owner.stats.counters["half_close_timeouts"] == 1


def test_half_close_timeout_resets_a_client_that_does_not_read() -> None:
    conn, owner, tr = make(hold=True)
    conn.eof_received()
    conn.host_data(b"unread")
    conn.check_timeouts(owner.config.half_close_timeout + 1)
    assert conn.state is ConnState.CLOSED and tr.aborted
    assert owner.closed[0][1] == "half_close_timeout"


def test_tls_eof_cannot_half_close_and_closes_after_delivering() -> None:
    conn, owner, tr = make(window=(1, 1000))
    conn.tls = True
    conn.data_received(frame(b"1") + frame(b"2"))
    assert conn.eof_received() is False  # asyncio closes a TLS transport anyway
    assert conn.state is ConnState.DRAINING_CLOSED
    conn.connection_lost(None)
    conn.on_credit(1, 5)
    assert [d[1] for d in owner.data] == [frame(b"1"), frame(b"2")]
    assert owner.eofs == [] and owner.closed == [(7, "peer_closed", "", True)]


def test_write_side_lost_after_half_close_reports_peer_closed() -> None:
    conn, owner, _tr = make()
    conn.eof_received()
    conn.connection_lost(None)
    assert conn.state is ConnState.CLOSED and owner.eofs == [7]
    assert owner.closed == [(7, "peer_closed", "", True)]


def test_reset_reports_peer_reset() -> None:
    conn, owner, _tr = make()
    conn.connection_lost(ConnectionResetError("boom"))
    assert owner.closed[0][:2] == (7, "peer_reset")


def test_host_data_is_encoded_and_credit_returns_as_it_drains() -> None:
    conn, owner, tr = make(hold=True)
    # the agent granted 4 messages / 1000 bytes (config)
    conn.host_data(b"a" * 10)
    conn.host_data(b"b" * 10)
    assert tr.written == frame(b"a" * 10) + frame(b"b" * 10)
    assert owner.credits == [] and conn in owner.watched
    tr.drain(14)  # the first message left the buffer
    assert conn.check_drain() is True
    assert owner.credits == [(7, 1, 10)]  # a quarter of 4 messages: due at once
    tr.drain()
    assert conn.check_drain() is False
    assert owner.credits == [(7, 1, 10), (7, 1, 10)]


def test_host_reply_with_header_keeps_length_consistent() -> None:
    conn, _owner, tr = make()
    conn.host_data(frame(b"xyz"), 4)  # header sent along
    conn.host_data(b"body", 0)  # body only: the agent writes the length field
    assert tr.written == frame(b"xyz") + frame(b"body")


def test_host_beyond_credit_closes_with_credit_exceeded() -> None:
    conn, owner, tr = make(hold=True)
    for _ in range(4):
        conn.host_data(b"x")
    conn.host_data(b"x")
    assert conn.state is ConnState.CLOSED and tr.aborted
    assert owner.closed[0][1] == "credit_exceeded"


def test_host_close_flushes_then_confirms() -> None:
    conn, owner, tr = make(hold=True)
    conn.data_received(frame(b"q"))
    conn.host_data(b"answer")
    conn.host_close()
    assert conn.state is ConnState.CLOSING and not tr.reading and not tr.closed
    conn.data_received(frame(b"ignored"))
    assert len(owner.data) == 1
    tr.drain()
    conn.check_drain()
    assert conn.state is ConnState.CLOSED and tr.closed and not tr.aborted
    assert owner.closed == [(7, "closed_by_host", "", True)]


def test_host_close_times_out_on_a_client_that_never_reads() -> None:
    conn, owner, tr = make(hold=True)
    conn.host_data(b"answer")
    owner.clock = 100.0
    conn.host_close()
    conn.check_timeouts(100.0 + owner.config.close_linger / 2)
    assert conn.state is ConnState.CLOSING
    conn.check_timeouts(100.0 + owner.config.close_linger + 1)
    assert conn.state is ConnState.CLOSED and tr.aborted
    assert owner.closed[0][1] == "closed_by_host" and "close_timeout" in owner.closed[0][2]


def test_host_abort() -> None:
    conn, owner, tr = make(hold=True)
    conn.host_data(b"answer")
    conn.host_close(abort=True)
    assert tr.aborted and owner.closed[0][1] == "closed_by_host"


def test_data_after_close_is_counted_not_written() -> None:
    conn, owner, _tr = make()
    conn.connection_lost(None)  # clean close from the client (no pending)
    assert conn.state is ConnState.CLOSED and owner.closed[0][1] == "peer_closed"
    conn.host_data(b"late")
    assert owner.stats.host_errors["data_in_closed"] == 1


def test_no_write_to_a_transport_that_closed_itself() -> None:
    # a send to the client failed (reset): asyncio closed the transport and will
    # call connection_lost soon; replies arriving meanwhile are not written
    conn, owner, tr = make()
    tr.aborted = True
    conn.host_data(b"reply")
    assert tr.written == b""
    conn.connection_lost(ConnectionResetError("boom"))
    assert owner.closed[0][:2] == (7, "peer_reset")


def test_outbound_connect_reports_connected() -> None:
    conn, owner, _tr = make(outbound=True)
    assert owner.connected == [(7, True, "")] and owner.new == []
    assert conn.state is ConnState.OPEN


def test_global_budget_pauses_partial_holders() -> None:
    cfg = AgentConfig(max_message_size=4096, max_buffered_per_connection=8192,
                      max_buffered_total=100)
    owner = FakeOwner(cfg)
    a, _, ta = make(owner, window=(1, 10_000))
    b, _, tb = make(owner, window=(1, 10_000))
    a.data_received(frame(b"x") + frame(b"y" * 200))  # second one waits for credit
    assert not ta.reading and owner.budget.used == 204
    b.data_received(frame(b"z" * 50)[:20])  # a partial message while over the total
    assert not tb.reading and b in owner.budget.paused
    a.on_credit(1, 1000)  # a's pending drains: total back under half, b resumes
    assert tb.reading and ta.reading and owner.budget.used == 20


@settings(max_examples=150, deadline=None)
@given(bodies=st.lists(st.binary(max_size=40), max_size=40),
       cuts=st.lists(st.integers(1, 60), max_size=80),
       grants=st.lists(st.integers(0, 3), max_size=80))
def test_every_message_exactly_once_in_order(bodies: list[bytes], cuts: list[int],
                                             grants: list[int]) -> None:
    conn, owner, tr = make(window=(3, 120))
    stream = b"".join(frame(b) for b in bodies)
    pos = 0
    gi = 0
    while pos < len(stream):
        if tr.reading:
            n = cuts[gi % len(cuts)] if cuts else 60
            conn.data_received(stream[pos:pos + n])
            pos += n
        # host consumes and grants back (possibly nothing this round)
        k = grants[gi % len(grants)] if grants else 1
        gi += 1
        delivered = len(owner.data)
        given_back = sum(c[1] for c in owner.credits)
        if k or not tr.reading:
            k = max(k, 1)
            sent = owner.data[-k:] if k <= delivered else owner.data
            conn.on_credit(len(sent), sum(len(d[1]) for d in sent))
        # memory bound: one read chunk plus one partial message
        assert conn.accounted <= 60 + 44
        del given_back
    while conn.pending:
        conn.on_credit(3, 1000)
    assert [d[1] for d in owner.data] == [frame(b) for b in bodies]


# -- replies of one received batch: one write per connection -----------------------


def test_replies_of_a_batch_go_in_one_write_and_credit_follows_the_drain() -> None:
    conn, owner, tr = make(hold=True)
    owner.batch_writes = []  # the agent is handling a batch from the host
    for body in (b"a" * 10, b"b" * 10, b"c" * 10):
        conn.host_data(body)
    assert tr.writes == 0 and owner.batch_writes == [conn]  # held until the batch ends
    assert owner.credits == []
    owner.batch_writes = None
    conn.flush_writes()
    assert tr.writes == 1
    assert tr.written == frame(b"a" * 10) + frame(b"b" * 10) + frame(b"c" * 10)
    assert owner.credits == [] and conn in owner.watched  # nothing has left the buffer
    tr.drain(14 + 14)  # two replies left
    conn.check_drain()
    assert sum(c[1] for c in owner.credits) == 2
    conn.flush_writes()  # nothing held: no write
    assert tr.writes == 1


def test_a_close_in_the_same_batch_writes_the_held_replies_first() -> None:
    conn, owner, tr = make()
    owner.batch_writes = []
    conn.host_data(b"one")
    conn.host_data(b"two")
    conn.host_close()  # a lifecycle event: what is held goes out before it
    assert tr.written == frame(b"one") + frame(b"two") and tr.writes == 1
    assert tr.closed


def test_replies_held_for_a_client_that_is_gone_are_dropped() -> None:
    conn, owner, tr = make()
    owner.batch_writes = []
    conn.host_data(b"late")
    tr.closed = True  # the transport closed itself (a failed send)
    conn.flush_writes()
    assert tr.written == b"" and tr.writes == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.lists(st.integers(1, 60), min_size=1, max_size=4),
                          st.integers(0, 200)), min_size=1, max_size=12))
def test_batched_replies_never_return_credit_before_their_bytes_leave(
        steps: list[tuple[list[int], int]]) -> None:
    # each step: one batch of replies (sizes), then the client reads some bytes
    cfg = AgentConfig(initial_window_messages=16, initial_window_bytes=4000,
                      max_message_size=1000, max_buffered_per_connection=8192)
    conn, owner, tr = make(FakeOwner(cfg), hold=True)
    sent: list[int] = []  # wire sizes, in order
    drained = 0
    for sizes, read in steps:
        granted = sum(c[1] for c in owner.credits)
        if len(sent) + len(sizes) > cfg.initial_window_messages + granted \
                or sum(sent) + sum(sizes) > cfg.initial_window_bytes + sum(c[2] for c in owner.credits):
            break  # the host stays within the window the agent granted (§5.1)
        owner.batch_writes = []
        for n in sizes:
            conn.host_data(bytes(n))
            sent.append(4 + n)
        assert tr.buffer == sum(sent[:-len(sizes)]) - drained  # held, not yet written
        owner.batch_writes = None
        conn.flush_writes()
        tr.drain(read)
        drained = min(drained + read, sum(sent))
        conn.check_drain()
        # credit only for whole replies that left the buffer, never more
        left = 0
        acc = 0
        for w in sent:
            if acc + w > drained:
                break
            acc += w
            left += 1
        granted = sum(c[1] for c in owner.credits)
        assert granted <= left
    tr.drain()
    conn.check_drain()
    # everything read: what is not granted back is below the window's grant threshold
    pending = conn.recv_window.pending_messages
    assert sum(c[1] for c in owner.credits) + pending == len(sent)


def test_a_host_close_stops_reading_without_counting_a_read_pause() -> None:
    conn, owner, tr = make(hold=True)
    conn.host_data(b"reply")  # still buffered: the connection lingers in CLOSING
    conn.host_close()
    assert conn.state is ConnState.CLOSING and not tr.reading
    assert owner.stats.as_dict().get("read_pauses", 0) == 0  # backpressure only
