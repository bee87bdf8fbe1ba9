"""A face shaped like asyncio streams over offloaded connections.

Theory of operation
-------------------
``asyncio.start_server(cb, host, port)`` becomes
``mux_rpc.offload.start_server(cb, host, port, framer="length")``: the agent
listens and frames, and ``cb(reader, writer)`` gets a :class:`MessageReader`
and a :class:`MessageWriter`. The only difference in the callback is that a
read returns one whole message (``await reader.read_message()``) instead of
bytes to parse; writes take one whole message each.

Errors speak asyncio's language here: end of stream raises
``asyncio.IncompleteReadError`` (what ``readexactly`` raises at EOF), a broken
connection raises ``ConnectionResetError`` from ``read_message``/``drain``
with the mux_rpc error chained as ``__cause__``.

Flow control: the reader returns credit as each message is read (the
connection is made with ``auto_consume``), so the host holds at most one
window per connection plus what the application keeps. ``write`` queues the
message for a per-connection pump task that waits for the agent's credit;
``drain`` waits until the queued bytes fall to the low-water mark (like
asyncio's transport buffer limits).

Which :class:`~mux_rpc._offload.Host`? ``offload=`` if given, else the current
one: set by :func:`mux_rpc.run_offloaded` and by ``with use_host(host):``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

from ._conn import ListenerClosedError, Message
from ._offload import Host, OffloadConnection, OffloadListener
from ._offload_errors import ConnectionBrokenError, ConnectionClosedError

__all__ = [
    "MessageReader",
    "MessageWriter",
    "OffloadServer",
    "current_host",
    "open_connection",
    "start_server",
    "use_host",
]

log = logging.getLogger("mux_rpc.streams")

_current: contextvars.ContextVar[Host | None] = contextvars.ContextVar(
    "mux_rpc_offload_host", default=None)


def current_host() -> Host:
    """The Host set by :func:`use_host` / ``run_offloaded``; RuntimeError if none."""
    h = _current.get()
    if h is None:
        raise RuntimeError("no offload Host: pass offload=host, or run inside "
                           "mux_rpc.run_offloaded() / `with use_host(host):`")
    return h


@contextlib.contextmanager
def use_host(host: Host) -> Iterator[Host]:
    """Make ``host`` the current Host for :func:`start_server`/:func:`open_connection`."""
    token = _current.set(host)
    try:
        yield host
    finally:
        _current.reset(token)


class MessageReader:
    """The reading half: whole messages, like ``asyncio.StreamReader`` shaped."""

    def __init__(self, conn: OffloadConnection) -> None:
        self._conn = conn
        self._eof = False

    async def read_message(self) -> bytes:
        """The next whole message's payload. At end of stream raises
        ``asyncio.IncompleteReadError`` (with ``partial == b""``)."""
        return (await self.read_full()).payload

    async def read_full(self) -> Message:
        """The next whole message with its separate header (header/data-split framers)."""
        if self._eof:
            raise asyncio.IncompleteReadError(b"", None)
        try:
            msg = await self._conn.recv()
        except ConnectionBrokenError as exc:
            raise ConnectionResetError(str(exc)) from exc
        if msg is None:
            self._eof = True
            raise asyncio.IncompleteReadError(b"", None)
        return msg

    def at_eof(self) -> bool:
        return self._eof

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[bytes]:
        while True:
            try:
                yield await self.read_message()
            except asyncio.IncompleteReadError:
                return


class MessageWriter:
    """The writing half: one whole message per ``write``, like ``asyncio.StreamWriter``."""

    def __init__(self, conn: OffloadConnection, sockname: tuple[str, int] | None = None, *,
                 high_water: int = 64 * 1024, low_water: int | None = None) -> None:
        self._conn = conn
        self._sockname = sockname
        self._high = high_water
        self._low = low_water if low_water is not None else high_water // 4
        self._queue: collections.deque[tuple[bytes, bytes | None]] = collections.deque()
        self._queued_bytes = 0
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._closing = False
        self._error: BaseException | None = None
        self._pump_task = self._loop.create_task(self._pump(), name=f"writer-{conn.conn_id:#x}")
        self._closed_fut: asyncio.Future[None] = self._loop.create_future()

    @property
    def connection(self) -> OffloadConnection:
        return self._conn

    def write(self, data: bytes, *, header: bytes | None = None) -> None:
        """Queue one whole message (the agent's framer adds the length field etc.)."""
        if self._closing:
            raise ConnectionResetError("writer is closing")
        if self._error is not None:
            raise ConnectionResetError(str(self._error)) from self._error
        self._queue.append((bytes(data), header))
        self._queued_bytes += len(data) + (len(header) if header else 0)
        if self._queued_bytes > self._high:
            self._drained.clear()
        self._wake.set()

    def writelines(self, messages: Any) -> None:
        for m in messages:
            self.write(m)

    async def drain(self) -> None:
        """Wait until the queue is below the low-water mark; raise ConnectionResetError
        if the connection broke."""
        if self._error is not None:
            raise ConnectionResetError(str(self._error)) from self._error
        await self._drained.wait()
        if self._error is not None:
            raise ConnectionResetError(str(self._error)) from self._error

    def can_write_eof(self) -> bool:
        return False

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Send what is queued, then close the connection (use ``wait_closed``)."""
        if self._closing:
            return
        self._closing = True
        self._wake.set()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed_fut)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        info = {
            "peername": self._conn.peer,
            "sockname": self._sockname,
            "conn_id": self._conn.conn_id,
            "framer": self._conn.framer,
            "queue": self._conn.queue,
        }
        return info.get(name, default)

    async def _pump(self) -> None:
        try:
            while True:
                while self._queue:
                    data, header = self._queue[0]
                    try:
                        await self._conn.send(data, header=header)
                    except ConnectionClosedError as exc:
                        self._error = exc
                        self._queue.clear()
                        self._queued_bytes = 0
                        break
                    self._queue.popleft()
                    self._queued_bytes -= len(data) + (len(header) if header else 0)
                    if self._queued_bytes <= self._low:
                        self._drained.set()
                self._drained.set()
                if self._closing or self._error is not None:
                    break
                self._wake.clear()
                # wake on a write/close, or when the connection ends under us
                # (host closed, link lost): then nothing will ever wake us
                wake = asyncio.ensure_future(self._wake.wait())
                await asyncio.wait({wake, self._conn._done},
                                   return_when=asyncio.FIRST_COMPLETED)
                if not wake.done():
                    wake.cancel()
                if self._conn._done.done() and not self._queue and not self._closing:
                    break
            if self._closing:
                await self._conn.close()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._error = exc
            log.exception("writer for connection %#x", self._conn.conn_id)
        finally:
            self._drained.set()
            if not self._closed_fut.done():
                self._closed_fut.set_result(None)

    def __repr__(self) -> str:
        return f"<MessageWriter conn={self._conn.conn_id:#x} peer={self._conn.peer}>"


ClientCallback = Callable[[MessageReader, MessageWriter], "Awaitable[None] | None"]


class OffloadServer:
    """What :func:`start_server` returns (shaped like ``asyncio.Server``)."""

    def __init__(self, listener: OffloadListener, callback: ClientCallback) -> None:
        self._listener = listener
        self._callback = callback
        self._tasks: set[asyncio.Task[None]] = set()
        self._accept_task: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()

    @property
    def listener(self) -> OffloadListener:
        return self._listener

    @property
    def port(self) -> int:
        return self._listener.port

    @property
    def sockets(self) -> list[tuple[str, int]]:
        """The agent's listening address(es) (not socket objects: the socket is in the agent)."""
        return [self._listener.address]

    def is_serving(self) -> bool:
        return self._accept_task is not None and not self._accept_task.done()

    async def start_serving(self) -> None:
        if self._accept_task is None:
            self._accept_task = asyncio.get_running_loop().create_task(self._accept_loop())

    async def serve_forever(self) -> None:
        await self.start_serving()
        assert self._accept_task is not None
        await asyncio.shield(self._accept_task)

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    conn = await self._listener.accept()
                except ListenerClosedError:
                    return
                reader = MessageReader(conn)
                writer = MessageWriter(conn, self._listener.address)
                t = loop.create_task(self._run_client(reader, writer))
                self._tasks.add(t)
                t.add_done_callback(self._tasks.discard)
        finally:
            self._closed.set()

    async def _run_client(self, reader: MessageReader, writer: MessageWriter) -> None:
        try:
            res = self._callback(reader, writer)
            if inspect.isawaitable(res):
                await res
        except ConnectionClosedError:
            pass  # closed on this side (host shutting down): nothing went wrong
        except Exception:
            log.exception("client callback failed (peer %s)", writer.get_extra_info("peername"))
            writer.close()

    def close(self) -> None:
        """Stop accepting (connections already accepted stay open, as with asyncio)."""
        loop = asyncio.get_running_loop()
        loop.create_task(self._listener.close())
        if self._accept_task is None:
            self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def __aenter__(self) -> OffloadServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()


async def start_server(client_connected_cb: ClientCallback, host: str | None = "127.0.0.1",
                       port: int | None = 0, *, framer: str = "length",
                       tls: tuple[str, str] | None = None, offload: Host | None = None,
                       start_serving: bool = True) -> OffloadServer:
    """Like ``asyncio.start_server``, with the listening socket in the agent.

    ``host``/``port``: the address the agent listens on (loopback by default;
    port 0 = any, see ``server.port``). ``framer``: how the agent cuts the
    client's bytes into messages. ``offload``: the Host (default: current)."""
    h = offload or current_host()
    listener = await h.listen(port or 0, framer, bind=host or "127.0.0.1", tls=tls,
                              auto_consume=True)
    server = OffloadServer(listener, client_connected_cb)
    if start_serving:
        await server.start_serving()
    return server


async def open_connection(host: str, port: int, *, framer: str = "length",
                          offload: Host | None = None) -> tuple[MessageReader, MessageWriter]:
    """Like ``asyncio.open_connection``: the agent connects out, messages come back whole."""
    h = offload or current_host()
    conn = await h.connect((host, port), framer, auto_consume=True)
    return MessageReader(conn), MessageWriter(conn)
