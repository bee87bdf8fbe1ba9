"""agent._accept.Listener: a burst of clients is accepted at once, on uvloop too."""

from __future__ import annotations

import asyncio
import errno
import socket
from typing import Any

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


class _Exhausted(socket.socket):
    """A listening socket whose accept() fails with EMFILE while ``full`` is set."""

    full = True
    calls = 0

    def accept(self) -> Any:
        type(self).calls += 1
        if type(self).full:
            raise OSError(errno.EMFILE, "Too many open files")
        return super().accept()


def test_out_of_descriptors_pauses_accepting_instead_of_spinning(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Listener, "retry_delay", 0.1)

    async def main() -> None:
        _Made.made = []
        sock = _Exhausted()
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        lst = Listener(asyncio.get_running_loop(), sock, _Made, ssl_context=None,
                       ssl_handshake_timeout=None, burst=1024)
        client = socket.create_connection(sock.getsockname())
        try:
            await asyncio.sleep(0.35)
            # the queued client keeps the socket readable: a retry per wake-up
            # would be thousands of calls; a pause of 0.1 s is a handful
            assert 2 <= _Exhausted.calls <= 6, _Exhausted.calls
            _Exhausted.full = False  # descriptors freed: the client is served
            for _ in range(100):
                if _Made.made:
                    break
                await asyncio.sleep(0.01)
            assert len(_Made.made) == 1
        finally:
            lst.close()
            for t in _Made.made:
                t.close()
            client.close()

    uvloop.run(main())
