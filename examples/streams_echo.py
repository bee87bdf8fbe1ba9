"""An asyncio echo server moved onto the offload path.

The plain asyncio version of this server would be::

    server = await asyncio.start_server(handle, "127.0.0.1", 8888)

and ``handle`` would parse the 4-byte length prefix itself. Here the agent
does the framing: the change is one import and one call, and ``handle`` reads
whole messages.

Run (as root for AF_XDP on a veth pair; otherwise shared memory)::

    .venv/bin/python examples/streams_echo.py

It starts everything (veth pair, agent process, host), serves, drives a few
TCP clients through it, prints what came back, and removes everything.
"""

from __future__ import annotations

import asyncio
import struct

from mux_rpc import offload  # <- the one import

LEN = struct.Struct("!I")


async def handle(reader: offload.MessageReader, writer: offload.MessageWriter) -> None:
    peer = writer.get_extra_info("peername")
    async for msg in reader:  # whole messages, until the client closes
        writer.write(msg.upper())
        await writer.drain()
    print(f"  {peer[0]}:{peer[1]} closed")
    writer.close()
    await writer.wait_closed()


async def tcp_client(port: int, words: list[bytes]) -> list[bytes]:
    """An ordinary TCP client speaking length-prefixed messages."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for w in words:
        writer.write(LEN.pack(len(w)) + w)
    await writer.drain()
    out = []
    for _ in words:
        (n,) = LEN.unpack(await reader.readexactly(4))
        out.append(await reader.readexactly(n))
    writer.close()
    await writer.wait_closed()
    return out


async def main(host: offload.Host) -> None:
    # <- the one call (was: asyncio.start_server(handle, "127.0.0.1", 0))
    server = await offload.start_server(handle, "127.0.0.1", 0, framer="length")
    print(f"echo server: the agent listens on 127.0.0.1:{server.port}")
    replies = await asyncio.gather(*(tcp_client(server.port, [b"hello", b"offload %d" % i])
                                     for i in range(3)))
    for r in replies:
        print("  reply:", r)
    server.close()
    await server.wait_closed()


if __name__ == "__main__":
    offload.run_offloaded(main, queues=2)
