"""A TCP listener that accepts every pending connection at each wake-up.

Why not ``loop.create_server``: uvloop (libuv) accepts **one** connection per
event-loop iteration. An agent busy with a thousand clients spends
milliseconds per iteration, so a burst of new connections waits in the
kernel's accept queue for seconds - those clients are connected as far as
they can tell, and starve (the benchmark showed a p99 of 2-3 s at 1,000
connections, with a third of them not served at all for the first seconds).
asyncio's own loop accepts up to the backlog per wake-up; this listener does
the same on any loop: a reader callback on the listening socket drains the
accept queue (up to ``burst`` per wake-up, so one flood cannot stall the rest
of the loop either) and hands each socket to ``loop.connect_accepted_socket``,
which builds the same transport (TLS included) ``create_server`` would.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from collections.abc import Callable

log = logging.getLogger("agent.accept")

# accept() errors that leave the client queued and the socket readable: retrying
# at once would spin the loop, so accepting pauses (asyncio's loop does the same)
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class Listener:
    """``create_server``'s role for the agent: ``sockets``, ``close()``."""

    retry_delay = 1.0  # seconds accepting pauses after an EMFILE-like error

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                 factory: Callable[[], asyncio.Protocol], *, ssl_context: ssl.SSLContext | None,
                 ssl_handshake_timeout: float | None, burst: int) -> None:
        self._loop = loop
        self._sock = sock
        self._factory = factory
        self._ssl = ssl_context
        self._handshake_timeout = ssl_handshake_timeout
        self._burst = burst
        self._tasks: set[asyncio.Task[object]] = set()
        self._closed = False
        self._retry: asyncio.TimerHandle | None = None
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._on_readable)

    @classmethod
    async def start(cls, factory: Callable[[], asyncio.Protocol], host: str, port: int, *,
                    ssl_context: ssl.SSLContext | None = None,
                    ssl_handshake_timeout: float | None = None,
                    backlog: int = 1024) -> Listener:
        """Bind ``host:port`` (0: any free port) and start accepting.
        ``ssl_handshake_timeout`` applies only with ``ssl_context``."""
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
        if not infos:
            raise OSError(f"cannot resolve {host!r}")
        family, _, _, _, addr = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(addr)
            sock.listen(backlog)
        except OSError:
            sock.close()
            raise
        return cls(loop, sock, factory, ssl_context=ssl_context,
                   ssl_handshake_timeout=ssl_handshake_timeout, burst=backlog)

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return () if self._closed else (self._sock,)

    def close(self) -> None:
        """Stop accepting and close the listening socket (accepted connections live on)."""
        if self._closed:
            return
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        for t in self._tasks:
            t.cancel()

    def _on_readable(self) -> None:
        for _ in range(self._burst):
            try:
                conn, _addr = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _RESOURCE_ERRNOS:
                    log.warning("accept failed: %s; pausing accepts for %.1f s", exc,
                                self.retry_delay)
                    self._loop.remove_reader(self._sock.fileno())
                    self._retry = self._loop.call_later(self.retry_delay, self._resume)
                else:  # ECONNABORTED...: this one is lost, the listener lives
                    log.warning("accept failed: %s", exc)
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task: asyncio.Task[object] = self._loop.create_task(self._adopt(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _resume(self) -> None:
        self._retry = None
        if not self._closed:
            self._loop.add_reader(self._sock.fileno(), self._on_readable)

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
