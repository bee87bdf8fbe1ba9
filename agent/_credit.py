"""Per-connection credit arithmetic, both directions. Pure objects, no I/O.

Theory of operation
-------------------
Connection-level flow control (DESIGN "Flow control", level 2) is a pair of
windows per connection, counted in messages *and* bytes (a message needs one
of each: one message and ``len(message)`` bytes):

* :class:`SendWindow` -- agent -> host. Starts at the host's initial window
  (its HELLO, or the default both sides share) and grows with each CREDIT
  the host sends. A parsed message is
  handed to the link only if it fits; otherwise it waits (bounded) and the
  socket stops being read, so TCP backpressure reaches that client alone.
* :class:`RecvWindow` -- host -> agent. Starts at the agent's initial window
  (our HELLO). Each DATA from the host consumes it; a DATA that does not fit
  is a credit violation. Credit goes back to the host only when the bytes have
  left the agent's write buffer toward the client (:class:`DrainTracker`), and
  in batches: an update is due once a quarter of the window is returnable, or
  when what the host has left could no longer carry a largest message.
* :class:`DrainTracker` -- maps the transport's write-buffer size back to the
  host messages that have drained, in FIFO order.

A message larger than the whole byte window may go *alone* (when nothing is
outstanding), exactly as the host's side allows it; the byte credit is then
negative until its credit returns. Windows never exceed the initial window
plus what was granted, and a grant that would overflow 2**63 is refused.
"""

from __future__ import annotations

from collections import deque

__all__ = ["CreditError", "DrainTracker", "RecvWindow", "SendWindow"]

_LIMIT = (1 << 63) - 1


class CreditError(ValueError):
    """A credit rule was broken (overflowing grant, data beyond the window)."""


class SendWindow:
    """What the agent may still send the host on one connection."""

    __slots__ = ("bytes", "initial_bytes", "initial_messages", "messages")

    def __init__(self, messages: int, nbytes: int) -> None:
        if messages < 1 or nbytes < 0:
            raise CreditError("initial window needs a message and non-negative bytes")
        self.messages = messages
        self.bytes = nbytes
        self.initial_messages = messages
        self.initial_bytes = nbytes

    def fits(self, size: int) -> bool:
        """One message of ``size`` bytes may be sent now: it fits the byte
        credit, or it goes alone (nothing outstanding) -- so a message larger
        than the whole window can never deadlock. ``bytes`` then goes negative
        until the host returns that message's credit."""
        m = self.messages
        return m > 0 and (self.bytes >= size or m >= self.initial_messages)

    def consume(self, size: int) -> None:
        if not self.fits(size):
            raise CreditError(f"message of {size} bytes does not fit "
                              f"({self.messages} messages, {self.bytes} bytes)")
        self.messages -= 1
        self.bytes -= size

    def grant(self, messages: int, nbytes: int) -> None:
        """Apply a CREDIT from the host (increments, not absolute values)."""
        if messages < 0 or nbytes < 0:
            raise CreditError("negative credit")
        if self.messages + messages > _LIMIT or self.bytes + nbytes > _LIMIT:
            raise CreditError("credit overflow")
        self.messages += messages
        self.bytes += nbytes


class RecvWindow:
    """What the host may still send the agent on one connection, and the credit
    the agent owes it back."""

    __slots__ = (
        "bytes",
        "initial_bytes",
        "initial_messages",
        "max_message",
        "messages",
        "owed_bytes",
        "owed_messages",
    )

    def __init__(self, messages: int, nbytes: int, *, max_message: int) -> None:
        if messages <= 0 or nbytes <= 0:
            raise CreditError("initial window must be positive")
        self.messages = messages
        self.bytes = nbytes
        self.initial_messages = messages
        self.initial_bytes = nbytes
        self.max_message = max_message
        self.owed_messages = 0
        self.owed_bytes = 0

    def on_data(self, size: int) -> None:
        """The host sent one message of ``size`` bytes. Raises on a violation.

        As on the other side, a message larger than the remaining byte credit
        is allowed when the byte credit is whole (it goes alone)."""
        if self.messages < 1 or (self.bytes < size and self.bytes < self.initial_bytes):
            raise CreditError(f"host sent {size} bytes with {self.messages} messages / "
                              f"{self.bytes} bytes of credit left")
        self.messages -= 1
        self.bytes -= size

    def on_drained(self, messages: int, nbytes: int) -> None:
        """``messages`` host messages (``nbytes`` payload bytes) left the write
        buffer: their credit is owed back."""
        self.owed_messages += messages
        self.owed_bytes += nbytes
        if (self.messages + self.owed_messages > self.initial_messages
                or self.bytes + self.owed_bytes > self.initial_bytes):
            raise CreditError("drained more than was received")

    def update_due(self) -> bool:
        """A CREDIT should be sent now (batching rule of the module docstring)."""
        if not self.owed_messages:
            return False
        return (self.owed_messages * 4 >= self.initial_messages
                or self.owed_bytes * 4 >= self.initial_bytes
                or self.messages < 2
                or self.bytes < self.max_message)

    def take_update(self, *, force: bool = False) -> tuple[int, int] | None:
        """``(messages, bytes)`` to grant the host now, or None."""
        if not self.owed_messages or not (force or self.update_due()):
            return None
        m, b = self.owed_messages, self.owed_bytes
        self.messages += m
        self.bytes += b
        self.owed_messages = self.owed_bytes = 0
        return m, b


class DrainTracker:
    """Which written host messages have left the transport's write buffer.

    ``wrote(encoded, payload)`` after each ``transport.write``;
    ``drained(buffer_size)`` with ``transport.get_write_buffer_size()``
    returns ``(messages, payload_bytes)`` that drained since the last call.
    """

    __slots__ = ("_entries", "_written")

    def __init__(self) -> None:
        self._written = 0
        self._entries: deque[tuple[int, int]] = deque()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def written(self) -> int:
        return self._written

    def wrote(self, encoded: int, payload: int) -> None:
        self._written += encoded
        self._entries.append((self._written, payload))

    def drained(self, buffer_size: int) -> tuple[int, int]:
        if buffer_size < 0:
            raise ValueError("negative buffer size")
        done = self._written - buffer_size
        entries = self._entries
        m = b = 0
        while entries and entries[0][0] <= done:
            b += entries.popleft()[1]
            m += 1
        return m, b
