"""The host's batch fast path: plain-function msgpack-rpc calls of offloaded
connections run inline on the receive path (Server + Host against a fake agent)."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import msgpack

from mux_rpc import App, Server, ServerConfig
from mux_rpc._offload import Host, HostConfig, OffloadConnection
from xport import _protocol as P

from ._fake import FakeAgent
from .test_offload import make, run, settle


def req(msgid: int, method: str, *params: Any) -> P.Data:
    return P.Data(0, msgpack.packb([0, msgid, method, list(params)]))


def on(conn_id: int, *msgs: P.Data) -> list[P.Message]:
    return [P.Data(conn_id, m.payload) for m in msgs]


def replies(agent: FakeAgent, conn_id: int) -> list[list[Any]]:
    return [msgpack.unpackb(m.payload) for m in agent.of_type(P.Data)
            if isinstance(m, P.Data) and m.conn_id == conn_id]


def granted(agent: FakeAgent, conn_id: int) -> int:
    return sum(m.messages for m in agent.of_type(P.Credit)
               if isinstance(m, P.Credit) and m.conn_id == conn_id)


def make_app(gate: asyncio.Event) -> App:
    app = App()

    @app.method
    def echo(x: Any) -> Any:
        return x

    @app.method
    def boom() -> None:
        raise ValueError("no")

    @app.method
    async def slow(x: Any) -> Any:
        await gate.wait()
        return x

    return app


async def serving(config: ServerConfig | None = None, host_config: HostConfig | None = None,
                  ) -> tuple[Host, FakeAgent, Server, asyncio.Event, int, asyncio.Task[None]]:
    # the fake agent never confirms a CLOSE: don't wait long for it
    host_config = dataclasses.replace(host_config or HostConfig(), close_timeout=0.05)
    host, agent, _ = await make(config=host_config)
    gate = asyncio.Event()
    server = Server(make_app(gate), config)
    listener = await host.listen(0, "msgpack-rpc")
    task = asyncio.get_running_loop().create_task(server.serve(listener))
    return host, agent, server, gate, listener.listener_id, task


async def connect(agent: FakeAgent, lid: int, *cids: int) -> None:
    for cid in cids:
        await agent.send(0, P.NewConnection(cid, lid, "127.0.0.1", cid))
    await settle()


async def finish(host: Host, agent: FakeAgent, server: Server, task: asyncio.Task[None]) -> None:
    await server.close()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await host.close()
    await agent.close()


@run
async def test_sync_calls_are_answered_inline_and_credit_is_batched() -> None:
    host, agent, server, _, lid, task = await serving(
        host_config=HostConfig(window_messages=8, credit_delay=0.05))
    await connect(agent, lid, 5)
    conn = host._conns[5]
    await agent.send(0, *on(5, *(req(i, "echo", i) for i in range(7))))
    await settle()
    assert replies(agent, 5) == [[1, i, None, i] for i in range(7)]
    assert server.stats.messages == 7
    assert conn.buffered == (0, 0)  # every message done with
    # half a window (4) went back at once; the agent still holds 5 messages and
    # the whole byte window, so the other 3 are held, timer or not
    assert granted(agent, 5) == 4
    await asyncio.sleep(0.1)
    await settle()
    assert granted(agent, 5) == 4 and conn._rwin.pending_messages == 3
    # ... and go back with the next half window
    await agent.send(0, *on(5, req(7, "echo", 7)))
    await settle()
    assert granted(agent, 5) == 8 and conn._rwin.pending_messages == 0
    await finish(host, agent, server, task)


@run
async def test_credit_goes_back_after_the_delay_when_the_agent_may_be_blocked() -> None:
    # a byte window of one largest message: after any call the agent holds less
    # than a largest message, so what is below half a window goes back after
    # credit_delay instead of being held
    host, agent, server, _, lid, task = await serving(
        host_config=HostConfig(window_messages=8, window_bytes=4096, max_message_size=4096,
                               credit_delay=0.05))
    await connect(agent, lid, 5)
    await agent.send(0, *on(5, req(1, "echo", 1)))
    await settle()
    assert replies(agent, 5) == [[1, 1, None, 1]] and granted(agent, 5) == 0
    await asyncio.sleep(0.1)
    await settle()
    assert granted(agent, 5) == 1  # nothing leaks
    await finish(host, agent, server, task)


@run
async def test_async_calls_keep_their_order_and_do_not_block_sync_ones() -> None:
    host, agent, server, gate, lid, task = await serving()
    await connect(agent, lid, 5, 6)
    # one batch: an async call first, then sync calls on the same connection
    await agent.send(0, *on(5, req(1, "slow", "a"), req(2, "echo", "b"), req(3, "echo", "c")))
    await settle()
    assert replies(agent, 5) == [[1, 2, None, "b"], [1, 3, None, "c"]]
    # the pending async call holds back nothing else, here or on another connection
    await agent.send(0, *on(6, req(1, "echo", "x")), *on(5, req(4, "echo", "d")))
    await settle()
    assert replies(agent, 6) == [[1, 1, None, "x"]]
    assert [r[1] for r in replies(agent, 5)] == [2, 3, 4]
    gate.set()
    await settle()
    assert [r[1] for r in replies(agent, 5)] == [2, 3, 4, 1]  # matched by msgid
    await finish(host, agent, server, task)


@run
async def test_a_connection_at_its_limit_backpressures_only_itself() -> None:
    host, agent, server, gate, lid, task = await serving(
        ServerConfig(max_inflight_per_connection=2))
    await connect(agent, lid, 5, 6)
    await agent.send(0, *on(5, req(1, "slow", 1), req(2, "slow", 2), req(3, "echo", 3),
                            req(4, "echo", 4)))
    await agent.send(0, *on(6, *(req(i, "echo", i) for i in range(20))))
    await settle()
    assert replies(agent, 5) == []  # both slots held by slow calls: 3 and 4 wait
    assert host._conns[5].buffered[0] == 4
    assert len(replies(agent, 6)) == 20
    gate.set()
    await settle()
    assert sorted(r[1] for r in replies(agent, 5)) == [1, 2, 3, 4]
    await finish(host, agent, server, task)


@run
async def test_the_server_wide_limit_holds_inline_calls_too() -> None:
    host, agent, server, gate, lid, task = await serving(ServerConfig(max_inflight_total=1))
    await connect(agent, lid, 5, 6)
    await agent.send(0, *on(5, req(1, "slow", 1)))
    await settle()
    await agent.send(0, *on(6, req(1, "echo", 1)))
    await settle()
    assert replies(agent, 6) == []  # the only slot is taken
    assert server.limits.inflight() == 1
    gate.set()
    await settle()
    assert replies(agent, 5) == [[1, 1, None, 1]]
    assert replies(agent, 6) == [[1, 1, None, 1]]
    await finish(host, agent, server, task)


@run
async def test_errors_inline_and_deferred() -> None:
    host, agent, server, _, lid, task = await serving()
    await connect(agent, lid, 5, 6)
    await agent.send(0, *on(5, req(1, "boom"), req(2, "nope"), req(3, "echo"),
                            P.Data(0, msgpack.packb([2, "echo", [1]])), req(4, "echo", 4)))
    await settle()
    codes = {r[1]: (r[2] or {}).get("code") for r in replies(agent, 5)}
    assert codes == {1: "HANDLER_ERROR", 2: "NO_METHOD", 3: "BAD_ARGS", 4: None}
    assert host._conns[5].buffered == (0, 0)
    # a malformed message closes its connection (the task path's rule)
    await agent.send(0, P.Data(6, b"\xc1"))
    await settle()
    assert any(isinstance(m, P.Close) and m.conn_id == 6 for m in agent.of_type(P.Close))
    await finish(host, agent, server, task)


@run
async def test_reply_without_send_credit_waits_and_holds_its_credit() -> None:
    host, agent, server, _, lid, task = await serving(
        host_config=HostConfig(window_messages=8, credit_delay=0.01))
    await connect(agent, lid, 5)
    conn: OffloadConnection = host._conns[5]
    conn._swin.messages = 1  # the agent lets the host send one reply only
    await agent.send(0, *on(5, req(1, "echo", 1), req(2, "echo", 2), req(3, "echo", 3)))
    await settle()
    assert [r[1] for r in replies(agent, 5)] == [1]
    assert conn.buffered[0] == 2  # unsent replies keep their request's credit
    assert server.limits.inflight() == 2
    await agent.send(0, P.Credit(5, 8, 1 << 16))
    await settle()
    assert [r[1] for r in replies(agent, 5)] == [1, 2, 3]  # in order
    assert conn.buffered == (0, 0) and server.limits.inflight() == 0
    await asyncio.sleep(0.05)
    await settle()
    assert granted(agent, 5) == 3
    await finish(host, agent, server, task)


@run
async def test_close_cancels_pending_replies() -> None:
    host, agent, server, _, lid, task = await serving()
    await connect(agent, lid, 5)
    conn: OffloadConnection = host._conns[5]
    conn._swin.messages = 0
    await agent.send(0, *on(5, req(1, "echo", 1), req(2, "echo", 2)))
    await settle()
    assert server.limits.inflight() == 2
    await server.close()
    assert server.limits.inflight() == 0
    assert conn._hook is None
    await finish(host, agent, server, task)


def test_link_raw_data_gives_tuples_for_headerless_data_only() -> None:
    from xport._link import Link
    from xport.testing import memory_link_pair

    a, b = memory_link_pair()

    def pump() -> list[object]:
        got: list[object] = []
        for _ in range(100):
            moved = a.flush() + b.flush()
            a.poll()
            rb = b.poll()
            got += rb
            if not moved and not rb:
                break
        return got

    pump()  # the handshake
    b.raw_data = True
    a.send(P.Data(7, b"plain"))
    a.send(P.Data(8, b"hdrbody", 3))
    a.send(P.Credit(7, 1, 5))
    a.send(P.Data(9, b"x" * 5000))  # fragmented: reassembled, a Data as before
    got = pump()
    assert got[0] == (7, b"plain")
    assert got[1] == P.Data(8, b"hdrbody", 3)
    assert got[2] == P.Credit(7, 1, 5)
    assert isinstance(got[3], P.Data) and bytes(got[3].payload) == b"x" * 5000
    assert isinstance(b, Link) and sum(b.stats.dropped.values()) == 0
