"""Server over the in-memory MessageConnection: a third-party-style exchange
built from raw msgpack bytes, limits, credit, cancellation, deadlines."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import msgpack
import pytest
from muxrpc_apps import Probe, make_app

import mux_rpc
from mux_rpc.testing import MemoryConnection, MemoryListener


def run(coro_fn: Callable[[], Awaitable[None]], timeout: float = 10.0) -> None:
    async def main() -> None:
        async with asyncio.timeout(timeout):
            await coro_fn()

    asyncio.run(main())


@asynccontextmanager
async def serving(app: mux_rpc.App, config: mux_rpc.ServerConfig | None = None,
                  **listener_kw: Any) -> AsyncIterator[tuple[mux_rpc.Server, MemoryListener]]:
    listener = MemoryListener(**listener_kw)
    server = mux_rpc.Server(app, config)
    task = asyncio.create_task(server.serve(listener))
    try:
        yield server, listener
    finally:
        await server.close()
        await asyncio.wait_for(task, 5)


async def send(conn: MemoryConnection, obj: Any) -> None:
    await conn.send(msgpack.packb(obj, use_bin_type=True))


async def recv(conn: MemoryConnection) -> Any:
    msg = await asyncio.wait_for(conn.recv(), 5)
    assert msg is not None, "connection closed"
    return msgpack.unpackb(msg.payload, raw=False)


def test_raw_exchange_errors_and_notifications() -> None:
    async def main() -> None:
        app, notes = make_app()
        async with serving(app) as (server, lst):
            c = await lst.connect()
            await send(c, [0, 1, "echo", ["a", b"b", 3]])
            assert await recv(c) == [1, 1, None, ["a", b"b", 3]]
            await send(c, [0, 2, "kv.put", ["k", 5]])
            await send(c, [0, 3, "kv.get", ["k"]])
            assert await recv(c) == [1, 2, None, None]
            assert await recv(c) == [1, 3, None, 5]
            await send(c, [2, "note", ["hello"]])
            await send(c, [0, 4, "missing", []])
            r = await recv(c)
            assert r[1] == 4 and r[2]["code"] == "NO_METHOD"
            await send(c, [0, 5, "add", [1, 2, 3]])
            assert (await recv(c))[2]["code"] == "BAD_ARGS"
            await send(c, [0, 6, "boom", ["x"]])
            assert (await recv(c))[2] == {"code": "HANDLER_ERROR", "message": "ValueError: x"}
            await send(c, [0, 7, "aboom", ["y"]])
            assert (await recv(c))[2]["code"] == "HANDLER_ERROR"
            await send(c, [2, "anote", ["z"]])
            await send(c, [0, 8, "echo", []])  # after both notifications
            assert await recv(c) == [1, 8, None, []]
            for _ in range(50):
                if len(notes) == 2:
                    break
                await asyncio.sleep(0.01)
            assert notes == [["hello"], "z"]
            assert server.stats.handler_failures == 1  # the async one; sync errors are inline

    run(main)


def test_out_of_order_responses() -> None:
    async def main() -> None:
        app, _ = make_app()
        async with serving(app) as (_, lst):
            c = await lst.connect()
            for i, delay in enumerate([0.15, 0.1, 0.05, 0.0]):
                await send(c, [0, i, "sleep_echo", [i, delay]])
            got = [await recv(c) for _ in range(4)]
            assert [r[1] for r in got] == [3, 2, 1, 0]
            assert all(r[3] == r[1] for r in got)

    run(main)


def test_malformed_closes_only_that_connection(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        app, _ = make_app()
        async with serving(app) as (server, lst):
            bad, good = await lst.connect(), await lst.connect()
            await bad.send(b"\xc1garbage")
            assert await asyncio.wait_for(bad.recv(), 5) is None  # closed by the server
            await send(good, [0, 1, "echo", [1]])
            assert await recv(good) == [1, 1, None, [1]]
            assert server.stats.protocol_errors == 1
            again = await lst.connect()
            await send(again, [1, 0, None, None])  # a response: not ours to receive
            assert await asyncio.wait_for(again.recv(), 5) is None
            assert server.stats.protocol_errors == 2

    with caplog.at_level(logging.WARNING, "mux_rpc.server"):
        run(main)
    assert "malformed message" in caplog.text


def test_per_connection_limit_and_credit_return() -> None:
    async def main() -> None:
        probe = Probe()
        app, _ = make_app(probe)
        cfg = mux_rpc.ServerConfig(max_inflight_per_connection=3, max_inflight_total=100)
        async with serving(app, cfg) as (server, lst):
            c = await lst.connect()
            for i in range(10):
                await send(c, [0, i, "block", [i]])
            await probe.until(lambda: probe.inside == 3)
            await asyncio.sleep(0.05)
            assert probe.inside == 3 and probe.entered == 3
            server_end = lst.server_ends[0]
            assert server_end.consumed_messages == 0  # no credit back while handlers run
            probe.release.set()
            got = sorted([(await recv(c))[3] for _ in range(10)])
            assert got == list(range(10))
            assert probe.max_inside == 3
            await asyncio.sleep(0.01)
            assert server_end.consumed_messages == 10
            assert server_end.consumed_bytes == sum(
                len(msgpack.packb([0, i, "block", [i]])) for i in range(10))
            assert server.limits.inflight() == 0

    run(main)


def test_total_limit_across_connections() -> None:
    async def main() -> None:
        probe = Probe()
        app, _ = make_app(probe)
        cfg = mux_rpc.ServerConfig(max_inflight_per_connection=4, max_inflight_total=5)
        async with serving(app, cfg) as (_, lst):
            conns = [await lst.connect() for _ in range(3)]
            for k, c in enumerate(conns):
                for i in range(4):
                    await send(c, [0, i, "block", [k * 10 + i]])
            await probe.until(lambda: probe.inside == 5)
            await asyncio.sleep(0.05)
            assert probe.inside == 5
            probe.release.set()
            for k, c in enumerate(conns):
                assert sorted([(await recv(c))[3] for _ in range(4)]) == [k * 10 + i for i in range(4)]
            assert probe.max_inside == 5

    run(main)


def test_slow_handler_backpressures_only_its_connection() -> None:
    async def main() -> None:
        probe = Probe()
        app, _ = make_app(probe)
        cfg = mux_rpc.ServerConfig(max_inflight_per_connection=2)
        async with serving(app, cfg, window_messages=4) as (_, lst):
            slow, fast = await lst.connect(), await lst.connect()
            for i in range(4):  # credit window: 2 running + 2 waiting, unconsumed
                await send(slow, [0, i, "block", [i]])
            blocked = asyncio.create_task(send(slow, [0, 99, "block", [99]]))
            await probe.until(lambda: probe.inside == 2)
            await asyncio.sleep(0.05)
            assert not blocked.done()  # out of credit: the slow client waits
            for i in range(200):  # meanwhile the other connection flows freely
                await send(fast, [0, i, "echo", [i]])
                assert await recv(fast) == [1, i, None, [i]]
            assert not blocked.done()
            probe.release.set()
            await asyncio.wait_for(blocked, 5)
            assert sorted([(await recv(slow))[1] for _ in range(5)]) == [0, 1, 2, 3, 99]

    run(main)


def test_close_cancels_inflight_handlers() -> None:
    async def main() -> None:
        probe = Probe()
        app, _ = make_app(probe)
        async with serving(app) as (server, lst):
            c = await lst.connect()
            for i in range(3):
                await send(c, [0, i, "block", [i]])
            await probe.until(lambda: probe.inside == 3)
            await c.close()
            await probe.until(lambda: probe.cancelled == 3)
            assert probe.inside == 0
            for _ in range(50):
                if server.limits.inflight() == 0 and server.stats.connections_closed == 1:
                    break
                await asyncio.sleep(0.01)
            assert server.limits.inflight() == 0 and server.stats.connections_closed == 1
            # server close cancels handlers of live connections too, bounded
            c2 = await lst.connect()
            await send(c2, [0, 1, "block", [1]])
            await probe.until(lambda: probe.inside == 1)
        assert probe.cancelled == 4 and probe.inside == 0

    run(main)


def test_deadlines() -> None:
    async def main() -> None:
        app, _ = make_app()

        @app.method(timeout=0.05)
        async def own_deadline() -> None:
            await asyncio.sleep(10)

        cfg = mux_rpc.ServerConfig(call_timeout=0.1)
        async with serving(app, cfg) as (_, lst):
            c = await lst.connect()
            await send(c, [0, 1, "sleep_echo", ["late", 5]])
            await send(c, [0, 2, "sleep_echo", ["ok", 0]])
            await send(c, [0, 3, "own_deadline", []])
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            got = {r[1]: r for r in [await recv(c) for _ in range(3)]}
            assert got[2] == [1, 2, None, "ok"]
            assert got[1][2]["code"] == "TIMEOUT" and got[3][2]["code"] == "TIMEOUT"
            assert loop.time() - t0 < 2

    run(main)


def test_stream_handler_whole_messages_in_order() -> None:
    async def main() -> None:
        app = mux_rpc.App()
        seen: list[tuple[bytes | None, bytes]] = []

        @app.stream_handler(port=4420, framer="nvme-tcp")
        async def h(conn: mux_rpc.MessageConnection, msg: mux_rpc.Message) -> None:
            seen.append((msg.header, msg.payload))
            await asyncio.sleep(0.01 if msg.payload == b"first" else 0)
            await conn.send(msg.payload.upper(), header=msg.header)

        spec = app.stream_handlers[0]
        lst = MemoryListener()
        server = mux_rpc.Server(app)
        task = asyncio.create_task(server.serve(lst, handler=spec))
        c = await lst.connect()
        await c.send(b"first", header=b"H1")
        await c.send(b"second")
        a, b = await c.recv(), await c.recv()
        assert a == mux_rpc.Message(b"FIRST", b"H1") and b == mux_rpc.Message(b"SECOND", None)
        assert lst.server_ends[0].consumed_messages == 2
        await server.close()
        await task

    run(main)


def test_serve_returns_when_listener_closes() -> None:
    async def main() -> None:
        app, _ = make_app()
        lst = MemoryListener()
        server = mux_rpc.Server(app)
        task = asyncio.create_task(server.serve(lst))
        await asyncio.sleep(0)
        await lst.close()
        await asyncio.wait_for(task, 2)
        with pytest.raises(ConnectionRefusedError):
            await lst.connect()
        await server.close()
        with pytest.raises(RuntimeError):
            await server.serve(lst)

    run(main)


def test_message_client_pipelining_over_memory() -> None:
    async def main() -> None:
        probe = Probe()
        app, notes = make_app(probe)
        async with serving(app, window_messages=16) as (_, lst):
            c = mux_rpc.MessageClient(await lst.connect(auto_consume=False))
            futs = [asyncio.ensure_future(c.call("sleep_echo", i, (i % 5) * 0.002))
                    for i in range(300)]
            await asyncio.sleep(0.01)
            assert c.outstanding > 16  # more outstanding than the credit window
            assert await asyncio.gather(*futs) == list(range(300))
            with pytest.raises(mux_rpc.RemoteError) as ei:
                await c.call("add", 1, 2, 3)
            assert ei.value.code == "BAD_ARGS"
            with pytest.raises(TimeoutError):
                await c.call("sleep_echo", 1, 5, timeout=0.05)
            await c.notify("note", "n")
            assert await c.call("echo", "after") == ["after"]
            assert notes == [["n"]]
            blocked = asyncio.ensure_future(c.call("block", 1))
            await probe.until(lambda: probe.inside == 1)
            await c.close()
            with pytest.raises(mux_rpc.ConnectionClosedError):
                await blocked
            with pytest.raises(mux_rpc.ConnectionClosedError):
                await c.call("echo")
            await probe.until(lambda: probe.cancelled == 1)

    run(main)


def test_stream_handler_failure_closes_only_its_connection_and_deadline() -> None:
    async def main() -> None:
        app = mux_rpc.App()

        @app.stream_handler(port=9000, framer="length:size=4", concurrency=8)
        async def h(conn: mux_rpc.MessageConnection, msg: mux_rpc.Message) -> None:
            if msg.payload == b"fail":
                raise ValueError("bad request")
            if msg.payload == b"hang":
                await asyncio.sleep(10)
            await conn.send(b"ok:" + msg.payload)

        lst = MemoryListener()
        server = mux_rpc.Server(app, mux_rpc.ServerConfig(call_timeout=0.1))
        task = asyncio.create_task(server.serve(lst, handler=app.stream_handlers[0]))
        a, b, c = await lst.connect(), await lst.connect(), await lst.connect()
        await a.send(b"fail")
        assert await asyncio.wait_for(a.recv(), 5) is None  # closed by the server
        await b.send(b"hello")
        assert (await b.recv()) == mux_rpc.Message(b"ok:hello")
        await c.send(b"hang")  # passes the deadline: counts as a failure, closes c
        assert await asyncio.wait_for(c.recv(), 5) is None
        assert server.stats.handler_failures == 2
        await b.send(b"again")
        assert (await b.recv()) == mux_rpc.Message(b"ok:again")
        await server.close()
        await task

    run(main)


def test_serve_stream_handlers_opens_one_listener_each() -> None:
    async def main() -> None:
        app = mux_rpc.App()

        @app.stream_handler(port=7001, framer="length:size=4")
        async def upper(conn: mux_rpc.MessageConnection, msg: mux_rpc.Message) -> None:
            await conn.send(msg.payload.upper())

        @app.stream_handler(port=7002, framer="onc-rpc")
        async def rev(conn: mux_rpc.MessageConnection, msg: mux_rpc.Message) -> None:
            await conn.send(msg.payload[::-1])

        opened: dict[int, tuple[str, MemoryListener]] = {}

        async def listen(port: int, framer: str) -> mux_rpc.MessageListener:
            opened[port] = (framer, MemoryListener())
            return opened[port][1]

        server = mux_rpc.Server(app)
        task = asyncio.create_task(server.serve_stream_handlers(listen))
        while len(opened) < 2:
            await asyncio.sleep(0.001)
        assert {p: f for p, (f, _) in opened.items()} == {7001: "length:size=4", 7002: "onc-rpc"}
        a, b = await opened[7001][1].connect(), await opened[7002][1].connect()
        await a.send(b"abc")
        await b.send(b"abc")
        assert (await a.recv()) == mux_rpc.Message(b"ABC")
        assert (await b.recv()) == mux_rpc.Message(b"cba")
        await server.close()
        await asyncio.wait_for(task, 5)

    run(main)
