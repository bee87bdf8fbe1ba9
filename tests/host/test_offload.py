"""Offloaded sockets over an in-memory port pair, against a scripted fake agent."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from mux_rpc._conn import ListenerClosedError, Message
from mux_rpc._connstate import ConnState
from mux_rpc._offload import HOST_CONN_ID_BASE, Host, HostConfig
from mux_rpc._offload_errors import (
    AgentClosedReason,
    BusyError,
    ConnectionBrokenError,
    ConnectionClosedError,
    LinkLostError,
    OffloadRequestError,
)
from xport import _protocol as P

from ._fake import FakeAgent, port_pair


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run(fn: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kw: Any) -> None:
        asyncio.run(asyncio.wait_for(fn(*args, **kw), 10))
    return wrapper


async def make(queues: int = 1, config: HostConfig | None = None,
               clock: FakeClock | None = None,
               agent_window: tuple[int, int] | None = None) -> tuple[Host, FakeAgent, FakeClock]:
    clock = clock or FakeClock()
    pairs = [port_pair() for _ in range(queues)]
    agent = FakeAgent([b for _, b in pairs])
    if agent_window is not None:
        agent.window = agent_window  # what the host may send per connection
    host = Host([a for a, _ in pairs], config, clock=clock, run_timer=False)
    start = asyncio.create_task(host.start())
    await agent.wait_for(P.Hello, queues)
    await agent.hello()
    await start
    return host, agent, clock


async def settle() -> None:
    """Let every task run until nothing moves (bounded: in-memory hops only)."""
    for _ in range(200):
        await asyncio.sleep(0)


async def accepted(host: Host, agent: FakeAgent, conn_id: int = 7, q: int = 0):  # type: ignore[no-untyped-def]
    lst = await host.listen(0, "length")
    await agent.send(0, P.NewConnection(conn_id, lst.listener_id, "127.0.0.1", 5555))
    conn = await lst.accept()
    return lst, conn


@run
async def test_hello_listen_and_bound_port() -> None:
    host, agent, _ = await make(queues=2)
    hellos = agent.of_type(P.Hello)
    assert {q for q, m in agent.received if isinstance(m, P.Hello)} == {0, 1}
    assert all(h.role == P.Role.HOST for h in hellos)  # type: ignore[attr-defined]
    lst = await host.listen(0, "length")
    (req,) = agent.of_type(P.Listen)
    assert (req.bind_address, req.port, req.framer, req.tls) == ("127.0.0.1", 0, "length", False)  # type: ignore[attr-defined]
    assert lst.port == agent.auto_listen_port
    await host.close()
    await agent.close()


@run
async def test_listen_refused() -> None:
    host, agent, _ = await make()
    agent.refuse_listen = True
    with pytest.raises(OffloadRequestError, match="address in use"):
        await host.listen(8080, "length")
    await host.close()
    await agent.close()


@run
async def test_accept_recv_send_close() -> None:
    host, agent, _ = await make(queues=2)
    lst, conn = await accepted(host, agent, conn_id=7)
    assert conn.peer == ("127.0.0.1", 5555) and conn.conn_id == 7 and conn.queue == 1
    await agent.send(1, P.Data(7, b"HDRbody", header_length=3), P.Data(7, b"plain"))
    assert await conn.recv() == Message(b"body", b"HDR")
    assert await conn.recv() == Message(b"plain")
    await conn.send(b"reply")
    await conn.send(b"data", header=b"hh")
    datas = await agent.wait_for(P.Data, 2)
    assert datas == [P.Data(7, b"reply", 0), P.Data(7, b"hhdata", 2)]
    assert all(q == 1 for q, m in agent.received if isinstance(m, P.Data))
    closing = asyncio.create_task(conn.close())
    (close,) = await agent.wait_for(P.Close)
    assert close == P.Close(7)
    assert not closing.done()
    await agent.send(1, P.Closed(7, P.Status.LOCAL_CLOSE, ""))
    await closing
    assert conn.state is ConnState.CLOSED
    with pytest.raises(ConnectionClosedError) as ei:
        await conn.recv()
    assert not isinstance(ei.value, ConnectionBrokenError)
    with pytest.raises(ConnectionClosedError):
        await conn.send(b"x")
    await conn.close()  # idempotent
    assert len(agent.of_type(P.Close)) == 1
    await host.close()
    await agent.close()


@run
async def test_peer_close_is_eof_after_buffered_messages() -> None:
    host, agent, _ = await make()
    _, conn = await accepted(host, agent, conn_id=3)
    await agent.send(0, P.Data(3, b"a"), P.Data(3, b"b"), P.Closed(3, P.Status.PEER_CLOSED, ""))
    await settle()
    assert await conn.recv() == Message(b"a")
    assert await conn.recv() == Message(b"b")
    assert await conn.recv() is None
    assert await conn.recv() is None
    with pytest.raises(ConnectionBrokenError) as ei:
        await conn.send(b"late")
    assert ei.value.reason == "peer_closed"
    await conn.close()  # nothing to send: the agent already forgot it
    assert agent.of_type(P.Close) == []
    await host.close()
    await agent.close()


@run
async def test_reset_breaks_with_chained_cause() -> None:
    host, agent, _ = await make()
    _, conn = await accepted(host, agent, conn_id=3)
    waiting = asyncio.create_task(conn.recv())
    await settle()
    await agent.send(0, P.Closed(3, P.Status.RESET, "connection reset by peer"))
    with pytest.raises(ConnectionBrokenError) as ei:
        await waiting
    assert ei.value.reason == "peer_reset"
    assert isinstance(ei.value.__cause__, AgentClosedReason)
    assert ei.value.__cause__.code == "peer_reset"
    assert "reset by peer" in ei.value.__cause__.text
    assert not isinstance(ei.value, LinkLostError)
    await conn.close()
    with pytest.raises(ConnectionClosedError) as ei2:
        await conn.recv()
    assert not isinstance(ei2.value, ConnectionBrokenError)  # after close(): closed by you
    assert host.stats.close_reasons == {"peer_reset": 1}
    await host.close()
    await agent.close()


@run
async def test_framer_error_reason() -> None:
    host, agent, _ = await make()
    _, conn = await accepted(host, agent, conn_id=3)
    await agent.send(0, P.Data(3, b"ok"), P.Closed(3, P.Status.TOO_LARGE, "length 99999999"))
    await settle()
    assert await conn.recv() == Message(b"ok")  # what had arrived whole is still yours
    with pytest.raises(ConnectionBrokenError) as ei:
        await conn.recv()
    assert ei.value.reason == "message_too_large"
    await host.close()
    await agent.close()


@run
async def test_two_receivers_is_busy() -> None:
    host, agent, _ = await make()
    _, conn = await accepted(host, agent)
    first = asyncio.create_task(conn.recv())
    await settle()
    with pytest.raises(BusyError):
        await conn.recv()
    await agent.send(0, P.Data(7, b"x"))
    assert await first == Message(b"x")
    await host.close()
    await agent.close()


@run
async def test_host_never_buffers_more_than_its_window() -> None:
    cfg = HostConfig(window_messages=4, window_bytes=1 << 20)
    host, agent, _ = await make(config=cfg)
    _, conn = await accepted(host, agent, conn_id=9)
    await agent.send(0, *[P.Data(9, b"m%d" % i) for i in range(4)])
    await settle()
    assert conn.buffered == (4, 8)
    # the agent oversteps: the connection breaks, nothing more is buffered, CLOSE(abort) goes out
    await agent.send(0, P.Data(9, b"m4"))
    await settle()
    assert conn.buffered[0] <= 4
    assert host.stats.credit_violations == 1
    (close,) = await agent.wait_for(P.Close)
    assert close == P.Close(9, abort=True)
    msgs = [await conn.recv() for _ in range(4)]
    assert [m.payload for m in msgs if m] == [b"m0", b"m1", b"m2", b"m3"]
    with pytest.raises(ConnectionBrokenError) as ei:
        await conn.recv()
    assert ei.value.reason == "credit_violation"
    await host.close()
    await agent.close()


@run
async def test_credit_goes_back_as_messages_are_consumed() -> None:
    cfg = HostConfig(window_messages=4, window_bytes=1 << 20)
    host, agent, _ = await make(config=cfg)
    _, conn = await accepted(host, agent, conn_id=9)
    await agent.send(0, *[P.Data(9, b"abcd") for _ in range(4)])
    await settle()
    got = [await conn.recv() for _ in range(4)]
    assert agent.of_type(P.Credit) == []  # receiving alone returns nothing
    for m in got:
        assert m is not None
        conn.on_consumed(m.nbytes)
    await settle()
    credits = agent.of_type(P.Credit)
    assert sum(c.messages for c in credits) == 4  # type: ignore[attr-defined]
    assert sum(c.bytes for c in credits) == 16  # type: ignore[attr-defined]
    # extra reports are ignored, never over-grant
    conn.on_consumed(4)
    await settle()
    assert sum(c.messages for c in agent.of_type(P.Credit)) == 4  # type: ignore[attr-defined]
    # the refilled window is usable again
    await agent.send(0, *[P.Data(9, b"abcd") for _ in range(4)])
    await settle()
    assert host.stats.credit_violations == 0 and conn.buffered == (4, 16)
    await host.close()
    await agent.close()


@run
async def test_auto_consume_returns_credit_on_recv() -> None:
    cfg = HostConfig(window_messages=2, window_bytes=1 << 20)
    host, agent, _ = await make(config=cfg)
    lst = await host.listen(0, "length", auto_consume=True)
    await agent.send(0, P.NewConnection(5, lst.listener_id, "127.0.0.1", 1))
    conn = await lst.accept()
    for _i in range(6):  # three windows' worth, each returned as it is received
        await agent.send(0, P.Data(5, b"x"))
        assert await conn.recv() == Message(b"x")
        await settle()
    assert host.stats.credit_violations == 0
    assert sum(c.messages for c in agent.of_type(P.Credit)) >= 5  # type: ignore[attr-defined]
    await host.close()
    await agent.close()


@run
async def test_send_waits_for_agent_credit() -> None:
    cfg = HostConfig(window_messages=2, window_bytes=1 << 20)
    host, agent, _ = await make(config=cfg)  # agent's HELLO carries no window: host's is used
    _, conn = await accepted(host, agent, conn_id=9)
    m, b = conn.send_credit
    for _ in range(m):
        await conn.send(b"x")
    blocked = asyncio.create_task(conn.send(b"y"))
    await settle()
    assert not blocked.done()
    await agent.send(0, P.Credit(9, 1, 1))
    await asyncio.wait_for(blocked, 1)
    datas = await agent.wait_for(P.Data, m + 1)
    assert datas[-1] == P.Data(9, b"y")
    await host.close()
    await agent.close()


@run
async def test_connect_ok_and_refused() -> None:
    host, agent, _ = await make(queues=2)
    task = asyncio.create_task(host.connect(("127.0.0.1", 9999), "length"))
    (req,) = await agent.wait_for(P.Connect)
    assert req.conn_id >= HOST_CONN_ID_BASE and (req.host, req.port) == ("127.0.0.1", 9999)  # type: ignore[attr-defined]
    # data may overtake CONNECTED when they ride different queues
    await agent.send(req.conn_id % 2, P.Data(req.conn_id, b"early"))
    await agent.send(0, P.Connected(req.conn_id, P.Status.OK))
    conn = await task
    assert await conn.recv() == Message(b"early")
    task2 = asyncio.create_task(host.connect(("127.0.0.1", 1), "length"))
    (_, req2) = await agent.wait_for(P.Connect, 2)
    await agent.send(0, P.Connected(req2.conn_id, P.Status.OS_ERROR, "connection refused"))  # type: ignore[attr-defined]
    with pytest.raises(OffloadRequestError, match="refused") as ei:
        await task2
    assert isinstance(ei.value.__cause__, ConnectionBrokenError)
    await host.close()
    await agent.close()


@run
async def test_data_before_new_connection_is_kept() -> None:
    host, agent, _ = await make(queues=2)
    lst = await host.listen(0, "length")
    await agent.send(1, P.Data(11, b"first"))  # queue 1 overtakes queue 0
    await settle()
    await agent.send(0, P.NewConnection(11, lst.listener_id, "127.0.0.1", 1))
    conn = await lst.accept()
    assert await conn.recv() == Message(b"first")
    # messages for connections that are gone are counted, never stashed forever
    closing = asyncio.create_task(conn.close())
    await agent.wait_for(P.Close)
    await agent.send(1, P.Closed(11, P.Status.LOCAL_CLOSE))
    await closing
    await agent.send(1, P.Data(11, b"late"))
    await settle()
    assert host.stats.unknown_conn == 1 and not host._early
    await host.close()
    await agent.close()


@run
async def test_link_lost_wakes_every_waiter_promptly() -> None:
    cfg = HostConfig(keepalive_interval=1.0, keepalive_timeout=5.0)
    host, agent, clock = await make(config=cfg)
    lst, conn = await accepted(host, agent)
    recv = asyncio.create_task(conn.recv())
    accept = asyncio.create_task(lst.accept())
    await settle()
    clock.now += 2.0
    host.tick()
    await settle()
    assert agent.of_type(P.Keepalive)  # idle: keepalive sent
    assert not recv.done()
    clock.now += 4.0  # 6 s without anything from the agent
    host.tick()
    with pytest.raises(LinkLostError) as ei:
        await asyncio.wait_for(recv, 0.5)
    assert ei.value.reason == "link_lost"
    assert isinstance(ei.value.__cause__, AgentClosedReason)
    with pytest.raises(LinkLostError):
        await asyncio.wait_for(accept, 0.5)
    with pytest.raises(LinkLostError):
        await host.listen(0, "length")
    with pytest.raises(LinkLostError):
        await conn.send(b"x")
    await host.close()
    await agent.close()


@run
async def test_traffic_keeps_the_link_alive() -> None:
    host, agent, clock = await make(config=HostConfig(keepalive_timeout=5.0))
    for _ in range(5):
        clock.now += 3.0
        await agent.send(0, P.Keepalive())
        await settle()
        host.tick()
    assert not host.link_lost
    await host.close()
    await agent.close()


@run
async def test_agent_restart_breaks_connections_and_relistens() -> None:
    host, agent, clock = await make()
    lst, conn = await accepted(host, agent)
    n_listen = len(agent.of_type(P.Listen))
    # the same session again (a resend, another queue) is not a restart, at any time
    await agent.send(0, P.Hello(P.Role.AGENT, session=agent.session))
    clock.now += 2.0
    await agent.send(0, P.Hello(P.Role.AGENT, session=agent.session))
    await settle()
    assert conn.state is ConnState.OPEN and host.stats.peer_restarts == 0
    # a new session is: at once, whatever the time
    await agent.send(0, P.Hello(P.Role.AGENT, session=agent.session + 1))
    with pytest.raises(LinkLostError) as ei:
        await conn.recv()
    assert ei.value.reason == "peer_restarted" and host.stats.peer_restarts == 1
    await agent.wait_for(P.Listen, n_listen + 1)
    # the host's answer acknowledges the new session (§3.1.2)
    hellos = agent.of_type(P.Hello)
    assert hellos[-1].peer_session == agent.session + 1  # type: ignore[attr-defined]
    assert hellos[-1].session == hellos[0].session  # type: ignore[attr-defined]
    # the listener survives and accepts from the new agent
    await agent.send(0, P.NewConnection(1, lst.listener_id, "127.0.0.1", 2))
    conn2 = await lst.accept()
    assert conn2.conn_id == 1
    await host.close()
    await agent.close()


@run
async def test_listener_close() -> None:
    host, agent, _ = await make()
    lst = await host.listen(0, "length")
    waiting = asyncio.create_task(lst.accept())
    await settle()
    await lst.close()
    with pytest.raises(ListenerClosedError):
        await waiting
    # a client arriving afterwards is closed at once
    await agent.send(0, P.NewConnection(4, lst.listener_id, "127.0.0.1", 1))
    (close,) = await agent.wait_for(P.Close)
    assert close.conn_id == 4  # type: ignore[attr-defined]
    await host.close()
    await agent.close()


@run
async def test_hello_timeout() -> None:
    a, b = port_pair()
    host = Host([a], HostConfig(hello_timeout=0.05), run_timer=False)
    with pytest.raises(LinkLostError):
        await host.start()


def test_receive_window_batches_and_never_strands_a_blocked_agent() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from mux_rpc._offload import _HostReceiveWindow

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.tuples(st.integers(1, 300_000), st.booleans()), min_size=1, max_size=200))
    def prop(script: list[tuple[int, bool]]) -> None:
        w = _HostReceiveWindow(8, 1 << 20, max_message_size=1 << 20)
        w.initial_grant()
        agent_m, agent_b = 8, 1 << 20  # the agent's view of its credit
        held: list[int] = []
        grants = 0
        for size, consume_all in script:
            if agent_m >= 1 and agent_b >= size:  # the agent sends when credit allows
                agent_m -= 1
                agent_b -= size
                w.on_received(size)
                held.append(size)
            elif not held:
                raise AssertionError("agent blocked while the host holds nothing: deadlock")
            # the application consumes one message, or everything it holds
            while held:
                g = w.on_consumed(held.pop(0))
                if g:
                    grants += 1
                    agent_m += g[0]
                    agent_b += g[1]
                if not consume_all:
                    break
            # views agree and the window is never exceeded
            assert (agent_m, agent_b) == (w.outstanding_messages, w.outstanding_bytes)
            assert w.buffered_messages <= 8 and w.buffered_bytes <= 1 << 20
    prop()


@run
async def test_a_closed_after_close_gave_up_waiting_is_late_not_unknown() -> None:
    # the agent may flush to a slow client longer than close() waits (its
    # close_linger against HostConfig.close_timeout): that CLOSED is expected
    host, agent, _ = await make(config=HostConfig(close_timeout=0.05))
    lst = await host.listen(0, "length")
    await agent.send(0, P.NewConnection(11, lst.listener_id, "127.0.0.1", 1),
                     P.NewConnection(12, lst.listener_id, "127.0.0.1", 2))
    slow, quick = await lst.accept(), await lst.accept()
    await slow.close()  # nothing from the agent within 0.05 s: given up
    closing = asyncio.create_task(quick.close())
    await agent.wait_for(P.Close, 2)
    await agent.send(0, P.Closed(12, P.Status.LOCAL_CLOSE))
    await closing
    await agent.send(0, P.Closed(11, P.Status.LOCAL_CLOSE))  # late, once
    await agent.send(0, P.Closed(11, P.Status.LOCAL_CLOSE), P.Closed(12, P.Status.LOCAL_CLOSE))
    await settle()
    assert (host.stats.late_closed, host.stats.unknown_conn) == (1, 2)
    await host.close()
    await agent.close()
