"""Small doubles for the connection shell (a transport, an owner, a host) and the
helpers every agent test shares (``frame``, ``run``)."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable
from typing import Any

from agent import AgentConfig, Budget, Connection
from agent._stats import AgentStats


def frame(body: bytes) -> bytes:
    """One length-prefixed message (the ``length`` framer's wire form)."""
    return struct.pack("!I", len(body)) + body


def run(coro: Awaitable[Any], timeout: float = 30.0) -> Any:
    """Run ``coro`` in a fresh event loop, failing it after ``timeout`` seconds."""
    async def main() -> Any:
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(main())


class FakeTransport(asyncio.Transport):
    """Records writes; ``hold`` keeps written bytes "in the buffer" until
    :meth:`drain` is called."""

    def __init__(self, hold: bool = False) -> None:
        super().__init__()
        self.written = bytearray()
        self.writes = 0  # write() calls
        self.buffer = 0
        self.hold = hold
        self.reading = True
        self.closed = False
        self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not (self.closed or self.aborted)
        self.writes += 1
        self.written += data
        if self.hold:
            self.buffer += len(data)

    def drain(self, n: int | None = None) -> None:
        self.buffer = 0 if n is None else max(0, self.buffer - n)

    def get_write_buffer_size(self) -> int:
        return self.buffer

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default


class FakeOwner:
    """Records what a connection tells the host."""

    def __init__(self, config: AgentConfig | None = None) -> None:
        self.config = config or AgentConfig()
        self.stats = AgentStats()
        self.budget = Budget(self.config.max_buffered_total)
        self.data: list[tuple[int, bytes, int]] = []
        self.credits: list[tuple[int, int, int]] = []
        self.urgent: list[bool] = []  # per credit: whether it had to go at once
        self.lazy_held: dict[int, tuple[int, int]] = {}  # what a test says waits unsent
        self.connected: list[tuple[int, bool, str]] = []
        self.new: list[int] = []
        self.closed: list[tuple[int, str, str, bool]] = []
        self.eofs: list[int] = []  # EOFs told to the host (§3.13), by conn id
        self.eof_after: list[int] = []  # len(data) when each EOF went out
        self.watched: set[Connection] = set()
        self.clock = 0.0
        self.batch_writes: list[Connection] | None = None  # replies written at once

    def to_host_data(self, conn_id: int, wire: bytes, header_length: int) -> None:
        self.data.append((conn_id, bytes(wire), header_length))

    def to_host_credit(self, conn_id: int, messages: int, nbytes: int,
                       urgent: bool = True) -> None:
        self.credits.append((conn_id, messages, nbytes))
        self.urgent.append(urgent)

    def lazy_credit(self, conn_id: int) -> tuple[int, int]:
        return self.lazy_held.get(conn_id, (0, 0))

    def to_host_eof(self, conn: Connection) -> None:
        self.eofs.append(conn.conn_id)
        self.eof_after.append(len(self.data))

    def to_host_connected(self, conn: Connection, ok: bool, reason: str, text: str) -> None:
        self.connected.append((conn.conn_id, ok, reason))

    def to_host_new_connection(self, conn: Connection) -> None:
        self.new.append(conn.conn_id)

    def watch_drain(self, conn: Connection) -> None:
        self.watched.add(conn)

    def now(self) -> float:
        return self.clock

    def finished(self, conn: Connection, reason: str, text: str, report: bool) -> None:
        self.closed.append((conn.conn_id, reason, text, report))


# -- a minimal host speaking the transport protocol over real xport links -------------

import time
from collections import deque
from collections.abc import Callable, Sequence

from agent._ports import AGENT_MAC, HOST_MAC
from xport import _protocol as P
from xport._backend import FrameBackend
from xport._link import Link, LinkConfig


class FakeHost:
    """The host end of the link, message by message, for tests.

    Received messages (any queue) wait in ``inbox``; ``await expect(...)``
    takes the first one matching. Link credits and keepalive run for real.
    """

    def __init__(self, backends: Sequence[FrameBackend], *,
                 clock: Callable[[], float] = time.monotonic,
                 window: tuple[int, int] = (64, 0)) -> None:
        self.backends = list(backends)
        self.clock = clock
        # window: what the host grants the agent per connection (its HELLO)
        self.cfg = LinkConfig(role=P.Role.HOST, local_mac=HOST_MAC, peer_mac=AGENT_MAC,
                              keepalive_interval=1.0, peer_timeout=30.0,
                              window_messages=window[0], window_bytes=window[1])
        self.links = [Link(b, self.cfg, now=clock()) for b in self.backends]
        self.inbox: deque[tuple[int, P.Message]] = deque()
        self._event = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        for q, b in enumerate(self.backends):
            self._loop.add_reader(b.fileno(), self._readable, q)
        self._timer = self._loop.create_task(self._tick())
        self.flush()

    def restart(self) -> None:
        """A new host instance on the same backends (fresh links: a new session)."""
        self.links = [Link(b, self.cfg, now=self.clock()) for b in self.backends]
        self.inbox.clear()
        self.flush()

    def _readable(self, q: int) -> None:
        link = self.links[q]
        msgs = link.poll(64, self.clock())
        link.flush(self.clock())
        for m in msgs:
            self.inbox.append((q, m))
        if msgs:
            self._event.set()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0.02)  # HELLO resends every 50 ms until established
            for link in self.links:
                link.tick(self.clock())
                link.flush(self.clock())

    def send(self, msg: P.Message, q: int | None = None) -> None:
        if q is None:
            q = msg.conn_id % len(self.links)
        self.links[q].send(msg)
        self.links[q].flush(self.clock())

    def flush(self) -> None:
        for link in self.links:
            link.flush(self.clock())

    def take(self, kind: type | None = None, conn_id: int | None = None) -> list[P.Message]:
        """Remove and return every queued message matching."""
        out, keep = [], deque()
        for q, m in self.inbox:
            if (kind is None or isinstance(m, kind)) and (conn_id is None or m.conn_id == conn_id):
                out.append(m)
            else:
                keep.append((q, m))
        self.inbox = keep
        return out

    async def expect(self, kind: type, conn_id: int | None = None,
                     timeout: float = 5.0) -> Any:
        deadline = self._loop.time() + timeout
        while True:
            for i, (_q, m) in enumerate(self.inbox):
                if isinstance(m, kind) and (conn_id is None or m.conn_id == conn_id):
                    del self.inbox[i]
                    return m
            left = deadline - self._loop.time()
            if left <= 0:
                raise TimeoutError(f"no {kind.__name__} (conn {conn_id}) within {timeout} s; "
                                   f"inbox: {list(self.inbox)[:8]}")
            self._event.clear()
            try:
                await asyncio.wait_for(self._event.wait(), min(left, 0.05))
            except TimeoutError:
                pass

    async def collect(self, kind: type, conn_id: int, n: int, timeout: float = 10.0) -> list[Any]:
        out = []
        for _ in range(n):
            out.append(await self.expect(kind, conn_id, timeout))
        return out

    def close(self) -> None:
        self._timer.cancel()
        for b in self.backends:
            try:
                self._loop.remove_reader(b.fileno())
            except (ValueError, OSError):
                pass
            b.close()
