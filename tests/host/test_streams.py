"""The asyncio-streams shaped face over a fake agent."""

from __future__ import annotations

import asyncio

import pytest

from mux_rpc import offload
from xport import _protocol as P

from .test_offload import make, run, settle


async def echo(reader: offload.MessageReader, writer: offload.MessageWriter) -> None:
    peer = writer.get_extra_info("peername")
    async for msg in reader:
        writer.write(b"echo:" + msg + b" from %s" % peer[0].encode())
        await writer.drain()
    writer.close()
    await writer.wait_closed()


@run
async def test_start_server_echo_and_eof() -> None:
    host, agent, _ = await make(queues=2)
    with offload.use_host(host):
        server = await offload.start_server(echo, "127.0.0.1", 0, framer="length")
    assert server.port == agent.auto_listen_port and server.is_serving()
    lid = server.listener.listener_id
    await agent.send(0, P.NewConnection(5, lid, "127.0.0.1", 4242))
    await agent.send(1, P.Data(5, b"one"), P.Data(5, b"two"))
    datas = await agent.wait_for(P.Data, 2)
    assert [bytes(d.payload) for d in datas] == [b"echo:one from 127.0.0.1",  # type: ignore[attr-defined]
                                                 b"echo:two from 127.0.0.1"]
    # credit went back as the reader took the messages
    await settle()
    await agent.send(1, P.Closed(5, P.Status.PEER_CLOSED))
    await settle()
    # the callback saw EOF, closed its writer: the agent already forgot it, nothing sent
    assert agent.of_type(P.Close) == []
    server.close()
    await server.wait_closed()
    await host.close()
    await agent.close()


@run
async def test_reader_raises_asyncio_errors() -> None:
    host, agent, _ = await make()
    got: asyncio.Queue[BaseException] = asyncio.Queue()

    async def cb(reader: offload.MessageReader, writer: offload.MessageWriter) -> None:
        try:
            await reader.read_message()
            await reader.read_message()
        except BaseException as exc:
            got.put_nowait(exc)

    server = await offload.start_server(cb, port=0, offload=host)
    await agent.send(0, P.NewConnection(5, server.listener.listener_id, "127.0.0.1", 1))
    await agent.send(0, P.Data(5, b"x"), P.Closed(5, P.Status.RESET, "reset"))
    exc = await asyncio.wait_for(got.get(), 2)
    assert isinstance(exc, ConnectionResetError)
    assert isinstance(exc.__cause__, offload.ConnectionBrokenError)
    await agent.send(0, P.NewConnection(6, server.listener.listener_id, "127.0.0.1", 2))
    await agent.send(0, P.Closed(6, P.Status.PEER_CLOSED))
    exc = await asyncio.wait_for(got.get(), 2)
    assert isinstance(exc, asyncio.IncompleteReadError) and exc.partial == b""
    async with server:
        pass
    await host.close()
    await agent.close()


@run
async def test_writer_drain_waits_for_agent_credit() -> None:
    host, agent, _ = await make(agent_window=(2, 2 << 20))
    done = asyncio.Event()

    async def cb(reader: offload.MessageReader, writer: offload.MessageWriter) -> None:
        for _ in range(3):
            writer.write(b"x" * 40000)  # above the high-water mark after two
        await writer.drain()
        done.set()

    server = await offload.start_server(cb, port=0, offload=host)
    await agent.send(0, P.NewConnection(5, server.listener.listener_id, "127.0.0.1", 1))
    await agent.wait_for(P.Data, 2)
    await settle()
    assert not done.is_set()  # third message waits for credit: drain blocks
    await agent.send(0, P.Credit(5, 2, 80000))
    await asyncio.wait_for(done.wait(), 2)
    assert len(await agent.wait_for(P.Data, 3)) == 3
    await host.close()
    await agent.close()


def test_no_current_host() -> None:
    async def main() -> None:
        with pytest.raises(RuntimeError, match="no offload Host"):
            await offload.start_server(echo, port=0)
    asyncio.run(main())
