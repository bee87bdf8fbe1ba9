"""The in-memory MessageConnection/MessageListener used by the runtime's tests."""

from __future__ import annotations

import asyncio

import pytest

import mux_rpc
from mux_rpc.testing import MemoryListener, memory_connection_pair


def run(coro: object) -> None:
    asyncio.run(asyncio.wait_for(coro, 5))  # type: ignore[arg-type]


def test_protocol_conformance_and_message_flow() -> None:
    async def main() -> None:
        client, server = memory_connection_pair(window_messages=2)
        assert isinstance(server, mux_rpc.MessageConnection)
        assert isinstance(MemoryListener(), mux_rpc.MessageListener)
        await client.send(b"abc", header=b"h")
        await client.send(b"de")
        third = asyncio.ensure_future(client.send(b"f"))
        await asyncio.sleep(0.01)
        assert not third.done()  # window of 2 unconsumed messages is full
        m = await server.recv()
        assert m == mux_rpc.Message(b"abc", b"h") and m.nbytes == 4
        await asyncio.sleep(0.01)
        assert not third.done()  # received is not consumed
        server.on_consumed(m.nbytes)
        await asyncio.wait_for(third, 1)
        assert (server.consumed_messages, server.consumed_bytes) == (1, 4)
        await server.send(b"reply")
        assert (await client.recv()) == mux_rpc.Message(b"reply")
        await client.close()
        assert (await server.recv()).payload == b"de"  # type: ignore[union-attr]
        assert (await server.recv()).payload == b"f"  # type: ignore[union-attr]
        assert await server.recv() is None  # clean close after the backlog
        with pytest.raises(mux_rpc.ConnectionClosedError):
            await server.send(b"x")
        with pytest.raises(mux_rpc.ConnectionClosedError):
            await client.recv()
        with pytest.raises(RuntimeError):
            _client_end, server_end = memory_connection_pair()
            server_end.on_consumed(1)

    run(main())


def test_byte_window_and_listener_close() -> None:
    async def main() -> None:
        client, server = memory_connection_pair(window_messages=100, window_bytes=10)
        await client.send(b"x" * 50)  # larger than the window: allowed when nothing is held
        blocked = asyncio.ensure_future(client.send(b"y"))
        await asyncio.sleep(0.01)
        assert not blocked.done()
        m = await server.recv()
        assert m is not None
        server.on_consumed(m.nbytes)
        await asyncio.wait_for(blocked, 1)

        lst = MemoryListener()
        accepting = asyncio.ensure_future(lst.accept())
        await asyncio.sleep(0)
        await lst.close()
        with pytest.raises(mux_rpc.ListenerClosedError):
            await accepting
        with pytest.raises(mux_rpc.ListenerClosedError):
            await lst.accept()

    run(main())
