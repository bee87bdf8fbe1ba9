"""A client's half-close, end to end: a raw socket (not our client) sends
pipelined msgpack-rpc requests, then ``shutdown(SHUT_WR)`` as ``nc -N`` does,
and must read every reply and then EOF - the agent (its own process) and the
host over REAL AF_XDP on a veth pair, and the direct asyncio server, which
must behave the same."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgpack
import pytest

from mux_rpc import App, Server, serve_direct
from tests.conftest import afxdp_required

SLOW = 0.3  # seconds the slow handler sleeps: its replies come well after the FIN
BLOB = 128 << 10


def make_app() -> App:
    app = App("halfclose")

    @app.method
    def echo(x: Any) -> Any:  # plain function: the host's inline fast path
        return x

    @app.method
    async def slow(x: Any) -> Any:  # a task, replying after the FIN
        await asyncio.sleep(SLOW)
        return x

    @app.method
    def blob(i: int) -> bytes:  # large replies: writing toward the client pauses
        return i.to_bytes(4, "big") * (BLOB // 4)

    return app


async def ask_then_fin(port: int, requests: list[bytes], *, read_after: float = 0.0,
                       second: list[bytes] = (), timeout: float = 20.0,  # type: ignore[assignment]
                       rcvbuf: int = 0) -> tuple[list[Any], float, float]:
    """Send every request (and ``second`` after ``read_after`` seconds),
    ``shutdown(SHUT_WR)``, wait ``read_after`` again, read to the server's
    FIN. Returns (replies, seconds from FIN to the last byte, seconds from FIN
    to EOF). A reset raises."""
    loop = asyncio.get_running_loop()
    s = socket.socket()
    if rcvbuf:  # a small fixed receive buffer (no autotuning): the server's writes back up
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.setblocking(False)
    try:
        await loop.sock_connect(s, ("127.0.0.1", port))
        await loop.sock_sendall(s, b"".join(requests))
        if second:
            await asyncio.sleep(read_after)  # the server's writes back up meanwhile
            await loop.sock_sendall(s, b"".join(second))
        s.shutdown(socket.SHUT_WR)
        t_fin = time.monotonic()
        await asyncio.sleep(read_after)
        unpacker = msgpack.Unpacker(raw=False, max_buffer_size=64 << 20)
        replies: list[Any] = []
        last = t_fin
        async with asyncio.timeout(timeout):
            while chunk := await loop.sock_recv(s, 1 << 16):
                last = time.monotonic()
                unpacker.feed(chunk)
                replies.extend(unpacker)
        assert unpacker.tell() == sum(len(msgpack.packb(r)) for r in replies)  # no partial
        return replies, last - t_fin, time.monotonic() - t_fin
    finally:
        s.close()


def request(msgid: int, method: str, *params: Any) -> bytes:
    return msgpack.packb([0, msgid, method, list(params)])  # type: ignore[no-any-return]


async def pipelined_with_slow_calls(port: int) -> None:
    n = 300  # beyond the agent's window toward the client (64): replies wait for credit
    reqs = [request(i, "slow" if i % 50 == 7 else "echo", i) for i in range(n)]
    replies, last, _eof = await ask_then_fin(port, reqs)
    assert sorted(r[1] for r in replies) == list(range(n))
    assert all(r[0] == 1 and r[2] is None and r[3] == r[1] for r in replies)
    assert last >= SLOW * 0.8, last  # the slow replies came after the FIN


async def large_replies_read_late(port: int) -> None:
    # 6 MiB of replies while the client (a small receive buffer) reads
    # nothing: the server's writing toward it pauses (direct: pause_writing;
    # offloaded: the agent's window) and the second half of the requests
    # arrives meanwhile
    n = 48
    reqs = [request(i, "blob", i) for i in range(n)]
    replies, _last, _eof = await ask_then_fin(port, reqs[:n // 2], second=reqs[n // 2:],
                                              read_after=0.3, rcvbuf=4096)
    assert sorted(r[1] for r in replies) == list(range(n))
    for r in replies:
        assert r[3] == r[1].to_bytes(4, "big") * (BLOB // 4)


async def nothing_but_a_fin(port: int) -> None:
    replies, _last, eof = await ask_then_fin(port, [])
    assert replies == [] and eof < 5


SCENARIOS: list[Callable[[int], Awaitable[None]]] = [
    pipelined_with_slow_calls, large_replies_read_late, nothing_but_a_fin]


async def run_all(port: int) -> None:
    for scenario in SCENARIOS:
        await scenario(port)
    # and several clients at once
    await asyncio.gather(*(pipelined_with_slow_calls(port) for _ in range(4)))


def test_direct_server_answers_everything_before_the_fin() -> None:
    async def main() -> None:
        async with await serve_direct(make_app()) as server:
            await run_all(server.port)

    asyncio.run(asyncio.wait_for(main(), 60))


@contextlib.asynccontextmanager
async def offloaded(app: App) -> AsyncIterator[tuple[Any, int]]:
    from mux_rpc._orchestrate import OffloadOptions, OffloadRuntime

    async with OffloadRuntime(OffloadOptions(queues=1, backend="afxdp",
                                             stats_socket=False)) as rt:
        server = Server(app)
        lst = await rt.host.listen(0, "msgpack-rpc")
        task = asyncio.create_task(server.serve(lst))
        try:
            yield rt, lst.port
        finally:
            await server.close()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


@pytest.mark.afxdp
def test_offloaded_server_answers_everything_before_the_fin() -> None:
    afxdp_required()

    async def main() -> None:
        async with offloaded(make_app()) as (rt, port):
            await run_all(port)
            assert rt.backend_name == "afxdp"
            st = rt.host.stats
            assert st.peer_half_closes == 3 + 4 and st.protocol_errors == 0
            # every connection was closed by the host after its replies
            assert st.close_reasons == {} and not rt.host._conns

    asyncio.run(asyncio.wait_for(main(), 90))
