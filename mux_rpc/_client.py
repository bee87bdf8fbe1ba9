"""An asyncio msgpack-rpc client over plain TCP, with pipelining.

Any number of calls may be outstanding on one connection; each gets a fresh
msgid and its future is completed by the response carrying that msgid, in
whatever order the server answers. Requests written in one event-loop
iteration are sent with one ``write()``. Responses are read with
``msgpack.Unpacker`` (bounded by ``max_message_size``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Self, cast

import msgpack

from ._conn import ConnectionClosedError, MessageConnection
from ._dispatch import MAX_MSGID, NOTIFICATION, REQUEST, RESPONSE, ProtocolError, RemoteError

__all__ = ["Client", "MessageClient"]

logger = logging.getLogger("mux_rpc.client")


def _complete(pending: dict[int, asyncio.Future[Any]], msg: Any) -> bool:
    """Complete the call ``msg`` answers; False for a response to no pending call
    (its call timed out or was cancelled). :class:`ProtocolError` if ``msg`` is
    not a response."""
    if type(msg) is not list or len(msg) != 4 or msg[0] != RESPONSE:
        raise ProtocolError(f"server sent a non-response message: {msg!r:.80}")
    _, msgid, error, result = msg
    fut = pending.pop(msgid, None) if type(msgid) is int else None
    if fut is None:
        return False
    if not fut.done():
        if error is None:
            fut.set_result(result)
        else:
            fut.set_exception(RemoteError.from_wire(error))
    return True


def _next_msgid(after: int, pending: dict[int, asyncio.Future[Any]]) -> int:
    msgid = after
    while msgid in pending:
        msgid = (msgid + 1) & MAX_MSGID
    return msgid


async def _wait_reply(fut: asyncio.Future[Any], timeout: float | None,
                      pending: dict[int, asyncio.Future[Any]], msgid: int) -> Any:
    try:
        if timeout is None:
            return await fut
        async with asyncio.timeout(timeout):
            return await fut
    finally:
        if pending.get(msgid) is fut:
            del pending[msgid]


class _ClientProtocol(asyncio.Protocol):
    def __init__(self, max_message_size: int) -> None:
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.unpacker = msgpack.Unpacker(raw=False, strict_map_key=False,
                                         max_buffer_size=max_message_size)
        self.out: list[bytes] = []
        self.flush_scheduled = False
        self.write_paused = False
        self.drain_waiters: list[asyncio.Future[None]] = []
        self.closed_exc: BaseException | None = None
        self.closed = asyncio.get_running_loop().create_future()
        self.late_responses = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop transports are not subclasses
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.unpacker.feed(data)
            for msg in self.unpacker:
                self._response(msg)
        except ProtocolError as exc:
            self._abort(exc)
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            self._abort(ProtocolError(f"bad msgpack from server: {type(exc).__name__}: {exc}"))

    def _response(self, msg: Any) -> None:
        if not _complete(self.pending, msg):
            self.late_responses += 1

    def _abort(self, exc: ProtocolError) -> None:
        logger.warning("closing client connection: %s", exc)
        self.closed_exc = exc
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed_exc is None:
            self.closed_exc = ConnectionClosedError("connection closed")
            if exc is not None:
                self.closed_exc.__cause__ = exc
        for fut in self.pending.values():
            if not fut.done():
                err = ConnectionClosedError(f"connection closed before the response: "
                                            f"{self.closed_exc}")
                err.__cause__ = self.closed_exc
                fut.set_exception(err)
        self.pending.clear()
        self._wake_drain()
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake_drain()

    def _wake_drain(self) -> None:
        waiters, self.drain_waiters = self.drain_waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    def write(self, data: bytes) -> None:
        self.out.append(data)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self.flush_scheduled = False
        if self.out and self.transport is not None and not self.transport.is_closing():
            data = b"".join(self.out) if len(self.out) > 1 else self.out[0]
            self.out.clear()
            self.transport.write(data)
        else:
            self.out.clear()


class Client:
    """A msgpack-rpc client connection. Create it with :meth:`connect`."""

    def __init__(self, transport: asyncio.Transport, protocol: _ClientProtocol) -> None:
        self._transport = transport
        self._proto = protocol
        self._next_id = 0
        self._packer = msgpack.Packer(use_bin_type=True, autoreset=True)

    @classmethod
    async def connect(
        cls, host: str, port: int, *, timeout: float | None = 10.0,
        max_message_size: int = 16 << 20,
    ) -> Client:
        """Open a TCP connection to a msgpack-rpc server."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            transport, proto = await loop.create_connection(
                lambda: _ClientProtocol(max_message_size), host, port)
        return cls(transport, proto)

    @property
    def closed(self) -> bool:
        """True once the connection is closed (by either side)."""
        return self._proto.closed.done() or self._transport.is_closing()

    @property
    def outstanding(self) -> int:
        """Calls sent and not yet answered."""
        return len(self._proto.pending)

    def _check_open(self) -> None:
        if self._proto.closed_exc is not None:
            raise ConnectionClosedError(f"client connection is closed: {self._proto.closed_exc}")
        if self._transport.is_closing():
            raise ConnectionClosedError("client connection is closed")

    async def call(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        """Call ``method(*args)`` and return its result.

        Raises :class:`RemoteError` for an error response, ``TimeoutError``
        after ``timeout`` seconds, :class:`ConnectionClosedError` if the
        connection ends first."""
        self._check_open()
        proto = self._proto
        if proto.write_paused:
            w: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            proto.drain_waiters.append(w)
            await w
            self._check_open()
        msgid = _next_msgid(self._next_id, proto.pending)
        self._next_id = (msgid + 1) & MAX_MSGID
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        proto.pending[msgid] = fut
        proto.write(self._packer.pack([REQUEST, msgid, method, list(args)]))
        return await _wait_reply(fut, timeout, proto.pending, msgid)

    def notify(self, method: str, *args: Any) -> None:
        """Send the notification ``[2, method, args]`` (no response)."""
        self._check_open()
        self._proto.write(self._packer.pack([NOTIFICATION, method, list(args)]))

    async def close(self) -> None:
        """Send what is queued, close, and wait for the connection to end."""
        self._proto.flush()
        self._transport.close()
        try:
            async with asyncio.timeout(5.0):
                await self._proto.closed
        except TimeoutError:
            self._transport.abort()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class MessageClient:
    """A msgpack-rpc client over any :class:`MessageConnection` (one msgpack
    value per message): an offloaded outbound connection, or the in-memory
    pair of :mod:`mux_rpc.testing`. Same matching rules as :class:`Client`;
    sending waits for the connection's flow control, so ``notify`` is async."""

    def __init__(self, conn: MessageConnection) -> None:
        self.conn = conn
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._next_id = 0
        self._packer = msgpack.Packer(use_bin_type=True, autoreset=True)
        self._closed_exc: BaseException | None = None
        self.late_responses = 0
        """Responses that arrived after their call timed out or was cancelled."""
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @property
    def outstanding(self) -> int:
        """Calls sent and not yet answered."""
        return len(self._pending)

    async def _read(self) -> None:
        reason: BaseException = ConnectionClosedError("connection closed by the peer")
        try:
            while True:
                msg = await self.conn.recv()
                if msg is None:
                    break
                try:
                    obj = msgpack.unpackb(msg.payload, raw=False, strict_map_key=False)
                    if not _complete(self._pending, obj):
                        self.late_responses += 1
                except (ValueError, TypeError, msgpack.UnpackException, ProtocolError) as exc:
                    logger.warning("closing client connection %s: bad response: %s",
                                   self.conn.conn_id, exc)
                    reason = ProtocolError(f"bad response: {exc}")
                    await self.conn.close()
                    break
                finally:
                    self.conn.on_consumed(msg.nbytes)
        except ConnectionClosedError as exc:
            reason = exc
        except Exception as exc:  # logged; the cause of every failed call
            logger.error("client connection %s failed", self.conn.conn_id, exc_info=exc)
            reason = exc
        finally:
            self._closed_exc = reason
            for fut in self._pending.values():
                if not fut.done():
                    err = ConnectionClosedError(f"connection closed before the response: {reason}")
                    err.__cause__ = reason
                    fut.set_exception(err)
            self._pending.clear()

    def _check_open(self) -> None:
        if self._closed_exc is not None:
            raise ConnectionClosedError(f"client connection is closed: {self._closed_exc}")

    async def call(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        """Call ``method(*args)``; see :meth:`Client.call`. The timeout covers
        waiting for send credit too."""
        self._check_open()
        msgid = _next_msgid(self._next_id, self._pending)
        self._next_id = (msgid + 1) & MAX_MSGID
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[msgid] = fut

        async def send_then_wait() -> Any:
            await self.conn.send(self._packer.pack([REQUEST, msgid, method, list(args)]))
            return await fut

        try:
            async with asyncio.timeout(timeout):
                return await send_then_wait()
        finally:
            if self._pending.get(msgid) is fut:
                del self._pending[msgid]

    async def notify(self, method: str, *args: Any) -> None:
        """Send the notification ``[2, method, args]`` (no response)."""
        self._check_open()
        await self.conn.send(self._packer.pack([NOTIFICATION, method, list(args)]))

    async def close(self) -> None:
        """Close the connection and fail calls still waiting."""
        await self.conn.close()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
