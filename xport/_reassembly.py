"""Reassembly of fragmented transport messages, bounded in memory.

Theory of operation
-------------------
(docs/protocol.md §2.2.)  A message whose body does not fit in one frame is
sent as fragments: the first has ``FIRST``, the last ``LAST``, every one
carries the whole message's body length ``total`` and its own ``length``.
The link is lossless and in order, and a sender emits one message's
fragments before the next message of the same connection, so per connection
at most one message is being reassembled and fragments simply append.

Memory is bounded twice, before anything is buffered (fail fast):
``total ≤ max_message_size`` per message, and the sum of ``total`` over all
partial messages ``≤ max_buffered_bytes``. Any rule broken raises
:class:`~xport._protocol.ProtocolError` and drops that connection's partial
message; other connections are untouched.

Public API: ``Reassembler(max_message_size, max_buffered_bytes)`` with
``feed(conn_id, mtype, flags, aux, total, body) -> (mtype, aux, body) | None``,
``buffered_bytes``, ``partial_count``, ``reset()``.
"""

from __future__ import annotations

from ._protocol import MsgFlags, ProtocolError

__all__ = ["Reassembler"]

_FIRST = int(MsgFlags.FIRST)
_LAST = int(MsgFlags.LAST)


class _Partial:
    __slots__ = ("aux", "buf", "filled", "mtype", "total")

    def __init__(self, mtype: int, aux: int, total: int) -> None:
        self.mtype = mtype
        self.aux = aux
        self.total = total
        self.buf = bytearray(total)
        self.filled = 0


class Reassembler:
    """Per-connection fragment reassembly with a memory bound."""

    __slots__ = ("_partial", "buffered_bytes", "max_buffered_bytes", "max_message_size")

    def __init__(self, max_message_size: int, max_buffered_bytes: int) -> None:
        if max_buffered_bytes < max_message_size:
            raise ValueError("max_buffered_bytes must be >= max_message_size")
        #: the largest message accepted (§2.2)
        self.max_message_size = max_message_size
        #: the most bytes held in partial messages over all connections (§2.2)
        self.max_buffered_bytes = max_buffered_bytes
        #: bytes reserved by partial messages now
        self.buffered_bytes = 0
        self._partial: dict[int, _Partial] = {}

    @property
    def partial_count(self) -> int:
        return len(self._partial)

    def reset(self) -> None:
        """Forget every partial message (e.g. after a frame sequence gap)."""
        self._partial.clear()
        self.buffered_bytes = 0

    def _drop(self, conn_id: int) -> None:
        p = self._partial.pop(conn_id, None)
        if p is not None:
            self.buffered_bytes -= p.total

    def feed(
        self, conn_id: int, mtype: int, flags: int, aux: int, total: int, body: memoryview
    ) -> tuple[int, int, bytearray] | None:
        """Add one fragment; the whole ``(mtype, aux, body)`` when it completes."""
        p = self._partial.get(conn_id)
        if flags & _FIRST:
            if p is not None:
                # §2.2: a new message started before the previous one ended
                self._drop(conn_id)
                raise ProtocolError("fragment_order", f"conn {conn_id}: FIRST inside a message")
            # §2.2: bound memory before buffering anything
            if total > self.max_message_size:
                raise ProtocolError("too_large", f"message of {total} bytes")
            if self.buffered_bytes + total > self.max_buffered_bytes:
                raise ProtocolError("reassembly_full", f"{self.buffered_bytes} bytes buffered")
            p = _Partial(mtype, aux, total)
            self._partial[conn_id] = p
            self.buffered_bytes += total
        elif p is None:
            raise ProtocolError("fragment_order", f"conn {conn_id}: fragment without FIRST")
        elif p.mtype != mtype or p.total != total or p.aux != aux:
            self._drop(conn_id)
            raise ProtocolError("fragment_order", f"conn {conn_id}: fragment of another message")
        n = len(body)
        end = p.filled + n
        # §2.2: fragments never exceed the announced total, and LAST completes it exactly
        if end > p.total or (flags & _LAST and end != p.total):
            self._drop(conn_id)
            raise ProtocolError("bad_length", f"conn {conn_id}: {end} of {p.total} bytes")
        p.buf[p.filled : end] = body
        p.filled = end
        if flags & _LAST:
            self._drop(conn_id)
            return p.mtype, p.aux, p.buf
        return None
