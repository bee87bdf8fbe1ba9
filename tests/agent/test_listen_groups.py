"""Listen groups: LISTENs of several queues (one host process each, ``mux-rpc
serve --workers``) on one address share one TCP listener, and each connection
lives on the queue of the member it went to."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from agent_fakes import FakeHost, run

from agent import Agent, AgentConfig
from xport import _protocol as P
from xport.testing import memory_backend_pair

ST = P.Status


@contextlib.asynccontextmanager
async def rig(queues: int) -> AsyncIterator[tuple[Agent, FakeHost]]:
    pairs = [memory_backend_pair(rx_buffers=64) for _ in range(queues)]
    agent = Agent([a for a, _ in pairs], AgentConfig(queues=queues))
    await agent.start()
    host = FakeHost([h for _, h in pairs])
    try:
        yield agent, host
    finally:
        await agent.close()
        host.close()


async def expect_on(host: FakeHost, kind: type, timeout: float = 5.0) -> tuple[int, Any]:
    """The first message of ``kind`` and the queue it came on."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        for i, (q, m) in enumerate(host.inbox):
            if isinstance(m, kind):
                del host.inbox[i]
                return q, m
        if loop.time() > deadline:
            raise TimeoutError(f"no {kind.__name__}; inbox {list(host.inbox)[:8]}")
        await asyncio.sleep(0.01)


def test_listen_group_spreads_connections_over_member_queues() -> None:
    async def main() -> None:
        async with rig(3) as (agent, host):
            # the last queue listens first (it picks the port), then the others join;
            # each host process numbers its listeners from 1
            host.send(P.Listen(1, "127.0.0.1", 0, "length"), q=2)
            q, res = await expect_on(host, P.ListenResult)
            assert (q, res.status, res.listener_id) == (2, ST.OK, 1)
            port = res.port
            for member in (1, 0):
                host.send(P.Listen(1, "127.0.0.1", port, "length"), q=member)
                q, res = await expect_on(host, P.ListenResult)
                assert (q, res.status, res.port) == (member, ST.OK, port)
            assert len(agent.statistics()["listeners"]) == 3  # type: ignore[arg-type]
            writers = []
            seen: dict[int, int] = {}
            for _ in range(9):
                _r, w = await asyncio.open_connection("127.0.0.1", port)
                writers.append(w)
                q, nc = await expect_on(host, P.NewConnection)
                assert nc.conn_id % 3 == q and nc.listener_id == 1
                seen[q] = seen.get(q, 0) + 1
                w.write(b"\x00\x00\x00\x02hi")
                q2, data = await expect_on(host, P.Data)
                assert (q2, data.conn_id) == (q, nc.conn_id)  # DATA on the same queue
            assert seen == {0: 3, 1: 3, 2: 3}
            # a member that leaves (its host re-LISTENs elsewhere or goes) keeps the
            # others serving: close queue 2's listener by re-listening on another port
            host.send(P.Listen(1, "127.0.0.1", 0, "length"), q=2)
            q, res = await expect_on(host, P.ListenResult)
            assert q == 2 and res.status == ST.OK and res.port != port
            for _ in range(4):
                _r, w = await asyncio.open_connection("127.0.0.1", port)
                writers.append(w)
                q, nc = await expect_on(host, P.NewConnection)
                assert q in (0, 1) and nc.conn_id % 3 == q
            for w in writers:
                w.close()
    run(main())


def test_listen_group_refuses_another_framer() -> None:
    async def main() -> None:
        async with rig(2) as (_agent, host):
            host.send(P.Listen(1, "127.0.0.1", 0, "length"), q=1)
            _, res = await expect_on(host, P.ListenResult)
            host.send(P.Listen(1, "127.0.0.1", res.port, "msgpack-rpc"), q=0)
            q, bad = await expect_on(host, P.ListenResult)
            assert q == 0 and bad.status == ST.OS_ERROR and "queue 1" in bad.text
    run(main())


def test_queue_zero_alone_still_spreads_over_every_queue() -> None:
    async def main() -> None:
        async with rig(2) as (_agent, host):
            host.send(P.Listen(1, "127.0.0.1", 0, "length"), q=0)
            q, res = await expect_on(host, P.ListenResult)
            assert q == 0 and res.status == ST.OK
            queues = set()
            writers = []
            for _ in range(4):
                _r, w = await asyncio.open_connection("127.0.0.1", res.port)
                writers.append(w)
                q, nc = await expect_on(host, P.NewConnection)
                assert nc.conn_id % 2 == q
                queues.add(q)
            assert queues == {0, 1}
            for w in writers:
                w.close()
    run(main())
