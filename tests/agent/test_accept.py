"""agent._accept.Listener: a burst of clients is accepted at once, on uvloop too."""

from __future__ import annotations

import asyncio
import errno
import socket
from typing import Any

import pytest
import uvloop

from agent import _accept
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
        _Exhausted.full, _Exhausted.calls = True, 0
        sock = _Exhausted()
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        lst = Listener(asyncio.get_running_loop(), [sock], _Made, ssl_context=None,
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


# -- every address, one port ---------------------------------------------------------


def _can_bind(addr: str) -> bool:
    """Whether a TCP socket can be bound on ``addr`` (an IPv6 address) here."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind((addr, 0))
    except OSError:
        return False
    return True


# what this machine has: IPv6 at all (a "::" socket), and ::1 on lo
HAS_IPV6 = _can_bind("::")
HAS_IPV6_LOOPBACK = _can_bind("::1")

LOOPS = {"uvloop": uvloop.run, "asyncio": asyncio.run}


def _fake_resolver(loop: asyncio.AbstractEventLoop, *hosts: str) -> None:
    """Make ``loop`` resolve any name to ``hosts`` (in that order), as an
    /etc/hosts with several lines for one name would (asyncio loops only)."""
    async def getaddrinfo(host: Any, port: Any, **kw: Any) -> list[Any]:
        out = []
        for h in hosts:
            out += socket.getaddrinfo(h, port, type=socket.SOCK_STREAM,
                                      flags=socket.AI_PASSIVE | socket.AI_NUMERICHOST)
        return out

    loop.getaddrinfo = getaddrinfo  # type: ignore[method-assign]


async def _served(lst: Listener, targets: list[tuple[str, int]]) -> list[asyncio.BaseTransport]:
    """Connect one client to each target and wait until the listener made a
    transport for each; returns them (closed by the caller)."""
    _Made.made = made = []
    clients = [socket.create_connection(t, timeout=2) for t in targets]
    try:
        for _ in range(200):
            if len(made) >= len(targets):
                break
            await asyncio.sleep(0.005)
        # each accepted socket's local address: the listener served that address
        assert sorted(t.get_extra_info("sockname")[0] for t in made) == sorted(h for h, _ in targets)
        return made
    finally:
        for c in clients:
            c.close()


def _assert_refused(targets: list[tuple[str, int]]) -> None:
    for t in targets:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(t, timeout=2).close()


@pytest.mark.parametrize("host", ["", None], ids=["empty", "none"])
@pytest.mark.parametrize("loop_name", list(LOOPS))
def test_every_interface_means_ipv4_and_ipv6_on_one_port(loop_name: str, host: str | None) -> None:
    async def main() -> None:
        lst = await Listener.start(_Made, host, 0)
        p = lst.port
        try:
            assert p != 0
            # a port-0 request gives ONE port to every socket (asyncio's would differ)
            assert {s.getsockname()[1] for s in lst.sockets} == {p}
            expected = {("0.0.0.0", p)} | ({("::", p)} if HAS_IPV6 else set())
            # no IPv6 in this kernel: the listener says so by listening on IPv4 only
            assert {a[:2] for a in lst.addresses} == expected
            targets = [("127.0.0.1", p)] + ([("::1", p)] if HAS_IPV6_LOOPBACK else [])
            made = await _served(lst, targets)
        finally:
            lst.close()
        for t in made:
            t.close()
        _assert_refused(targets)

    LOOPS[loop_name](main())


def test_localhost_with_both_families_accepts_ipv4_and_ipv6_clients() -> None:
    # this machine's /etc/hosts may give "localhost" one family only: resolve it
    # as a dual-stack one does ("::1" first), the binding itself is real
    async def main() -> None:
        _fake_resolver(asyncio.get_running_loop(), "::1", "127.0.0.1")
        if not HAS_IPV6_LOOPBACK:
            # no ::1 here: the listener fails and names the address it could not bind
            with pytest.raises(OSError, match=r"'::1'.*cannot assign requested address"):
                await Listener.start(_Made, "localhost", 0)
            return
        lst = await Listener.start(_Made, "localhost", 0)
        p = lst.port
        try:
            assert [a[:2] for a in lst.addresses] == [("::1", p), ("127.0.0.1", p)]
            assert [s.family for s in lst.sockets] == [socket.AF_INET6, socket.AF_INET]
            assert all(s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
                       for s in lst.sockets if s.family == socket.AF_INET6)
            made = await _served(lst, [("::1", p), ("127.0.0.1", p)])
        finally:
            lst.close()
        for t in made:
            t.close()
        assert lst.sockets == () and lst.addresses == ()
        _assert_refused([("::1", p), ("127.0.0.1", p)])
        # nothing held the port: both addresses can be bound on it again
        again = await Listener.start(_Made, "localhost", p)
        assert again.port == p and len(again.sockets) == 2
        again.close()

    asyncio.run(main())


def test_localhost_binds_every_address_the_resolver_gives() -> None:
    resolved = {sa[0] for *_, sa in socket.getaddrinfo("localhost", 0, type=socket.SOCK_STREAM,
                                                       flags=socket.AI_PASSIVE)}

    async def main() -> None:
        if "::1" in resolved and not HAS_IPV6_LOOPBACK:
            with pytest.raises(OSError, match="'::1'"):
                await Listener.start(_Made, "localhost", 0)
            return
        lst = await Listener.start(_Made, "localhost", 0)
        try:
            assert {a[0] for a in lst.addresses} == resolved
            made = await _served(lst, [(h, lst.port) for h in sorted(resolved)])
        finally:
            lst.close()
        for t in made:
            t.close()

    uvloop.run(main())


def _raced_socket(blockers: list[socket.socket], races: int) -> type[socket.socket]:
    """A socket class under which, for the first ``races`` binds of 127.0.0.2
    on a given port, another program takes that port there just before (a
    real collision, staged); each such blocker is appended to ``blockers``."""
    real = socket.socket

    class Raced(socket.socket):
        def bind(self, address: Any) -> None:
            if address[0] == "127.0.0.2" and address[1] and len(blockers) < races:
                b = real(socket.AF_INET, socket.SOCK_STREAM)
                b.bind(address)
                b.listen(1)
                blockers.append(b)
            super().bind(address)

    return Raced


def test_a_port_taken_on_a_later_address_is_retried_with_a_fresh_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # the kernel picks port P for 127.0.0.1; just before the 127.0.0.2 socket
    # binds P, another program takes 127.0.0.2:P - twice
    blockers: list[socket.socket] = []

    async def main() -> None:
        _fake_resolver(asyncio.get_running_loop(), "127.0.0.1", "127.0.0.2")
        monkeypatch.setattr(socket, "socket", _raced_socket(blockers, races=2))
        try:
            lst = await Listener.start(_Made, "x", 0)
        finally:
            monkeypatch.undo()
        try:
            assert len(blockers) == 2  # two ports were lost to the race, the third kept
            p = lst.port
            assert p not in {b.getsockname()[1] for b in blockers}
            assert list(lst.addresses) == [("127.0.0.1", p), ("127.0.0.2", p)]
            made = await _served(lst, [("127.0.0.1", p), ("127.0.0.2", p)])
            # the 127.0.0.1 sockets of the lost attempts were closed, not leaked
            _assert_refused([("127.0.0.1", b.getsockname()[1]) for b in blockers])
        finally:
            lst.close()
            for b in blockers:
                b.close()
        for t in made:
            t.close()

    asyncio.run(main())


def test_a_port_never_free_everywhere_fails_after_a_few_attempts(
        monkeypatch: pytest.MonkeyPatch) -> None:
    blockers: list[socket.socket] = []

    async def main() -> None:
        _fake_resolver(asyncio.get_running_loop(), "127.0.0.1", "127.0.0.2")
        # every attempt loses its port (more races than attempts)
        monkeypatch.setattr(socket, "socket",
                            _raced_socket(blockers, races=_accept.PORT_ATTEMPTS + 1))
        try:
            with pytest.raises(OSError) as info:
                await Listener.start(_Made, "x", 0)
        finally:
            monkeypatch.undo()
        ports = [b.getsockname()[1] for b in blockers]
        try:
            assert info.value.errno == errno.EADDRINUSE
            assert len(blockers) == _accept.PORT_ATTEMPTS
            _assert_refused([("127.0.0.1", port) for port in ports])
        finally:
            for b in blockers:
                b.close()

    asyncio.run(main())


def test_a_bind_failure_on_one_address_closes_the_others() -> None:
    async def main() -> None:
        _fake_resolver(asyncio.get_running_loop(), "127.0.0.1", "127.0.0.2")
        with socket.socket() as held:
            held.bind(("127.0.0.2", 0))
            held.listen(1)
            port = held.getsockname()[1]
            with pytest.raises(OSError, match=rf"\('127.0.0.2', {port}\).*address already in use"
                               ) as info:
                await Listener.start(_Made, "x", port)
            # the first socket was closed, not left to the garbage collector (the
            # traceback in ``info`` would keep it alive, listening)
            _assert_refused([("127.0.0.1", port)])
            del info

    asyncio.run(main())


def test_out_of_descriptors_pauses_every_socket_of_the_listener(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Listener, "retry_delay", 0.1)
    wakeups = 0
    on_readable = Listener._on_readable

    def counted(self: Listener, sock: socket.socket) -> None:
        nonlocal wakeups
        wakeups += 1
        on_readable(self, sock)

    monkeypatch.setattr(Listener, "_on_readable", counted)

    async def main() -> None:
        _Made.made = []
        _Exhausted.full, _Exhausted.calls = True, 0
        first = _Exhausted()
        first.bind(("127.0.0.1", 0))
        first.listen(8)
        port = first.getsockname()[1]
        second = _Exhausted()
        second.bind(("127.0.0.2", port))
        second.listen(8)
        lst = Listener(asyncio.get_running_loop(), [first, second], _Made, ssl_context=None,
                       ssl_handshake_timeout=None, burst=1024)
        clients = [socket.create_connection((h, port)) for h in ("127.0.0.1", "127.0.0.2")]
        try:
            await asyncio.sleep(0.35)
            # both sockets stay readable; the shortage pauses both at once, so
            # about one failed accept per pause - a pause per socket would be twice that
            assert 2 <= _Exhausted.calls <= 5, _Exhausted.calls
            # and no socket is left watched while paused (it would wake the loop
            # at every iteration): a handful of wake-ups per pause, not thousands
            assert wakeups <= 2 * 5, wakeups
            _Exhausted.full = False
            for _ in range(100):
                if len(_Made.made) == 2:
                    break
                await asyncio.sleep(0.01)
            assert sorted(t.get_extra_info("sockname")[0] for t in _Made.made) == [
                "127.0.0.1", "127.0.0.2"]
        finally:
            lst.close()
            for t in _Made.made:
                t.close()
            for c in clients:
                c.close()
        assert first.fileno() == -1 and second.fileno() == -1

    uvloop.run(main())


def test_sockets_on_different_ports_are_refused() -> None:
    async def main() -> None:
        a, b = socket.socket(), socket.socket()
        try:
            a.bind(("127.0.0.1", 0))
            b.bind(("127.0.0.1", 0))
            with pytest.raises(ValueError, match="one port"):
                Listener(asyncio.get_running_loop(), [a, b], _Made, ssl_context=None,
                         ssl_handshake_timeout=None, burst=8)
        finally:
            a.close()
            b.close()

    asyncio.run(main())


@pytest.mark.parametrize("loop_name", ["uvloop", "asyncio"])
def test_accepted_connections_have_nodelay(loop_name: str) -> None:
    # the Listener leaves TCP_NODELAY to the loop's transport: pin that it is set
    got: list[int] = []

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            sock = transport.get_extra_info("socket")
            got.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    async def main() -> None:
        lst = await Listener.start(Probe, "127.0.0.1", 0)
        try:
            with socket.create_connection(("127.0.0.1", lst.port)):
                for _ in range(200):
                    if got:
                        break
                    await asyncio.sleep(0.01)
        finally:
            lst.close()

    (uvloop.run if loop_name == "uvloop" else asyncio.run)(main())
    assert got == [1]
