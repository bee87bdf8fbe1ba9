"""Write-buffer drain tracking: when host messages have left the agent. Pure, no I/O.

Theory of operation
-------------------
Connection-level credit (DESIGN "Flow control", level 2; docs/protocol.md
§5) is the arithmetic of :mod:`xport._flow`, shared with the host:

* agent -> host: :class:`xport._flow.SendWindow`, starting at the window the
  host announced in its HELLO and refilled by the host's CREDITs. A parsed
  message goes to the link only if it fits; otherwise it waits (bounded) and
  the socket stops being read, so TCP backpressure reaches that client alone.
* host -> agent: :class:`xport._flow.ReceiveWindow`, the window the agent
  announced in its HELLO. A DATA beyond it is a credit violation; credit goes
  back in batches (``ReceiveWindow``'s rule, §5.2).

What is the agent's own is *when* a host message counts as consumed: only
once its bytes have left the transport's write buffer toward the client (the
client may be slow; the window then bounds what the agent holds for it).
:class:`DrainTracker` maps the write-buffer size back to the host messages
that have drained, in FIFO order.
"""

from __future__ import annotations

from collections import deque

__all__ = ["DrainTracker"]


class DrainTracker:
    """Which written host messages have left the transport's write buffer.

    ``wrote(encoded, payload)`` after each ``transport.write``;
    ``drained(buffer_size)`` with ``transport.get_write_buffer_size()``
    returns the payload sizes of the messages that drained since the last
    call, in order.
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

    def drained(self, buffer_size: int) -> list[int]:
        if buffer_size < 0:
            raise ValueError("negative buffer size")
        done = self._written - buffer_size
        entries = self._entries
        out: list[int] = []
        while entries and entries[0][0] <= done:
            out.append(entries.popleft()[1])
        return out
