"""agent._accept.Listener: a burst of clients is accepted at once, on uvloop too."""

from __future__ import annotations

import asyncio
import socket

import pytest
import uvloop

from agent._accept import Listener

N = 300


class _Made(asyncio.Protocol):
    made: list[asyncio.BaseTransport] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        type(self).made.append(transport)


async def _burst_iterations(use_listener: bool) -> int:
    """Loop iterations a busy loop needs to accept N clients already queued."""
    loop = asyncio.get_running_loop()
    _Made.made = made = []
    if use_listener:
        lst = await Listener.start(_Made, "127.0.0.1", 0, backlog=1024)
        port = lst.sockets[0].getsockname()[1]
        close = lst.close
    else:
        srv = await loop.create_server(_Made, "127.0.0.1", 0, backlog=1024)
        port = srv.sockets[0].getsockname()[1]
        close = srv.close
    # connect while the loop is blocked: all N wait in the kernel's accept queue
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(N)]
    iterations = 0
    try:
        while len(made) < N and iterations < 5 * N:
            await asyncio.sleep(0)  # one loop iteration
            iterations += 1
        return iterations
    finally:
        close()
        for t in made:
            t.close()
        for c in clients:
            c.close()


@pytest.mark.parametrize("loop_name", ["uvloop", "asyncio"])
def test_a_burst_of_pending_clients_is_accepted_in_a_few_iterations(loop_name: str) -> None:
    run = uvloop.run if loop_name == "uvloop" else asyncio.run
    got = run(_burst_iterations(True))
    # one wake-up accepts them all; connect_accepted_socket takes a few steps each
    assert got < 20, f"{N} queued clients took {got} loop iterations"


def test_uvloop_create_server_is_why_we_have_our_own() -> None:
    # pins the reason for agent/_accept.py: if uvloop ever accepts a burst at
    # once, this fails and the Listener can go back to loop.create_server
    got = uvloop.run(_burst_iterations(False))
    assert got >= N // 2


def test_close_frees_the_port_and_stops_accepting() -> None:
    async def main() -> None:
        lst = await Listener.start(_Made, "127.0.0.1", 0)
        port = lst.sockets[0].getsockname()[1]
        lst.close()
        lst.close()  # idempotent
        assert lst.sockets == ()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        again = await Listener.start(_Made, "127.0.0.1", port)  # SO_REUSEADDR
        again.close()

    uvloop.run(main())


def test_bind_errors_surface_as_oserror() -> None:
    async def main() -> None:
        lst = await Listener.start(_Made, "127.0.0.1", 0)
        port = lst.sockets[0].getsockname()[1]
        try:
            with pytest.raises(OSError):
                await Listener.start(_Made, "127.0.0.1", port)
        finally:
            lst.close()

    uvloop.run(main())
