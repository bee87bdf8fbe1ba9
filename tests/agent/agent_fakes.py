"""Small doubles for the connection shell: a transport and an owner."""

from __future__ import annotations

import asyncio
from typing import Any

from agent import AgentConfig, Budget, Connection
from agent._stats import AgentStats


class FakeTransport(asyncio.Transport):
    """Records writes; ``hold`` keeps written bytes "in the buffer" until
    :meth:`drain` is called."""

    def __init__(self, hold: bool = False) -> None:
        super().__init__()
        self.written = bytearray()
        self.buffer = 0
        self.hold = hold
        self.reading = True
        self.closed = False
        self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not (self.closed or self.aborted)
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
        self.connected: list[tuple[int, bool, str]] = []
        self.new: list[int] = []
        self.closed: list[tuple[int, str, str, bool]] = []
        self.watched: set[Connection] = set()
        self.clock = 0.0

    def to_host_data(self, conn_id: int, wire: bytes, header_length: int) -> None:
        self.data.append((conn_id, bytes(wire), header_length))

    def to_host_credit(self, conn_id: int, messages: int, nbytes: int) -> None:
        self.credits.append((conn_id, messages, nbytes))

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
