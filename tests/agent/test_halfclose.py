"""Half-close in the agent (docs/protocol.md §3.13) with real TCP clients on
loopback, the real xport link over the in-memory backend pair and a fake
host: EOF after the last DATA, replies after the FIN, the host's CLOSE ending
it with a FIN, the half-close timeout, and an old peer dropping EOF."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from agent_fakes import FakeHost, FakeOwner, FakeTransport, frame, run
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import Agent, AgentConfig, Connection, ConnState
from agent._codec import make_framer
from xport import _link
from xport import _protocol as P
from xport._link import Link, LinkConfig
from xport.testing import memory_backend_pair

ST = P.Status


@contextlib.asynccontextmanager
async def rig(host_window: tuple[int, int] = (64, 0),
              **cfg: Any) -> AsyncIterator[tuple[Agent, FakeHost, int]]:
    a, h = memory_backend_pair(rx_buffers=64)
    agent = Agent([a], AgentConfig(queues=1, **cfg), tick_interval=0.02)
    await agent.start()
    host = FakeHost([h], window=host_window)
    try:
        host.send(P.Listen(1, "127.0.0.1", 0, "length"), q=0)
        res = await host.expect(P.ListenResult)
        assert res.status == ST.OK
        yield agent, host, int(res.port)
    finally:
        await agent.close()
        host.close()


async def fin_client(host: FakeHost, port: int, *bodies: bytes) -> tuple[socket.socket, int]:
    """A client that sends ``bodies`` framed and then half-closes (FIN, as
    `nc -N` does); returned with its conn id once the host was told of it."""
    s = socket.socket()
    s.setblocking(False)
    await asyncio.get_running_loop().sock_connect(s, ("127.0.0.1", port))
    s.sendall(b"".join(frame(b) for b in bodies))
    s.shutdown(socket.SHUT_WR)
    return s, (await host.expect(P.NewConnection)).conn_id


async def read_to_eof(s: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything until the server's FIN (raises on a reset)."""
    loop = asyncio.get_running_loop()
    out = bytearray()
    async with asyncio.timeout(timeout):
        while chunk := await loop.sock_recv(s, 65536):
            out += chunk
    return bytes(out)


def frames(data: bytes) -> list[bytes]:
    out, off = [], 0
    while off < len(data):
        (n,) = struct.unpack_from("!I", data, off)
        out.append(data[off + 4:off + 4 + n])
        off += 4 + n
    assert off == len(data)
    return out


def test_fin_then_eof_then_replies_then_host_close_is_a_fin() -> None:
    async def main() -> None:
        # the host's window: 2 messages, so most requests wait in the agent
        async with rig(host_window=(2, 1 << 20)) as (agent, host, port):
            s, cid = await fin_client(host, port, *(b"req%d" % i for i in range(5)))
            got = await host.collect(P.Data, cid, 2)
            await asyncio.sleep(0.05)
            assert host.take(P.Eof) == []  # three still wait for credit
            host.send(P.Credit(cid, 3, 1 << 20))
            got += await host.collect(P.Data, cid, 3)
            assert [bytes(m.payload) for m in got] == [frame(b"req%d" % i) for i in range(5)]
            await host.expect(P.Eof, cid)  # after the last DATA
            # replies, well after the FIN
            await asyncio.sleep(0.1)
            for i in range(5):
                host.send(P.Data(cid, b"rep%d" % i))
            host.send(P.Close(cid))
            assert frames(await read_to_eof(s)) == [b"rep%d" % i for i in range(5)]
            closed = await host.expect(P.Closed, cid)
            assert (closed.reason, closed.text) == (ST.LOCAL_CLOSE, "closed_by_host")
            st = agent.statistics()
            assert st["half_closes"] == 1 and st["closed"] == {"closed_by_host": 1}
            assert st["buffered_bytes"] == 0 and st["connections_open"] == 0
            assert st["host_errors"] == {}
            s.close()
    run(main())


def test_replies_drain_with_credit_after_the_fin() -> None:
    async def main() -> None:
        # the agent grants the host 4 messages: 40 replies need CREDIT back
        async with rig(initial_window_messages=4) as (agent, host, port):
            s, cid = await fin_client(host, port, b"go")
            await host.expect(P.Eof, cid)
            reader = asyncio.ensure_future(read_to_eof(s))
            sent = credit = 0
            while sent < 40:
                while sent < 40 and sent - credit < 4:
                    host.send(P.Data(cid, b"%d" % sent))
                    sent += 1
                if sent < 40:
                    credit += (await host.expect(P.Credit, cid)).messages
            host.send(P.Close(cid))
            assert frames(await reader) == [b"%d" % i for i in range(40)]
            await host.expect(P.Closed, cid)
            assert agent.statistics()["host_errors"] == {}
            s.close()
    run(main())


def test_half_close_timeout_closes_the_socket_when_the_host_never_does() -> None:
    async def main() -> None:
        async with rig(half_close_timeout=0.3) as (agent, host, port):
            s, cid = await fin_client(host, port, b"q")
            await host.expect(P.Data, cid)
            await host.expect(P.Eof, cid)
            t0 = time.monotonic()
            host.send(P.Data(cid, b"only answer"))  # and then nothing, no CLOSE
            data = await read_to_eof(s)
            waited = time.monotonic() - t0
            assert frames(data) == [b"only answer"]
            assert 0.25 < waited < 3, waited
            closed = await host.expect(P.Closed, cid)
            assert closed.text.startswith("half_close_timeout")
            st = agent.statistics()
            assert st["half_close_timeouts"] == 1 and st["closed"] == {"half_close_timeout": 1}
            assert st["connections_open"] == 0
            s.close()
    run(main())


