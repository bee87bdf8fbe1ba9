"""The direct baseline: the same :class:`App` served by an asyncio TCP server
on the host, with no offload (benchmark option (c)).

Theory of operation
-------------------
One ``asyncio.Protocol`` per connection: ``data_received`` feeds a bounded
``msgpack.Unpacker`` and drains whole values into the shared pure
:class:`~mux_rpc._dispatch.Dispatcher`. Replies produced during one
``data_received`` are joined into one ``write()``; replies of async handlers
finishing in one loop iteration are joined by a ``call_soon`` flush. Async
calls take in-flight slots from the same :class:`InflightLimits` as the
offloaded server; a connection that cannot start a call stops reading
(``pause_reading``) with the rest of its input left unparsed in the Unpacker,
and is resumed when a slot frees. Transport write backpressure
(``pause_writing``) also stops reading. A client's half-close (EOF) is
answered in full: calls already received run to the end, their replies are
sent, then the connection is closed. uvloop is used when installed, unless
``loop="asyncio"`` is asked for (:func:`run_direct`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Literal, Self, cast

import msgpack

from ._calls import finish_pending
from ._dispatch import Dispatcher, PendingCall, ProtocolError
from ._limits import InflightLimits
from ._server import ServerConfig, ServerStats
from ._service import App

__all__ = ["DirectServer", "run_direct", "serve_direct"]

logger = logging.getLogger("mux_rpc.direct")


class _DirectProtocol(asyncio.Protocol):
    def __init__(self, server: DirectServer, key: int) -> None:
        self.server = server
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.unpacker = msgpack.Unpacker(raw=False, strict_map_key=False,
                                         max_buffer_size=server.config.max_message_size)
        self.out: list[bytes] = []
        self.flush_scheduled = False
        self.write_paused = False
        self.blocked = False  # waiting for an in-flight slot
        self.calls: set[asyncio.Task[None]] = set()
        self.closed = False
        self.eof = False
        self.backlog: deque[bytes] = deque()  # received, not yet fed (bounded feeding)
        self.fed = 0

    # -- transport callbacks ---------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop transports are not subclasses
        self.transport = transport
        self.server._protocols.add(self)
        self.server.stats.connections_accepted += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server._protocols.discard(self)
        self.server._blocked.pop(self, None)
        self.server.stats.connections_closed += 1
        for t in list(self.calls):
            t.cancel()

    def data_received(self, data: bytes) -> None:
        if self.backlog or len(data) > self.server.config.max_message_size - self._partial():
            self.backlog.append(bytes(data))
        else:
            self.unpacker.feed(data)
            self.fed += len(data)
        self._process()

    def _partial(self) -> int:
        """Bytes of an incomplete message held in the Unpacker."""
        told: int = self.unpacker.tell()
        return self.fed - told

    def _feed_backlog(self) -> bool:
        """Feed as much backlog as fits under max_message_size; False when nothing fits."""
        room = self.server.config.max_message_size - self._partial()
        if room <= 0:
            self._protocol_error(f"message larger than {self.server.config.max_message_size} bytes")
            return False
        chunk = self.backlog[0]
        if len(chunk) > room:
            self.backlog[0] = chunk[room:]
            chunk = chunk[:room]
        else:
            self.backlog.popleft()
        self.unpacker.feed(chunk)
        self.fed += len(chunk)
        return True

    def eof_received(self) -> bool:
        # half-close: the client sent all it will; answer what it asked, then close
        self.eof = True
        self._maybe_finish()
        return True  # keep the transport open for our replies

    def _maybe_finish(self) -> None:
        # every request received before the EOF is answered first: none is
        # running, none waits for a slot, and none is left unparsed because
        # writing was paused (resume_writing parses the rest, then comes here)
        if (self.eof and not self.closed and not self.calls and not self.blocked
                and not self.write_paused):
            self._flush()
            self.closed = True
            assert self.transport is not None
            self.transport.close()

    def pause_writing(self) -> None:
        self.write_paused = True
        if not self.eof:
            assert self.transport is not None
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if not self.blocked and not self.closed:
            if not self.eof:
                assert self.transport is not None
                self.transport.resume_reading()
            self._process()

    # -- the loop ----------------------------------------------------------------
    def _process(self) -> None:
        server = self.server
        limits, dispatch, out, key = server.limits, server.dispatcher.dispatch_obj, self.out, self.key
        unpacker = self.unpacker
        n = 0
        try:
            while not self.write_paused and not self.closed:
                if not limits.can_start(key):
                    self._block()
                    break
                try:
                    msg = next(unpacker)
                except StopIteration:
                    if self.backlog and self._feed_backlog():
                        continue
                    break
                n += 1
                r = dispatch(msg)
                if r is None:
                    continue
                if type(r) is bytes:
                    out.append(r)
                else:
                    assert isinstance(r, PendingCall)
                    limits.start(key)
                    t = asyncio.get_running_loop().create_task(self._run_call(r))
                    self.calls.add(t)
        except ProtocolError as exc:
            server.stats.messages += n
            self._protocol_error(exc.reason)
            return
        except msgpack.BufferFull:
            self._protocol_error("message too large")
            return
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            self._protocol_error(f"not a msgpack value: {type(exc).__name__}: {exc}")
            return
        server.stats.messages += n
        if out:
            self._flush()
        if self.eof:
            self._maybe_finish()

    def _block(self) -> None:
        if not self.blocked:
            self.blocked = True
            if not self.eof:
                assert self.transport is not None
                self.transport.pause_reading()
            self.server._blocked[self] = None

    def _unblock(self) -> None:
        self.blocked = False
        if not self.closed and not self.write_paused and not self.eof:
            assert self.transport is not None
            self.transport.resume_reading()
        self._process()

    async def _run_call(self, call: PendingCall) -> None:
        server = self.server
        try:
            reply, failed = await finish_pending(server.dispatcher, call,
                                                 server.config.call_timeout)
            if failed:
                server.stats.handler_failures += 1
            if reply is not None and not self.closed:
                self.out.append(reply)
                if not self.flush_scheduled:
                    self.flush_scheduled = True
                    asyncio.get_running_loop().call_soon(self._flush)
        finally:
            self.calls.discard(asyncio.current_task())
            server.limits.finish(self.key)
            server._slot_freed()
            if self.eof:
                self._maybe_finish()

    def _flush(self) -> None:
        self.flush_scheduled = False
        if not self.out or self.closed or self.transport is None:
            self.out.clear()
            return
        data = b"".join(self.out) if len(self.out) > 1 else self.out[0]
        self.out.clear()
        self.transport.write(data)

    def _protocol_error(self, reason: str) -> None:
        self.server.stats.protocol_errors += 1
        assert self.transport is not None
        peer = self.transport.get_extra_info("peername")
        logger.warning("closing connection from %s: malformed message: %s", peer, reason)
        self._flush()
        self.closed = True
        self.transport.close()


class DirectServer:
    """A running direct TCP server; made by :func:`serve_direct`."""

    def __init__(self, app: App, config: ServerConfig) -> None:
        self.app = app
        self.config = config
        self.dispatcher = Dispatcher(app)
        self.limits = InflightLimits(config.max_inflight_per_connection,
                                     config.max_inflight_total)
        self.stats = ServerStats()
        self._protocols: set[_DirectProtocol] = set()
        self._blocked: dict[_DirectProtocol, None] = {}  # FIFO of connections waiting for slots
        self._keys = itertools.count(1)
        self._server: asyncio.Server | None = None
        self.host = ""
        self.port = 0

    def _protocol_factory(self) -> _DirectProtocol:
        return _DirectProtocol(self, next(self._keys))

    def _slot_freed(self) -> None:
        if not self._blocked:
            return
        for proto in list(self._blocked):
            if self.limits.can_start(proto.key):
                del self._blocked[proto]
                proto._unblock()
            elif self.limits.inflight() >= self.limits.total:
                break

    async def _start(self, host: str, port: int, **kwargs: Any) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol_factory, host, port, **kwargs)
        sock = self._server.sockets[0].getsockname()
        self.host, self.port = sock[0], sock[1]

    async def serve_forever(self) -> None:
        """Serve until cancelled or closed."""
        assert self._server is not None
        try:
            await self._server.serve_forever()
        except asyncio.CancelledError:
            if self._server.is_serving():
                raise

    async def close(self) -> None:
        """Stop listening, close every connection, cancel their calls (bounded)."""
        if self._server is None:
            return
        self._server.close()
        tasks: list[asyncio.Task[None]] = []
        for proto in list(self._protocols):
            tasks.extend(proto.calls)
            if proto.transport is not None:
                proto.transport.abort()
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=self.config.shutdown_timeout)
        try:
            async with asyncio.timeout(self.config.shutdown_timeout):
                await self._server.wait_closed()
        except TimeoutError:
            logger.error("direct server did not close within %.1f s", self.config.shutdown_timeout)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def serve_direct(
    app: App, host: str = "127.0.0.1", port: int = 0, config: ServerConfig | None = None,
    **server_kwargs: Any,
) -> DirectServer:
    """Start serving ``app`` over TCP on the running loop; returns at once.

    ``port=0`` picks a free port (read ``.port``). Extra keyword arguments go
    to ``loop.create_server`` (``reuse_port=``, ``backlog=``...)."""
    if app.stream_handlers:
        logger.warning("serve_direct serves msgpack-rpc only; %d stream handler(s) of app %r "
                       "are not served (they need a framed listener)",
                       len(app.stream_handlers), app.name)
    server = DirectServer(app, config or ServerConfig())
    await server._start(host, port, **server_kwargs)
    return server


def run_direct(
    app: App, host: str = "127.0.0.1", port: int = 8000, config: ServerConfig | None = None,
    *, loop: Literal["auto", "uvloop", "asyncio"] = "auto",
    ready: Callable[[DirectServer], Awaitable[None] | None] | None = None,
) -> None:
    """Blocking entry point: serve ``app`` directly until interrupted.

    ``loop="auto"`` uses uvloop when installed, ``"uvloop"`` requires it,
    ``"asyncio"`` uses the standard loop. ``ready(server)`` is called once
    listening."""

    async def main() -> None:
        server = await serve_direct(app, host, port, config)
        try:
            if ready is not None:
                r = ready(server)
                if r is not None:
                    await r
            await server.serve_forever()
        finally:
            await server.close()

    factory = _loop_factory(loop)
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())


def _loop_factory(loop: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if loop == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if loop == "uvloop":
            raise
        return None
    return uvloop.new_event_loop
