"""The asyncio shell: serve an :class:`App` on any :class:`MessageListener`.

Theory of operation
-------------------
One task per connection reads whole messages. Before each ``recv()`` it takes
one of its connection's slots (``max_inflight_per_connection``); after it, a
slot of the server-wide budget (:mod:`mux_rpc._limits`, FIFO over
connections), so an idle connection holds no shared slot and at most one
received message per connection waits for one. The pure
:class:`~mux_rpc._dispatch.Dispatcher` turns the message into an immediate
reply (plain-function handlers, errors) or a pending coroutine, which runs as
its own task under the call deadline. When a call is finished - reply sent or
failed - the message's credit goes back (``conn.on_consumed``) and its slot is
freed. A connection at its limit stops reading; the agent then stops reading
its socket once credit runs out: a slow handler backpressures only its own
clients. When a connection ends (peer reset, protocol error, server close) its
in-flight handlers are cancelled and awaited.

End of stream (``recv()`` returns None): a client that half-closed (TCP FIN
after its last request, the agent's EOF) still reads, and a plain TCP server
answers every request sent before the FIN. So the calls in flight - task
path, and replies of the inline path that wait for the agent's window - run
to the end and their replies go out, then the connection is closed. That
needs a connection that says it can still send (``can_send``, as
:class:`~mux_rpc._offload.OffloadConnection` does after a half-close); on
any other (the client closed both ways, or a connection without
``can_send``) they are cancelled at once, as nobody can get the replies.

The peer's close is noticed at the next ``recv()``: a connection whose every
slot is held by a stuck handler notices it when a slot frees or the deadline
(``ServerConfig.call_timeout``) fires. Messages count against the agent's
credit from delivery until ``on_consumed``, running ones included.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Self

from ._conn import (
    ConnectionClosedError,
    ListenerClosedError,
    Message,
    MessageConnection,
    MessageListener,
)
from ._calls import finish_pending
from ._dispatch import DEFER, Dispatcher, PendingCall, ProtocolError
from ._limits import InflightLimits
from ._offload import HOOK_DEFER, HOOK_DONE, HOOK_OWNED, RunSpec
from ._service import App, StreamHandlerSpec

__all__ = ["Server", "ServerConfig", "ServerStats"]

logger = logging.getLogger("mux_rpc.server")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Limits and timeouts of a :class:`Server` (and of ``serve_direct``)."""

    max_inflight_per_connection: int = 128
    """Calls of one connection running at once; beyond it the connection stops
    being read (backpressure to its clients only)."""
    max_inflight_total: int = 8192
    """Calls running at once over all connections of the server."""
    call_timeout: float | None = None
    """Deadline in seconds for each async call (None: no deadline). A late
    call is cancelled and answered with a TIMEOUT error. ``@app.method(timeout=)``
    overrides it per method."""
    shutdown_timeout: float = 5.0
    """Seconds ``Server.close()`` waits for cancelled connections to finish."""
    max_message_size: int = 16 << 20
    """Largest msgpack-rpc message the direct TCP server buffers (the offload
    agent enforces its own maximum for offloaded connections)."""

    def __post_init__(self) -> None:
        if self.max_inflight_per_connection < 1 or self.max_inflight_total < 1:
            raise ValueError("in-flight limits must be >= 1")
        if self.call_timeout is not None and self.call_timeout <= 0:
            raise ValueError("call_timeout must be positive or None")


@dataclass(slots=True)
class ServerStats:
    """Counters of a server (mutable, read them any time)."""

    connections_accepted: int = 0
    connections_closed: int = 0
    messages: int = 0
    protocol_errors: int = 0
    handler_failures: int = 0