def test_client_reset_after_fin_is_reported() -> None:
    async def main() -> None:
        async with rig() as (agent, host, port):
            s, cid = await fin_client(host, port)
            await host.expect(P.Eof, cid)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()  # RST
            await asyncio.sleep(0.05)
            host.send(P.Data(cid, b"into the void"))  # the write meets the reset
            closed = await host.expect(P.Closed, cid)
            assert closed.reason in (ST.RESET, ST.PEER_CLOSED)
            assert agent.statistics()["connections_open"] == 0
    run(main())


@pytest.mark.parametrize("eof_known", [True, False])
def test_an_old_peer_counts_eof_as_unknown_and_keeps_going(
        eof_known: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """§3.13.5: a receiver that does not know type 13 counts ``unknown_type``,
    drops it, and every other message still arrives."""
    if not eof_known:
        real = _link.decode_body

        def old_decode(mtype: int, conn_id: int, aux: int, body: memoryview) -> P.Message:
            if mtype == P.MessageType.EOF:
                raise P.ProtocolError("unknown_type", f"type {mtype}")
            return real(mtype, conn_id, aux, body)
        monkeypatch.setattr(_link, "decode_body", old_decode)
    a, b = memory_backend_pair(rx_buffers=16)
    now = 0.0
    mk = lambda role, mine, peer: LinkConfig(  # noqa: E731
        role=role, local_mac=mine, peer_mac=peer)
    sender = Link(a, mk(P.Role.AGENT, b"\x02\0\0\0\0\x01", b"\x02\0\0\0\0\x02"), now=now)
    receiver = Link(b, mk(P.Role.HOST, b"\x02\0\0\0\0\x02", b"\x02\0\0\0\0\x01"), now=now)
    got: list[P.Message] = []
    for _ in range(5):  # the handshake
        sender.flush(now)
        got += receiver.poll(64, now)
        receiver.flush(now)
        sender.poll(64, now)
    sender.send(P.Data(5, b"before"))
    sender.send(P.Eof(5))
    sender.send(P.Data(6, b"after"))
    sender.flush(now)
    got += receiver.poll(64, now)
    payloads = [m for m in got if not isinstance(m, P.Hello)]
    if eof_known:
        assert payloads == [P.Data(5, b"before"), P.Eof(5), P.Data(6, b"after")]
        assert "unknown_type" not in receiver.stats.dropped
    else:
        assert payloads == [P.Data(5, b"before"), P.Data(6, b"after")]
        assert receiver.stats.dropped["unknown_type"] == 1
    a.close()
    b.close()


# -- the connection shell: credit and budget stay consistent across a FIN ---------------

@settings(max_examples=200, deadline=None)
@given(bodies=st.lists(st.binary(max_size=40), max_size=12),
       cuts=st.lists(st.integers(0, 600), max_size=8),
       window=st.tuples(st.integers(1, 4), st.integers(44, 200)),
       grants=st.lists(st.tuples(st.booleans(), st.integers(0, 2), st.integers(0, 60)),
                       max_size=30))
def test_fin_amid_random_reads_and_credits_delivers_all_then_one_eof(
        bodies: list[bytes], cuts: list[int], window: tuple[int, int],
        grants: list[tuple[bool, int, int]]) -> None:
    cfg = AgentConfig(max_message_size=1000, max_buffered_per_connection=8192,
                      initial_window_bytes=1000, max_write_buffer=1000)
    owner = FakeOwner(cfg)
    conn = Connection(owner, 7, make_framer("length", 1000), host_window=window)
    tr = FakeTransport()
    conn.connection_made(tr)
    wire = b"".join(frame(b) for b in bodies)
    points = sorted({0, len(wire), *(c for c in cuts if c < len(wire))})
    chunks = [wire[a:b] for a, b in zip(points, points[1:])]
    granted = [window[0], window[1]]

    def credit(m: int, b: int) -> None:
        # never beyond what was consumed (the host's side of §5)
        sw = conn.send_window
        m = min(m, granted[0] - sw.messages)
        b = min(b, granted[1] - sw.bytes)
        if m or b:
            conn.on_credit(m, b)

    for to_client, m, b in grants:
        if to_client and chunks:
            conn.data_received(chunks.pop(0))
        else:
            credit(m, b)
        assert conn.send_window.messages >= 0 and conn.send_window.bytes >= 0
    for chunk in chunks:
        conn.data_received(chunk)
    assert conn.eof_received() is True
    for _ in range(len(bodies) + 1):  # the host consumes everything eventually
        credit(window[0], window[1])
    assert [d[1] for d in owner.data] == [frame(b) for b in bodies]
    assert owner.eof_after == [len(bodies)]  # once, after the last message
    assert conn.state is ConnState.HALF_CLOSED and not tr.closed
    assert owner.budget.used == 0 and conn.accounted == 0 and not conn.pending
    assert owner.closed == [] and not owner.stats.host_errors
    conn.host_data(b"answer")
    assert tr.written.endswith(frame(b"answer"))
