"""A TCP listener that accepts every pending connection at each wake-up.

Why not ``loop.create_server``: uvloop (libuv) accepts **one** connection per
event-loop iteration. An agent busy with a thousand clients spends
milliseconds per iteration, so a burst of new connections waits in the
kernel's accept queue for seconds - those clients are connected as far as
they can tell, and starve (the benchmark showed a p99 of 2-3 s at 1,000
connections, with a third of them not served at all for the first seconds).
asyncio's own loop accepts up to the backlog per wake-up; this listener does
the same on any loop: a reader callback on each listening socket drains its
accept queue (up to ``burst`` per wake-up, so one flood cannot stall the rest
of the loop either) and hands each socket to ``loop.connect_accepted_socket``,
which builds the same transport (TLS included) ``create_server`` would.

Binding, as ``create_server`` does it (CPython ``asyncio/base_events.py``):
the host is resolved with ``AI_PASSIVE`` (``""`` and ``None`` mean every
interface: ``0.0.0.0`` and ``::``; ``"localhost"`` is whatever the resolver
says, often ``::1`` and ``127.0.0.1``) and one listening socket is bound per
distinct address, with ``SO_REUSEADDR``, and ``IPV6_V6ONLY`` on IPv6 sockets
so the two families can share a port. An address family the kernel cannot
create a socket for is skipped; a bind that fails fails the whole listener,
naming the address. One deliberate difference: with port 0, asyncio lets the
kernel pick a port per socket (CPython issue 89856, documented, not fixed);
here the first socket's port is asked for on every other address, and if
another program holds it there the whole binding is retried with a fresh
port a few times - the agent answers a LISTEN with **one** port, so a
listener has one (:attr:`Listener.port`).

An accept error that means "out of descriptors or memory" (EMFILE...) pauses
every socket of the listener for ``retry_delay`` (the shortage is the
process's, not one socket's) instead of spinning on a queue that stays
readable.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger("agent.accept")

# accept() errors that leave the client queued and the socket readable: retrying
# at once would spin the loop, so accepting pauses (asyncio's loop does the same)
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

#: how many times a port-0 listener on several addresses looks for a port free on all
PORT_ATTEMPTS = 8

_Address = tuple[socket.AddressFamily, int, tuple[Any, ...]]  # family, proto, sockaddr


class _PortTaken(Exception):
    """The port the first socket got is in use on another address (port 0 only)."""


def _bind_once(addrs: Sequence[_Address], port: int, backlog: int) -> list[socket.socket]:
    """One listening socket per address, all on ``port`` (or, for 0, on the
    port the kernel picks for the first). Nothing is left open on failure."""
    socks: list[socket.socket] = []
    try:
        for family, proto, sa in addrs:
            try:
                sock = socket.socket(family, socket.SOCK_STREAM, proto)
            except OSError as exc:  # e.g. no IPv6 in this kernel: create_server skips it too
                log.info("no %s socket (%s): %r not bound", family.name, exc, sa)
                continue
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                # Linux listens dual-stack by default: this socket would take the
                # IPv4 port too, and the IPv4 socket's bind would fail
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            picked = port == 0 and len(socks) > 1
            if picked:
                sa = (sa[0], socks[0].getsockname()[1], *sa[2:])
            try:
                sock.bind(sa)
                # listen at once: a listening port cannot be bound by anyone else,
                # even with SO_REUSEADDR, so the port is ours before the next bind
                sock.listen(backlog)
            except OSError as exc:
                if picked and exc.errno == errno.EADDRINUSE:
                    raise _PortTaken(sa) from None
                why = (exc.strerror or str(exc)).lower()
                raise OSError(exc.errno, f"error while attempting to bind on address "
                                         f"{sa!r}: {why}") from None
        if not socks:
            raise OSError(errno.EAFNOSUPPORT, "no socket could be created for any of "
                                              f"{[a[2] for a in addrs]!r}")
        return socks
    except BaseException:
        for s in socks:
            s.close()
        raise


def _bind_all(addrs: Sequence[_Address], port: int, backlog: int) -> list[socket.socket]:
    for _ in range(PORT_ATTEMPTS):
        try:
            return _bind_once(addrs, port, backlog)
        except _PortTaken as exc:
            log.info("port picked for the first address is taken at %r: trying another",
                     exc.args[0])
    raise OSError(errno.EADDRINUSE, f"no port free on every one of {[a[2] for a in addrs]!r} "
                                    f"after {PORT_ATTEMPTS} attempts")


class Listener:
    """``create_server``'s role for the agent: ``sockets``, ``port``, ``close()``."""

    retry_delay = 1.0  # seconds accepting pauses after an EMFILE-like error

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 socks: Sequence[socket.socket],
                 factory: Callable[[], asyncio.Protocol], *, ssl_context: ssl.SSLContext | None,
                 ssl_handshake_timeout: float | None, burst: int) -> None:
        """Accept on ``socks`` (bound and listening, all on one port)."""
        socks = tuple(socks)
        ports = {s.getsockname()[1] for s in socks}
        if len(ports) != 1:
            raise ValueError(f"a Listener needs sockets on one port, got {sorted(ports)}")
        self._loop = loop
        self._socks = socks
        self._port: int = ports.pop()
        self._factory = factory
        self._ssl = ssl_context
        self._handshake_timeout = ssl_handshake_timeout
        self._burst = burst
        self._tasks: set[asyncio.Task[object]] = set()
        self._closed = False
        self._retry: asyncio.TimerHandle | None = None
        for sock in socks:
            sock.setblocking(False)
        self._watch()

    @classmethod
    async def start(cls, factory: Callable[[], asyncio.Protocol], host: str | None, port: int, *,
                    ssl_context: ssl.SSLContext | None = None,
                    ssl_handshake_timeout: float | None = None,
                    backlog: int = 1024) -> Listener:
        """Bind every address ``host`` resolves to (``""`` or ``None``: every
        interface), all on ``port`` (0: one free port for all), and start
        accepting. ``ssl_handshake_timeout`` applies only with ``ssl_context``.
        Raises ``OSError`` (naming the address) if any address cannot be bound."""
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
        # one socket per distinct address (create_server makes a set; this keeps
        # the resolver's order so the first socket is the preferred family)
        addrs = list(dict.fromkeys((fam, proto, sa) for fam, _, proto, _, sa in infos))
        if not addrs:
            raise OSError(f"cannot resolve {host!r}")
        socks = _bind_all(addrs, port, backlog)
        return cls(loop, socks, factory, ssl_context=ssl_context,
                   ssl_handshake_timeout=ssl_handshake_timeout, burst=backlog)

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        """The listening sockets, one per bound address (none once closed)."""
        return () if self._closed else self._socks

    @property
    def port(self) -> int:
        """The port every socket listens on (what a LISTEN_RESULT reports)."""
        return self._port

    @property
    def addresses(self) -> tuple[tuple[Any, ...], ...]:
        """``getsockname()`` of each listening socket (none once closed)."""
        return tuple(s.getsockname() for s in self.sockets)

    def close(self) -> None:
        """Stop accepting and close every listening socket (accepted connections live on)."""
        if self._closed:
            return
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        else:
            self._unwatch()
        for sock in self._socks:
            sock.close()
        for t in self._tasks:
            t.cancel()

    def _watch(self) -> None:
        for sock in self._socks:
            self._loop.add_reader(sock.fileno(), self._on_readable, sock)

    def _unwatch(self) -> None:
        for sock in self._socks:
            self._loop.remove_reader(sock.fileno())

    def _on_readable(self, sock: socket.socket) -> None:
        if self._closed or self._retry is not None:
            return  # paused by another socket's error in this same wake-up
        for _ in range(self._burst):
            try:
                conn, _addr = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _RESOURCE_ERRNOS:
                    log.warning("accept failed: %s; pausing accepts for %.1f s", exc,
                                self.retry_delay)
                    self._unwatch()
                    self._retry = self._loop.call_later(self.retry_delay, self._resume)
                else:  # ECONNABORTED...: this one is lost, the listener lives
                    log.warning("accept failed: %s", exc)
                return
            # (no TCP_NODELAY here: both loops' transports set it themselves)
            task: asyncio.Task[object] = self._loop.create_task(self._adopt(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _resume(self) -> None:
        self._retry = None
        if not self._closed:
            self._watch()

    async def _adopt(self, conn: socket.socket) -> object:
        try:
            return await self._loop.connect_accepted_socket(
                self._factory, conn, ssl=self._ssl,
                ssl_handshake_timeout=self._handshake_timeout if self._ssl else None)
        except (OSError, ssl.SSLError, asyncio.TimeoutError) as exc:
            # a failed TLS handshake or a client gone before we got to it; the
            # protocol's embryonic entry expires on its own timer
            log.info("accepted connection not set up: %s", exc)
            conn.close()
            return None
