"""In-flight call accounting: per connection and overall.

Theory of operation
-------------------
:class:`InflightLimits` is the pure core: counts of calls in flight per
connection and in total, against two ceilings. A slot is taken *before* a
message is read (so the runtime never holds a message it cannot run) and given
back when the handler finishes, at the same moment the message's credit goes
back to the agent. A connection that cannot take a slot simply stops reading;
its credit runs out and the agent stops reading its TCP socket: backpressure
reaches that connection's clients only.

Waiting is callback based so both shells can use it: the asyncio server awaits
a future (:meth:`InflightLimits.acquire`), the direct TCP server pauses the
transport and resumes it from the callback. Waiters are served in FIFO order,
and a waiter's slot is reserved *before* it is woken, so limits are never
overshot.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["InflightLimits"]


class InflightLimits:
    """Counts calls in flight per connection and in total."""

    def __init__(self, per_connection: int, total: int) -> None:
        if per_connection < 1 or total < 1:
            raise ValueError("limits must be >= 1")
        self.per_connection = per_connection
        self.total = total
        self._by_conn: dict[int, int] = {}
        self._total = 0
        self._waiters: OrderedDict[int, Callable[[], None]] = OrderedDict()

    # -- pure accounting -------------------------------------------------
    def inflight(self, conn_id: int | None = None) -> int:
        """Calls in flight on ``conn_id``, or in total when None."""
        if conn_id is None:
            return self._total
        return self._by_conn.get(conn_id, 0)

    def can_start(self, conn_id: int, limit: int | None = None) -> bool:
        """True when ``conn_id`` may start one more call now."""
        per = self.per_connection if limit is None else min(limit, self.per_connection)
        return self._total < self.total and self._by_conn.get(conn_id, 0) < per

    def has_room(self, conn_id: int) -> bool:
        """True when ``conn_id`` could take a slot now and nobody queued
        earlier: a call that starts and finishes at once needs no more."""
        return (not self._waiters and self._total < self.total
                and self._by_conn.get(conn_id, 0) < self.per_connection)

    def try_start(self, conn_id: int) -> bool:
        """Take a slot if one is free and nobody queued earlier; report success."""
        if self._waiters or not self.can_start(conn_id):
            return False
        self._take(conn_id)
        return True

    def start(self, conn_id: int) -> None:
        """Take a slot that :meth:`can_start` said is free (ignores the wait queue)."""
        if not self.can_start(conn_id):
            raise RuntimeError(f"no free slot for connection {conn_id}")
        self._take(conn_id)

    def _take(self, conn_id: int) -> None:
        self._by_conn[conn_id] = self._by_conn.get(conn_id, 0) + 1
        self._total += 1

    def finish(self, conn_id: int) -> None:
        """Give back one slot of ``conn_id`` and wake waiters that now fit."""
        n = self._by_conn.get(conn_id, 0)
        if n <= 0:
            raise RuntimeError(f"finish() without a matching start for connection {conn_id}")
        if n == 1:
            del self._by_conn[conn_id]
        else:
            self._by_conn[conn_id] = n - 1
        self._total -= 1
        self._wake()

    def _wake(self) -> None:
        for cid in list(self._waiters):
            if self._total >= self.total:
                break
            if self._by_conn.get(cid, 0) < self.per_connection:
                callback = self._waiters.pop(cid)
                self._take(cid)
                callback()

    # -- waiting -----------------------------------------------------------
    def wait(self, conn_id: int, callback: Callable[[], None]) -> None:
        """Queue ``conn_id`` (at most one waiter per connection); ``callback``
        runs once a slot has been taken for it."""
        if conn_id in self._waiters:
            raise RuntimeError(f"connection {conn_id} is already waiting for a slot")
        self._waiters[conn_id] = callback
        self._wake()

    def cancel_wait(self, conn_id: int) -> bool:
        """Withdraw ``conn_id``'s waiter; False when it had none (or was already woken)."""
        return self._waiters.pop(conn_id, None) is not None

    async def acquire(self, conn_id: int) -> None:
        """Wait until ``conn_id`` holds a slot (asyncio shell)."""
        if self.try_start(conn_id):
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def woken() -> None:
            if not fut.done():
                fut.set_result(None)

        self.wait(conn_id, woken)
        try:
            await fut
        except BaseException:
            if not self.cancel_wait(conn_id):  # the slot was already ours
                self.finish(conn_id)
            raise
