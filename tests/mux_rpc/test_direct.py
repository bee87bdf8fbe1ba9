"""The direct asyncio TCP server (benchmark baseline) and the Client, on loopback."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from muxrpc_apps import Probe, make_app

import mux_rpc


def run(coro_fn: Callable[[], Awaitable[None]], timeout: float = 15.0) -> None:
    async def main() -> None:
        async with asyncio.timeout(timeout):
            await coro_fn()

    asyncio.run(main())


async def read_objs(reader: asyncio.StreamReader, n: int) -> list[Any]:
    unpacker = msgpack.Unpacker(raw=False)
    out: list[Any] = []
    while len(out) < n:
        data = await asyncio.wait_for(reader.read(65536), 5)
        assert data, f"closed after {len(out)} of {n} responses"
        unpacker.feed(data)
        out.extend(unpacker)
    return out


def test_raw_bytes_exchange_one_write_split_arbitrarily() -> None:
    async def main() -> None:
        app, notes = make_app()
        server = await mux_rpc.serve_direct(app)
        try:
            r, w = await asyncio.open_connection("127.0.0.1", server.port)
            reqs = [[0, 1, "echo", ["x", 1]], [2, "note", [7]], [0, 2, "nope", []],
                    [0, 3, "add", []], [0, 4, "boom", ["b"]], [0, 5, "sleep_echo", ["s", 0.05]],
                    [0, 6, "kv.put", ["k", b"v"]], [0, 7, "kv.get", ["k"]]]
            data = b"".join(msgpack.packb(q, use_bin_type=True) for q in reqs)
            for i in range(0, len(data), 7):  # the stream split mid-message
                w.write(data[i:i + 7])
                await w.drain()
            got = {o[1]: o for o in await read_objs(r, 7)}
            assert got[1] == [1, 1, None, ["x", 1]]
            assert got[2][2]["code"] == "NO_METHOD"
            assert got[3][2]["code"] == "BAD_ARGS"
            assert got[4][2]["code"] == "HANDLER_ERROR"
            assert got[5] == [1, 5, None, "s"]
            assert got[7] == [1, 7, None, b"v"]
            assert notes == [[7]]
            w.close()
        finally:
            await server.close()

    run(main)


def test_out_of_order_over_tcp() -> None:
    async def main() -> None:
        app, _ = make_app()
        async with await mux_rpc.serve_direct(app) as server:
            r, w = await asyncio.open_connection("127.0.0.1", server.port)
            w.write(msgpack.packb([0, 1, "sleep_echo", [1, 0.1]])
                    + msgpack.packb([0, 2, "echo", [2]]))
            got = await read_objs(r, 2)
            assert [o[1] for o in got] == [2, 1]
            w.close()

    run(main)


def test_malformed_closes_connection_server_survives() -> None:
    async def main() -> None:
        app, _ = make_app()
        cfg = mux_rpc.ServerConfig(max_message_size=1024)
        async with await mux_rpc.serve_direct(app, config=cfg) as server:
            for bad in [b"\xc1", msgpack.packb({"a": 1}), msgpack.packb([0, 1, "echo", ["x" * 2000]])]:
                r, w = await asyncio.open_connection("127.0.0.1", server.port)
                w.write(msgpack.packb([0, 1, "echo", [1]]) + bad)
                assert await read_objs(r, 1) == [[1, 1, None, [1]]]
                assert await asyncio.wait_for(r.read(), 5) == b""  # closed by the server
                w.close()
            assert server.stats.protocol_errors == 3
            async with await mux_rpc.Client.connect("127.0.0.1", server.port) as c:
                assert await c.call("echo", 5) == [5]

    run(main)


def test_direct_limits_per_connection_and_total() -> None:
    async def main() -> None:
        probe = Probe()
        app, _ = make_app(probe)
        cfg = mux_rpc.ServerConfig(max_inflight_per_connection=3, max_inflight_total=5)
        async with await mux_rpc.serve_direct(app, config=cfg) as server:
            a = await mux_rpc.Client.connect("127.0.0.1", server.port)
            b = await mux_rpc.Client.connect("127.0.0.1", server.port)
            calls = [asyncio.ensure_future(a.call("block", i)) for i in range(6)]
            await probe.until(lambda: probe.inside == 3)
            await asyncio.sleep(0.05)
            assert probe.inside == 3  # per-connection limit
            calls += [asyncio.ensure_future(b.call("block", 10 + i)) for i in range(6)]
            await probe.until(lambda: probe.inside == 5)
            await asyncio.sleep(0.05)
            assert probe.inside == 5  # total limit
            probe.release.set()
            assert sorted(await asyncio.gather(*calls)) == list(range(6)) + list(range(10, 16))
            assert probe.max_inside == 5 and server.limits.inflight() == 0
            await a.close()
            await b.close()

    run(main)


def test_direct_close_cancels_handlers_and_deadline() -> None:
    async def main() -> None:
        probe = Probe()
        app, _ = make_app(probe)
        async with await mux_rpc.serve_direct(
                app, config=mux_rpc.ServerConfig(call_timeout=0.1)) as server:
            c = await mux_rpc.Client.connect("127.0.0.1", server.port)
            with pytest.raises(mux_rpc.RemoteError) as ei:
                await c.call("sleep_echo", 1, 5)
            assert ei.value.code == "TIMEOUT"
            pending = [asyncio.ensure_future(c.call("block", i)) for i in range(2)]
            await probe.until(lambda: probe.inside == 2)
            await c.close()
            for p in pending:
                with pytest.raises(mux_rpc.ConnectionClosedError):
                    await p
            await probe.until(lambda: probe.cancelled == 2)
            assert server.limits.inflight() == 0

    run(main)


def test_client_pipelining_many_outstanding_and_errors() -> None:
    async def main() -> None:
        app, _ = make_app()
        async with await mux_rpc.serve_direct(app) as server:
            async with await mux_rpc.Client.connect("127.0.0.1", server.port) as c:
                n = 2000
                futs = [asyncio.ensure_future(c.call("sleep_echo", i, (i % 7) * 0.001))
                        if i % 2 else asyncio.ensure_future(c.call("echo", i)) for i in range(n)]
                await asyncio.sleep(0)
                assert c.outstanding > 100
                res = await asyncio.gather(*futs)
                assert res == [i if i % 2 else [i] for i in range(n)]
                with pytest.raises(mux_rpc.RemoteError) as ei:
                    await c.call("refuse")
                assert (ei.value.code, ei.value.message) == ("NOT_ALLOWED", "go away")
                with pytest.raises(TimeoutError):
                    await c.call("sleep_echo", 0, 1.0, timeout=0.05)
                assert c.outstanding == 0
                c.notify("note", 1)
                assert await c.call("echo") == []
            assert c.closed
            with pytest.raises(mux_rpc.ConnectionClosedError):
                await c.call("echo")

    run(main)


def test_client_fails_pending_when_server_goes_away() -> None:
    async def main() -> None:
        probe = Probe()
        app, _ = make_app(probe)
        server = await mux_rpc.serve_direct(app)
        c = await mux_rpc.Client.connect("127.0.0.1", server.port)
        p = asyncio.ensure_future(c.call("block", 1))
        await probe.until(lambda: probe.inside == 1)
        await server.close()
        with pytest.raises(mux_rpc.ConnectionClosedError):
            await asyncio.wait_for(p, 5)
        await c.close()

    run(main)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_run_direct_selectable_loop(loop: str) -> None:
    import threading

    app, _ = make_app()
    result: list[Any] = []

    async def ready(server: mux_rpc.DirectServer) -> None:
        async with await mux_rpc.Client.connect("127.0.0.1", server.port) as c:
            result.append(await c.call("echo", loop))
        result.append(type(asyncio.get_running_loop()).__module__)
        raise KeyboardInterrupt  # stop serving: run_direct is meant for Ctrl-C

    t = threading.Thread(target=lambda: pytest.raises(
        KeyboardInterrupt, mux_rpc.run_direct, app, "127.0.0.1", 0, loop=loop, ready=ready))
    t.start()
    t.join(10)
    assert result[0] == [loop]
    assert result[1].startswith("uvloop" if loop == "uvloop" else "asyncio")


values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=30) | st.binary(max_size=30),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=16,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(values, max_size=4), min_size=1, max_size=8))
def test_echo_round_trip_over_tcp(batches: list[list[Any]]) -> None:
    async def main() -> None:
        app, _ = make_app()
        server = await mux_rpc.serve_direct(app)
        async with server, await mux_rpc.Client.connect("127.0.0.1", server.port) as c:
            got = await asyncio.gather(*(c.call("echo", *args) for args in batches))
            assert got == batches

    run(main)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=6))
def test_random_bytes_never_hurt_the_server(chunks: list[bytes]) -> None:
    """Whatever a client sends, the server answers, closes that connection, or
    waits for more; the next client is always served."""

    async def main() -> None:
        app, _ = make_app()
        cfg = mux_rpc.ServerConfig(max_message_size=64)
        async with await mux_rpc.serve_direct(app, config=cfg) as server:
            r, w = await asyncio.open_connection("127.0.0.1", server.port)
            for chunk in chunks:
                w.write(chunk)
            await w.drain()
            w.write_eof()
            # answered or not, the server closes: protocol error, or EOF after replies
            await asyncio.wait_for(r.read(), 5)
            w.close()
            async with await mux_rpc.Client.connect("127.0.0.1", server.port) as c:
                assert await c.call("echo", "alive") == ["alive"]

    run(main)


def test_half_close_gets_every_reply() -> None:
    async def main() -> None:
        app, _ = make_app()
        cfg = mux_rpc.ServerConfig(max_inflight_per_connection=2)
        async with await mux_rpc.serve_direct(app, config=cfg) as server:
            r, w = await asyncio.open_connection("127.0.0.1", server.port)
            reqs = [[0, i, "sleep_echo", [i, 0.02]] if i % 2 else [0, i, "echo", [i]]
                    for i in range(10)]
            w.write(b"".join(msgpack.packb(q) for q in reqs))
            w.write_eof()  # shutdown(SHUT_WR), as `nc -N` does
            data = await asyncio.wait_for(r.read(), 5)  # read to the server's close
            got = sorted(o[1] for o in msgpack.Unpacker(io.BytesIO(data)))
            assert got == list(range(10))
            w.close()

    run(main)


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False
        self.reading = True

    def write(self, data: Any) -> None:
        assert not self.closed
        self.written += data

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def test_eof_while_writing_is_paused_still_answers_what_was_read() -> None:
    """Requests read while writing toward the client was paused are not
    parsed yet; a FIN arriving then must not close before they are answered
    (the reply comes once writing resumes, then the close)."""

    async def main() -> None:
        app, _ = make_app()
        server = mux_rpc.DirectServer(app, mux_rpc.ServerConfig())
        proto = server._protocol_factory()
        tr = _Transport()
        proto.connection_made(tr)
        proto.pause_writing()
        proto.data_received(msgpack.packb([0, 1, "echo", ["a"]]))
        assert tr.written == b""  # not parsed while paused
        proto.eof_received()
        assert not tr.closed
        proto.resume_writing()
        assert msgpack.unpackb(bytes(tr.written)) == [1, 1, None, ["a"]]
        assert tr.closed

    run(main)
