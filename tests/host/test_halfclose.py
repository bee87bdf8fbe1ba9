"""Half-close on the host (docs/protocol.md §3.13), against the scripted fake
agent: OffloadConnection after EOF, and the Server answering every request
sent before the client's FIN (inline fast path, task path, replies held by
the agent's window) before it closes."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import msgpack

from mux_rpc import App, Server
from mux_rpc._connstate import ConnState
from mux_rpc._offload import HostConfig
from mux_rpc._offload_errors import ConnectionBrokenError
from mux_rpc._service import StreamHandlerSpec
from xport import _protocol as P

from ._fake import FakeAgent
from .test_offload import accepted, make, run, settle


@run
async def test_recv_returns_buffered_messages_then_eof_and_send_still_works() -> None:
    host, agent, _ = await make()
    _lst, conn = await accepted(host, agent, 7)
    await agent.send(0, P.Data(7, b"a"), P.Data(7, b"b"), P.Eof(7))
    await settle()
    assert conn.state is ConnState.HALF_CLOSED and conn.can_send
    assert host.stats.peer_half_closes == 1 and host.stats.close_reasons == {}
    assert [(await conn.recv()).payload for _ in range(2)] == [b"a", b"b"]  # type: ignore[union-attr]
    assert await conn.recv() is None
    assert await conn.recv() is None  # stays at EOF
    # replies after the half-close still go to the agent, in order
    await conn.send(b"r1")
    await conn.send(b"r2")
    await settle()
    assert [bytes(m.payload) for m in agent.of_type(P.Data)] == [b"r1", b"r2"]  # type: ignore[attr-defined]
    # nothing more to receive: no CREDIT goes back after EOF
    credits_before = len(agent.of_type(P.Credit))
    conn.on_consumed(1)
    conn.on_consumed(1)
    await settle()
    assert len(agent.of_type(P.Credit)) == credits_before
    # close is the normal one: CLOSE, and the agent's CLOSED(closed_by_host) ends it
    closing = asyncio.create_task(conn.close())
    await settle()
    assert agent.of_type(P.Close) == [P.Close(7)] and conn.state is ConnState.CLOSING
    await agent.send(0, P.Closed(7, P.Status.LOCAL_CLOSE, "closed_by_host"))
    await closing
    assert conn.state is ConnState.CLOSED and host.stats.protocol_errors == 0
    await host.close()
    await agent.close()


@run
async def test_a_waiting_recv_wakes_at_eof_and_a_waiting_send_on_credit() -> None:
    host, agent, _ = await make(agent_window=(1, 1 << 20))
    _lst, conn = await accepted(host, agent, 9)
    waiting = asyncio.create_task(conn.recv())
    await settle()
    await agent.send(0, P.Eof(9))
    assert await asyncio.wait_for(waiting, 1) is None
    await conn.send(b"one")  # the agent's window: one message
    blocked = asyncio.create_task(conn.send(b"two"))
    await settle()
    assert not blocked.done()
    await agent.send(0, P.Credit(9, 1, 3))  # the client read "one"
    await asyncio.wait_for(blocked, 1)
    await settle()
    assert [bytes(m.payload) for m in agent.of_type(P.Data)] == [b"one", b"two"]  # type: ignore[attr-defined]
    await host.close()
    await agent.close()


@run
async def test_after_eof_data_is_a_protocol_error_and_closed_still_ends_it() -> None:
    host, agent, _ = await make()
    _lst, conn = await accepted(host, agent, 11)
    await agent.send(0, P.Eof(11), P.Data(11, b"late"), P.Eof(11))
    await settle()
    assert host.stats.protocol_errors == 2 and conn.buffered == (0, 0)
    assert await conn.recv() is None
    # the agent's timeout (or a lost socket) ends it: sending is over
    await agent.send(0, P.Closed(11, P.Status.INTERNAL, "half_close_timeout: 30 s"))
    await settle()
    assert conn.state is ConnState.BROKEN and not conn.can_send
    try:
        await conn.send(b"x")
    except ConnectionBrokenError as exc:
        assert "half_close_timeout" in str(exc.__cause__)
    else:
        raise AssertionError("send after the agent closed must raise")
    await host.close()
    await agent.close()


@run
async def test_eof_before_new_connection_is_kept() -> None:
    host, agent, _ = await make()
    lst = await host.listen(0, "length")
    # EOF and DATA stashed until the NEW_CONNECTION (possible across queues)
    await agent.send(0, P.Data(13, b"q"), P.Eof(13))
    await agent.send(0, P.NewConnection(13, lst.listener_id, "127.0.0.1", 1))
    conn = await lst.accept()
    assert conn.state is ConnState.HALF_CLOSED
    assert (await conn.recv()).payload == b"q"  # type: ignore[union-attr]
    assert await conn.recv() is None
    await host.close()
    await agent.close()


@run
async def test_outgoing_connection_eof_overtaking_connected() -> None:
    host, agent, _ = await make()
    connecting = asyncio.create_task(host.connect(("127.0.0.1", 9), "length"))
    await settle()
    (req,) = agent.of_type(P.Connect)
    cid = req.conn_id
    await agent.send(0, P.Eof(cid), P.Connected(cid))
    conn = await connecting
    assert conn.state is ConnState.HALF_CLOSED and await conn.recv() is None
    await conn.send(b"still")
    await host.close()
    await agent.close()


# -- the Server ---------------------------------------------------------------------


def app_with(gate: asyncio.Event) -> App:
    app = App()

    @app.method
    def echo(x: Any) -> Any:
        return x

    @app.method
    async def slow(x: Any) -> Any:
        await gate.wait()
        return x

    return app


def req(msgid: int, method: str, *params: Any) -> bytes:
    return msgpack.packb([0, msgid, method, list(params)])  # type: ignore[no-any-return]


async def shut_down(server: Server, serving: asyncio.Task[None], host: Any,
                    agent: FakeAgent) -> None:
    await server.close()
    serving.cancel()
    await asyncio.gather(serving, return_exceptions=True)
    await host.close()
    await agent.close()


async def serve_conn(server: Server, host: Any, agent: FakeAgent, cid: int,
                     framer: str = "msgpack-rpc",
                     handler: StreamHandlerSpec | None = None) -> asyncio.Task[None]:
    """``server`` serving a listener of ``framer``, with the agent's connection
    ``cid`` on it: the serving task (for :func:`shut_down`)."""
    lst = await host.listen(0, framer)
    serving = asyncio.create_task(server.serve(lst, handler=handler))
    await agent.send(0, P.NewConnection(cid, lst.listener_id, "127.0.0.1", 1))
    await settle()
    return serving


def reply_ids(agent: FakeAgent, cid: int) -> list[int]:
    return [msgpack.unpackb(m.payload)[1] for m in agent.of_type(P.Data)  # type: ignore[attr-defined]
            if m.conn_id == cid]


@run
async def test_server_answers_every_request_sent_before_the_fin_then_closes() -> None:
    # a window of 4 messages toward the agent: most replies wait for its CREDIT
    host, agent, _ = await make(config=dataclasses.replace(HostConfig(), close_timeout=2.0),
                                agent_window=(4, 1 << 20))
    gate = asyncio.Event()
    server = Server(app_with(gate))
    serving = await serve_conn(server, host, agent, 21)
    # 6 inline calls (one run: the batch hook) and 3 async ones, then the FIN
    msgs = [P.Data(21, req(i, "slow" if i % 3 == 2 else "echo", i)) for i in range(9)]
    await agent.send(0, *msgs, P.Eof(21))
    await settle()
    assert reply_ids(agent, 21) == [0, 1, 3, 4]  # the agent's window is full
    assert agent.of_type(P.Close) == []  # calls still in flight: not closed
    gate.set()
    for _ in range(3):  # the client reads: the agent grants credit as replies drain
        await settle()
        await agent.send(0, P.Credit(21, 4, 4096))
    await settle()
    assert sorted(reply_ids(agent, 21)) == list(range(9))
    # every reply went out before CLOSE: on the same queue, in order
    kinds = [type(m) for q, m in agent.received if getattr(m, "conn_id", None) == 21
             and isinstance(m, (P.Data, P.Close))]
    assert kinds == [P.Data] * 9 + [P.Close]
    await agent.send(0, P.Closed(21, P.Status.LOCAL_CLOSE, "closed_by_host"))
    await settle()
    assert server.stats.connections_closed == 1 and server.limits.inflight() == 0
    await shut_down(server, serving, host, agent)


@run
async def test_server_full_close_still_cancels_the_calls() -> None:
    # CLOSED(peer_closed): the client closed both ways, nobody gets replies
    host, agent, _ = await make(config=dataclasses.replace(HostConfig(), close_timeout=0.05))
    gate = asyncio.Event()
    server = Server(app_with(gate))
    serving = await serve_conn(server, host, agent, 23)
    await agent.send(0, P.Data(23, req(1, "slow", 1)),
                     P.Closed(23, P.Status.PEER_CLOSED, "peer_closed"))
    for _ in range(20):
        await settle()
        if server.stats.connections_closed:
            break
    assert server.stats.connections_closed == 1 and server.limits.inflight() == 0
    assert reply_ids(agent, 23) == []
    await shut_down(server, serving, host, agent)


@run
async def test_stream_handlers_finish_and_reply_after_the_fin() -> None:
    host, agent, _ = await make(config=dataclasses.replace(HostConfig(), close_timeout=2.0))
    app = App()
    gate = asyncio.Event()

    @app.stream_handler(port=0, framer="length", concurrency=4)
    async def h(conn: Any, msg: Any) -> None:
        await gate.wait()
        await conn.send(msg.payload.upper())

    server = Server(app)
    serving = await serve_conn(server, host, agent, 31, "length", app.stream_handlers[0])
    await agent.send(0, P.Data(31, b"a"), P.Data(31, b"b"), P.Eof(31))
    await settle()
    assert agent.of_type(P.Close) == []  # the handlers still run
    gate.set()
    await settle()
    sent = [(type(m), getattr(m, "payload", None)) for _, m in agent.received
            if getattr(m, "conn_id", None) == 31 and isinstance(m, (P.Data, P.Close))]
    assert sorted(bytes(p) for t, p in sent if t is P.Data) == [b"A", b"B"]
    assert sent[-1][0] is P.Close
    await agent.send(0, P.Closed(31, P.Status.LOCAL_CLOSE, "closed_by_host"))
    await settle()
    assert server.limits.inflight() == 0
    await shut_down(server, serving, host, agent)