def _never_ran(conn: MessageConnection, limits: InflightLimits, key: int, nbytes: int,
               own: asyncio.Semaphore | None, coro: Coroutine[Any, Any, Any] | None,
               ran: list[bool], _task: asyncio.Task[None]) -> None:
    """Done callback of a call's task. A task cancelled before its first step
    (the connection ended right after the call was received) never entered
    its body, so the ``finally`` that gives back the message's credit and its
    slots never ran: do it here (``ran[0]`` is set first thing in the body).
    Also close the handler's coroutine, never awaited then."""
    if coro is not None:
        coro.close()  # no-op if it ran
    if ran[0]:
        return
    conn.on_consumed(nbytes)
    limits.finish(key)
    if own is not None:
        own.release()


async def _finish_calls(conn: MessageConnection, calls: set[asyncio.Task[None]],
                        failed: asyncio.Future[None] | None = None) -> None:
    """End of stream: wait until every call in flight finished (its reply sent)
    if the connection can still send (else the caller cancels them), or until
    ``failed`` (a stream handler failed: the connection closes anyway)."""
    if getattr(conn, "can_send", False) is not True:
        return  # closed both ways, or a connection that cannot tell: as before
    while calls and (failed is None or not failed.done()):
        if failed is None:
            await asyncio.wait([*calls])
        else:
            await asyncio.wait([*calls, failed], return_when=asyncio.FIRST_COMPLETED)


