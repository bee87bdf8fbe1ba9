"""The host over the real xport link (Link/AsyncLink) on xport.testing's memory
backend pair, against the fake agent speaking through a link of its own."""

from __future__ import annotations

import asyncio

import pytest

from mux_rpc._conn import Message
from mux_rpc._linkport import link_port
from mux_rpc._offload import Host, HostConfig
from mux_rpc._offload_errors import LinkLostError
from xport import _protocol as P
from xport._link import LinkConfig, new_session
from xport.testing import MemoryBackend, memory_backend_pair

from ._fake import FakeAgent
from .test_offload import FakeClock, run, settle


def agent_cfg(**kw: object) -> LinkConfig:
    return LinkConfig(role=P.Role.AGENT, local_mac=b"\x02\x00\x00\x00\x00\x01",
                      peer_mac=b"\x02\x00\x00\x00\x00\x02", **kw)  # type: ignore[arg-type]


async def make_linked(queues: int = 2, config: HostConfig | None = None,
                      clock: FakeClock | None = None, rx_buffers: int = 16):  # type: ignore[no-untyped-def]
    clock = clock or FakeClock()
    host_ports, agent_ports = [], []
    for _ in range(queues):
        a, b = memory_backend_pair(rx_buffers=rx_buffers, frame_size=1514)
        host_ports.append(link_port(a, clock=clock))
        agent_ports.append(link_port(b, clock=clock, link_config=agent_cfg()))
    agent = FakeAgent(agent_ports)  # type: ignore[arg-type]
    host = Host(host_ports, config, clock=clock, run_timer=False)
    await host.start()
    return host, agent, clock, [p.link.backend for p in host_ports + agent_ports]


@run
async def test_messages_flow_in_order_over_the_link_without_drops() -> None:
    host, agent, _, backends = await make_linked(queues=2)
    assert host.agent_hello is not None and host.agent_hello.role == P.Role.AGENT
    # each link hands over the first HELLO of the host's session, once (§3.1.3)
    hellos = agent.of_type(P.Hello)
    assert len(hellos) == 2 and all(h.role == P.Role.HOST for h in hellos)  # type: ignore[attr-defined]
    lst = await host.listen(0, "length")
    conns = []
    for cid in range(1, 9):
        await agent.send(0, P.NewConnection(cid, lst.listener_id, "127.0.0.1", 1000 + cid))
        conns.append(await lst.accept())
    big = bytes(range(256)) * 40  # 10 KiB: fragmented over several frames
    for i in range(40):
        for c in conns:
            await agent.send(c.conn_id % 2, P.Data(c.conn_id, b"%d:%d" % (c.conn_id, i)))
    for c in conns[:2]:
        await agent.send(c.conn_id % 2, P.Data(c.conn_id, big, header_length=8))

    async def drain(c):  # type: ignore[no-untyped-def]
        got = []
        for _ in range(40):
            m = await c.recv()
            got.append(m.payload)
            c.on_consumed(m.nbytes)
        return got

    results = await asyncio.gather(*(drain(c) for c in conns))
    for c, got in zip(conns, results):
        assert got == [b"%d:%d" % (c.conn_id, i) for i in range(40)]
    for c in conns[:2]:
        assert await c.recv() == Message(big[8:], big[:8])
    # replies go back in order
    for c in conns:
        for i in range(20):
            await c.send(b"r%d" % i)
    datas = await agent.wait_for(P.Data, 20 * len(conns), timeout=5)
    for c in conns:
        assert [bytes(d.payload) for d in datas if d.conn_id == c.conn_id] == [  # type: ignore[attr-defined]
            b"r%d" % i for i in range(20)]
    assert all(b.statistics().rx_fill_empty == 0 for b in backends)  # lossless
    await host.close()
    await agent.close()


@run
async def test_link_keepalive_expiry_breaks_waiters() -> None:
    host, agent, clock, _ = await make_linked(queues=1)
    lst = await host.listen(0, "length")
    await agent.send(0, P.NewConnection(3, lst.listener_id, "127.0.0.1", 1))
    conn = await lst.accept()
    waiting = asyncio.create_task(conn.recv())
    await settle()
    for p in agent.ports:
        await p.aclose()  # the agent goes silent
    clock.now += 6.0
    host.tick()
    with pytest.raises(LinkLostError) as ei:
        await asyncio.wait_for(waiting, 1)
    assert ei.value.reason == "link_lost"
    await host.close()
    await agent.close()


@run
async def test_agent_binds_late_and_the_handshake_completes() -> None:
    clock = FakeClock()
    hb, ab = MemoryBackend(), MemoryBackend()
    ab._connect(hb)  # the host's HELLO goes nowhere: the agent's socket is not bound
    host_port = link_port(hb, clock=clock)
    host = Host([host_port], None, clock=clock, run_timer=False)
    start = asyncio.create_task(host.start())
    await settle()
    assert not start.done() and hb.statistics().tx_frames >= 1
    hb._connect(ab)  # the agent binds and says HELLO: answered at once (§3.1.2)
    agent = FakeAgent([link_port(ab, clock=clock, link_config=agent_cfg())])  # type: ignore[list-item]
    await asyncio.wait_for(start, 2)
    await settle()
    assert host_port.link.established and agent.ports[0].link.established  # type: ignore[attr-defined]
    assert host.stats.peer_restarts == 0
    await host.close()
    await agent.close()


@run
async def test_agent_restart_over_the_link_is_one_restart() -> None:
    host, agent, clock, backends = await make_linked(queues=2)
    lst = await host.listen(0, "length")
    await agent.send(0, P.NewConnection(3, lst.listener_id, "127.0.0.1", 1))
    conn = await lst.accept()
    n_listen = len(agent.of_type(P.Listen))
    for p in agent.ports:
        await p.aclose()  # the agent dies
    # a new agent process: new sockets (backends) on the same host ends, one session
    session = new_session()
    new_ports = []
    for hb in backends[:2]:
        nb = MemoryBackend(rx_buffers=16)
        hb._connect(nb)
        nb._connect(hb)
        new_ports.append(link_port(nb, clock=clock, link_config=agent_cfg(), session=session))
    agent2 = FakeAgent(new_ports)  # type: ignore[arg-type]
    with pytest.raises(LinkLostError) as ei:
        await asyncio.wait_for(conn.recv(), 2)
    assert ei.value.reason == "peer_restarted"
    await agent2.wait_for(P.Listen, 1)  # re-issued to the new agent
    await settle()
    assert host.stats.peer_restarts == 1
    assert [p.link.peer_restarts for p in host._ports] == [1, 1]  # type: ignore[attr-defined]
    assert len(agent.of_type(P.Listen)) == n_listen
    # the listener accepts from the new agent; nothing was dropped for lack of buffers
    await agent2.send(0, P.NewConnection(1, lst.listener_id, "127.0.0.1", 2))
    assert (await lst.accept()).conn_id == 1
    assert all(b.statistics().rx_fill_empty == 0 for b in backends)
    for p in host._ports:  # the links started over cleanly: no gap, no stale credit
        assert p.link.statistics().dropped == {}  # type: ignore[attr-defined]
    await host.close()
    await agent.close()
    await agent2.close()