class Server:
    """Serves an :class:`App` over :class:`MessageListener` objects.

    >>> server = Server(app, ServerConfig(call_timeout=2.0))
    >>> await server.serve(listener)     # returns when the listener closes
    >>> await server.close()             # cancels everything, bounded
    """

    def __init__(self, app: App, config: ServerConfig | None = None) -> None:
        self.app = app
        self.config = config or ServerConfig()
        self.dispatcher = Dispatcher(app)
        self.limits = InflightLimits(self.config.max_inflight_per_connection,
                                     self.config.max_inflight_total)
        self.stats = ServerStats()
        self._listeners: set[MessageListener] = set()
        self._conn_tasks: set[asyncio.Task[None]] = set()
        self._keys = itertools.count(1)
        self._closing = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def serve(
        self, listener: MessageListener, *, handler: StreamHandlerSpec | None = None
    ) -> None:
        """Accept connections until ``listener`` or the server is closed.

        With ``handler`` each message goes to that whole-message stream handler,
        otherwise messages are msgpack-rpc calls dispatched to the app."""
        if self._closing:
            raise RuntimeError("server is closed")
        self._listeners.add(listener)
        try:
            while True:
                try:
                    conn = await listener.accept()
                except ListenerClosedError:
                    return
                self.stats.connections_accepted += 1
                coro = (self._run_rpc_connection(conn) if handler is None
                        else self._run_stream_connection(conn, handler))
                task = asyncio.get_running_loop().create_task(coro)
                self._conn_tasks.add(task)
                task.add_done_callback(self._conn_done)
        finally:
            self._listeners.discard(listener)

    async def serve_stream_handlers(
        self, listen: Callable[[int, str], Awaitable[MessageListener]]
    ) -> None:
        """Serve every ``@app.stream_handler``: open its listener with
        ``await listen(port, framer)`` (e.g. the offload host's ``listen``) and
        serve them all until they are closed (or the server is)."""
        served = []
        for spec in self.app.stream_handlers:
            served.append(self.serve(await listen(spec.port, spec.framer), handler=spec))
        await asyncio.gather(*served)

    def _conn_done(self, task: asyncio.Task[None]) -> None:
        self._conn_tasks.discard(task)
        self.stats.connections_closed += 1
        if not task.cancelled() and task.exception() is not None:
            logger.error("connection task failed", exc_info=task.exception())

    async def close(self) -> None:
        """Stop accepting, cancel every connection and its handlers, wait
        (at most ``config.shutdown_timeout``)."""
        self._closing = True
        for listener in list(self._listeners):
            await listener.close()
        tasks = list(self._conn_tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.config.shutdown_timeout)
            if pending:
                logger.error("%d connection(s) did not stop within %.1f s",
                             len(pending), self.config.shutdown_timeout)

    # -- msgpack-rpc connections ----------------------------------------------
    async def _run_rpc_connection(self, conn: MessageConnection) -> None:
        key = next(self._keys)
        calls: set[asyncio.Task[None]] = set()
        limits, dispatcher, stats = self.limits, self.dispatcher, self.stats
        own = asyncio.Semaphore(self.config.max_inflight_per_connection)
        set_hook = getattr(conn, "set_message_hook", None)
        set_batch_hook = getattr(conn, "set_batch_hook", None)
        if set_hook is not None:
            hook = self._inline_hook(conn, key, calls)
            set_hook(hook)
            if set_batch_hook is not None:
                batch, finish = self._batch_hook(conn, key, calls, hook)
                core = dispatcher._core
                # the host's run engine runs this hook in C when the dispatcher does
                set_batch_hook(batch, fast=None if core is None else RunSpec(
                    core, limits, key, stats, finish))
        try:
            while True:
                # a slot of this connection before reading; the overall slot after,
                # so an idle connection holds nothing but a connection over its
                # own limit reads nothing (at most one message waits for a slot)
                await own.acquire()
                try:
                    msg = await conn.recv()
                    if msg is not None:
                        await limits.acquire(key)
                except ConnectionClosedError as exc:
                    own.release()
                    logger.info("connection %s broke: %s", conn.conn_id, exc)
                    return
                except BaseException:
                    own.release()
                    raise
                if msg is None:
                    own.release()
                    await _finish_calls(conn, calls)
                    return
                stats.messages += 1
                try:
                    out = dispatcher.dispatch(msg.payload)
                except ProtocolError as exc:
                    limits.finish(key)
                    own.release()
                    stats.protocol_errors += 1
                    logger.warning("closing connection %s from %s: malformed message: %s",
                                   conn.conn_id, conn.peer, exc.reason)
                    return
                if out is None or type(out) is bytes:
                    try:
                        if out is not None:
                            await conn.send(out)
                    finally:
                        conn.on_consumed(msg.nbytes)
                        limits.finish(key)
                        own.release()
                else:
                    assert isinstance(out, PendingCall)
                    self._spawn_call(functools.partial(self._run_call, conn, key, own, out,
                                                       msg.nbytes),
                                     conn, key, msg.nbytes, own, out.coro, calls)
        except ConnectionClosedError as exc:
            logger.info("connection %s closed while replying: %s", conn.conn_id, exc)
        finally:
            if set_hook is not None:
                set_hook(None)
                if set_batch_hook is not None:
                    set_batch_hook(None)
            await self._end_connection(conn, calls)

    def _inline_hook(
        self, conn: Any, key: int, calls: set[asyncio.Task[None]]
    ) -> Callable[[bytes], int]:
        """The batch fast path of an offloaded connection (see
        ``OffloadConnection.set_message_hook``): a call of a plain-function
        handler runs on the receive path - decoded, dispatched, encoded, the
        reply queued on the link - with no task, lock or future. Everything
        else (async handlers, errors, a connection or server at its limit)
        goes to the task path above, unchanged."""
        limits, stats = self.limits, self.stats
        inline = self.dispatcher.dispatch_inline
        send_nowait = conn.send_nowait
        waiters, by_conn = limits._waiters, limits._by_conn
        total, per_conn = limits.total, limits.per_connection

        def hook(payload: bytes) -> int:
            # InflightLimits.has_room(key), inline
            if waiters or limits._total >= total or by_conn.get(key, 0) >= per_conn:
                return HOOK_DEFER
            out = inline(payload)
            if out is DEFER:
                return HOOK_DEFER
            stats.messages += 1
            if out is None or send_nowait(out):
                return HOOK_DONE
            # the agent's window is full (or a reply waits): send it from a task
            assert isinstance(out, bytes)
            limits.start(key)
            self._spawn_late_reply(conn, key, out, len(payload), calls)
            return HOOK_OWNED

        return hook

    def _batch_hook(
        self, conn: Any, key: int, calls: set[asyncio.Task[None]], hook: Callable[[bytes], int]
    ) -> tuple[Callable[[list[bytes]], tuple[int, int, int]],
               Callable[[list[bytes], list[bytes], int], tuple[int, int, int]]]:
        """:meth:`_inline_hook` for a run of messages of one connection
        (``OffloadConnection.set_batch_hook``): one limits check, one
        ``Dispatcher.dispatch_many``, the replies sent with one
        ``send_many_nowait``. The same outcome as ``hook`` on each message in
        turn: calls start in arrival order, the first message that needs the
        task path and all after it are left to ``recv()``, a reply the
        agent's window refuses goes from a task (and so do all after it, in
        order). Without room in the limits for the whole run, ``hook`` runs
        on each message (some may then need a slot).

        Returns ``(batch, finish)``: the hook, and its part after the
        dispatch (``finish(payloads, replies, stop)``), which the host's run
        engine calls for a run it dispatched in C but cannot finish there
        (:class:`~mux_rpc._offload.RunSpec`)."""
        limits, stats = self.limits, self.stats
        many = self.dispatcher.dispatch_many
        send_many = conn.send_many_nowait
        # the replies of a run as the DATA messages to send (joined where the
        # connection allows it); the run engine does the same in C
        coalesce = getattr(conn, "coalesce_replies", None)
        waiters, by_conn = limits._waiters, limits._by_conn
        total, per_conn = limits.total, limits.per_connection

        def each(payloads: list[bytes]) -> tuple[int, int, int]:
            owned = owned_bytes = 0
            for i, payload in enumerate(payloads):
                r = hook(payload)
                if r == HOOK_DEFER:
                    return i, owned, owned_bytes
                if r == HOOK_OWNED:
                    owned += 1
                    owned_bytes += len(payload)
            return len(payloads), owned, owned_bytes

        def batch(payloads: list[bytes]) -> tuple[int, int, int]:
            k = len(payloads)
            # room for every message of the run to hold a slot (a late reply
            # takes one): then no message would have found the limits full
            if waiters or limits._total + k > total or by_conn.get(key, 0) + k > per_conn:
                return each(payloads)
            replies, stop = many(payloads)
            return finish(payloads, replies, stop)

        def finish(payloads: list[bytes], replies: list[bytes],
                   stop: int) -> tuple[int, int, int]:
            stats.messages += stop
            if not replies:
                return stop, 0, 0
            if coalesce is not None:
                replies = coalesce(replies)
            sent = send_many(replies)
            late = len(replies) - sent
            if not late:
                return stop, 0, 0
            # the agent's window is full (or a reply waits): the rest go from
            # tasks, in order, each holding the credit of one request (the
            # last ones handled: replies carry no request index, and a joined
            # one stands for several; the run's total credit is exact either way)
            held = payloads[stop - late:stop]
            owned_bytes = 0
            for reply, request in zip(replies[sent:], held, strict=True):
                n = len(request)
                owned_bytes += n
                limits.start(key)
                self._spawn_late_reply(conn, key, reply, n, calls)
            return stop, late, owned_bytes

        return batch, finish

    def _spawn_late_reply(self, conn: MessageConnection, key: int, reply: bytes, nbytes: int,
                          calls: set[asyncio.Task[None]]) -> None:
        """Send ``reply`` from a task (it holds the request's credit and the
        slot taken by the caller until it is sent)."""
        self._spawn_call(functools.partial(self._late_reply, conn, key, reply, nbytes),
                         conn, key, nbytes, None, None, calls)

    def _spawn_call(self, body: Callable[[list[bool]], Coroutine[Any, Any, None]],
                    conn: MessageConnection, key: int, nbytes: int,
                    own: asyncio.Semaphore | None, coro: Coroutine[Any, Any, Any] | None,
                    calls: set[asyncio.Task[None]]) -> None:
        """Run ``body(ran)`` - a call's task, holding the credit of its
        request (``nbytes``), a slot of ``limits`` and one of ``own`` - as one
        of ``calls``; if it is cancelled before its first step, :func:`_never_ran`
        gives them back (``body`` sets ``ran[0]`` first thing)."""
        ran = [False]
        task = asyncio.get_running_loop().create_task(body(ran))
        calls.add(task)
        task.add_done_callback(calls.discard)
        task.add_done_callback(functools.partial(
            _never_ran, conn, self.limits, key, nbytes, own, coro, ran))

    async def _late_reply(self, conn: MessageConnection, key: int, reply: bytes,
                          nbytes: int, ran: list[bool]) -> None:
        ran[0] = True
        try:
            await conn.send(reply)
        except ConnectionClosedError as exc:
            logger.info("reply on connection %s not sent: %s", conn.conn_id, exc)
        finally:
            conn.on_consumed(nbytes)
            self.limits.finish(key)

    async def _run_call(
        self, conn: MessageConnection, key: int, own: asyncio.Semaphore, call: PendingCall,
        nbytes: int, ran: list[bool],
    ) -> None:
        ran[0] = True
        try:
            reply, failed = await finish_pending(self.dispatcher, call, self.config.call_timeout)
            if failed:
                self.stats.handler_failures += 1
            if reply is not None:
                try:
                    await conn.send(reply)
                except ConnectionClosedError as exc:
                    logger.info("reply to %s on connection %s not sent: %s",
                                call.spec.name, conn.conn_id, exc)
        finally:
            conn.on_consumed(nbytes)
            self.limits.finish(key)
            own.release()

    async def _end_connection(self, conn: MessageConnection, calls: set[asyncio.Task[None]]) -> None:
        pending = list(calls)
        for t in pending:
            t.cancel()
        try:
            if pending:
                results = await asyncio.gather(*pending, return_exceptions=True)
                for r in results:
                    if isinstance(r, Exception):
                        logger.error("call on connection %s failed", conn.conn_id, exc_info=r)
        finally:
            await conn.close()

    # -- whole-message stream connections --------------------------------------
    async def _run_stream_connection(
        self, conn: MessageConnection, spec: StreamHandlerSpec
    ) -> None:
        key = next(self._keys)
        calls: set[asyncio.Task[None]] = set()
        own = asyncio.Semaphore(min(spec.concurrency, self.config.max_inflight_per_connection))
        failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waitables: list[asyncio.Future[Any]] = [failed]
        loop = asyncio.get_running_loop()

        async def run(msg: Message, ran: list[bool]) -> None:
            ran[0] = True
            try:
                async with asyncio.timeout(self.config.call_timeout):
                    await spec.func(conn, msg)
            except ConnectionClosedError as exc:
                # the client (or the agent, or the link) went away mid-call:
                # nobody left to answer; the RPC path logs this at info too
                logger.info("stream handler %s on connection %s: connection gone: %s",
                            spec.func.__name__, conn.conn_id, exc)
                if not failed.done():
                    failed.set_result(None)
            except Exception as exc:
                self.stats.handler_failures += 1
                logger.warning("stream handler %s on connection %s failed; closing it",
                               spec.func.__name__, conn.conn_id, exc_info=exc)
                if not failed.done():
                    failed.set_result(None)
            finally:
                conn.on_consumed(msg.nbytes)
                self.limits.finish(key)
                own.release()

        try:
            while not failed.done():
                await own.acquire()
                recv = loop.create_task(conn.recv())
                try:
                    await asyncio.wait([recv, *waitables], return_when=asyncio.FIRST_COMPLETED)
                    if not recv.done():
                        recv.cancel()
                        own.release()
                        return
                    msg = recv.result()
                    if msg is not None:
                        await self.limits.acquire(key)
                except BaseException:
                    recv.cancel()
                    own.release()
                    raise
                if msg is None:
                    own.release()
                    await _finish_calls(conn, calls, failed)
                    return
                self.stats.messages += 1
                self._spawn_call(functools.partial(run, msg), conn, key, msg.nbytes, own,
                                 None, calls)
        except ConnectionClosedError as exc:
            logger.info("connection %s broke: %s", conn.conn_id, exc)
        finally:
            await self._end_connection(conn, calls)
