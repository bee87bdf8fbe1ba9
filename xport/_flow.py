"""Connection-level credit: per connection, messages and bytes, like h2's WindowManager.

Theory of operation
-------------------
(DESIGN.md "Flow control: two levels", docs/protocol.md §5.)  For each
connection and each direction the *receiver* owns a window of ``W_m``
messages and ``W_b`` bytes: the most it is willing to hold. It hands the
sender credit with CREDIT messages (increments). Three quantities always add
up to the window, per unit (messages, bytes)::

    outstanding  (credit the sender holds, granted but not yet received)
  + buffered     (received, not yet consumed by the application)
  + pending      (consumed, not yet granted back)
  = window

so the receiver never holds more than the window: memory stays bounded.

Sending rule (§5.1). A message of ``n`` bytes is sendable when the sender has
at least one message credit and at least ``n`` byte credits. A message larger
than ``max_message_size`` is never sendable (``ValueError``: the framer must
have rejected it). The receiver's byte window must be at least
``max_message_size`` (checked when :class:`ReceiveWindow` is built).

Granting rule (§5.2). Credit is returned in batches: when the pending part
reaches ``update_ratio`` of the window (messages or bytes), *or* when the
sender may be blocked: its outstanding message credit is 0, or its
outstanding byte credit is below ``max_message_size``, while something is
pending.

No deadlock (proof sketch). Suppose the sender has a message of ``n ≤ M``
bytes (``M`` = max message size) and cannot send it, and the application has
consumed everything (``buffered = 0``). Then outstanding messages are 0 or
outstanding bytes ``< n ≤ M``. In the first case pending messages ``= W_m ≥ 1``;
in the second pending bytes ``= W_b − outstanding > W_b − M ≥ 0``. Either way
something is pending and the "may be blocked" clause fires, returning all of
it: outstanding becomes the whole window, ``≥ 1`` message and ``≥ M ≥ n`` bytes.

Public API
----------
- ``FlowControlError(reason)``
- ``SendWindow(messages=0, nbytes=0, *, max_message_size, max_window=2**32-1)``:
  ``.messages``, ``.bytes``, ``can_send(nbytes)``, ``consume(nbytes)``,
  ``grant(messages, nbytes)``
- ``ReceiveWindow(window_messages, window_bytes, *, max_message_size, update_ratio=0.5)``:
  ``initial_grant() -> (messages, bytes)``, ``on_received(nbytes)``,
  ``on_consumed(nbytes) -> (messages, bytes) | None``, ``pending``,
  ``outstanding``, ``buffered``
"""

from __future__ import annotations

__all__ = ["FlowControlError", "ReceiveWindow", "SendWindow"]

_U32_MAX = 0xFFFFFFFF


class FlowControlError(Exception):
    """A credit rule was broken. ``reason`` is a machine name for counters and CLOSED.

    ``credit_violation``: the peer sent more than it was granted;
    ``over_grant``: the peer granted beyond ``max_window``;
    ``no_credit``: :meth:`SendWindow.consume` without credit.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class SendWindow:
    """The sender's credit for one connection in one direction."""

    __slots__ = ("bytes", "max_message_size", "max_window", "messages")

    def __init__(
        self,
        messages: int = 0,
        nbytes: int = 0,
        *,
        max_message_size: int,
        max_window: int = _U32_MAX,
    ) -> None:
        if max_message_size < 0 or messages < 0 or nbytes < 0:
            raise ValueError("credit and sizes are non-negative")
        #: message credits held
        self.messages = messages
        #: byte credits held
        self.bytes = nbytes
        #: largest message the receiver accepts (§5.1)
        self.max_message_size = max_message_size
        #: most credit (per unit) the receiver may ever grant; more is a protocol error
        self.max_window = max_window

    def can_send(self, nbytes: int) -> bool:
        """§5.1: one message credit and ``nbytes`` byte credits are available."""
        if nbytes > self.max_message_size:
            raise ValueError(f"message of {nbytes} bytes exceeds max {self.max_message_size}")
        return self.messages >= 1 and nbytes <= self.bytes

    @property
    def blocked(self) -> bool:
        """True when no message at all could be sent (zero message credit)."""
        return self.messages < 1

    def consume(self, nbytes: int) -> None:
        """Spend credit for one message of ``nbytes``."""
        if not self.can_send(nbytes):
            raise FlowControlError(
                "no_credit", f"{nbytes} bytes with {self.messages} msgs/{self.bytes} bytes"
            )
        self.messages -= 1
        self.bytes -= nbytes

    def grant(self, messages: int, nbytes: int) -> None:
        """Add credit from a CREDIT message."""
        if messages < 0 or nbytes < 0:
            raise FlowControlError("over_grant", "negative grant")
        m = self.messages + messages
        b = self.bytes + nbytes
        if m > self.max_window or b > self.max_window:
            raise FlowControlError("over_grant", f"window would be {m} msgs/{b} bytes")
        self.messages = m
        self.bytes = b


class ReceiveWindow:
    """The receiver's side for one connection in one direction: grants credit back."""

    __slots__ = (
        "_threshold_b",
        "_threshold_m",
        "buffered_bytes",
        "buffered_messages",
        "max_message_size",
        "outstanding_bytes",
        "outstanding_messages",
        "pending_bytes",
        "pending_messages",
        "window_bytes",
        "window_messages",
    )

    def __init__(
        self,
        window_messages: int,
        window_bytes: int,
        *,
        max_message_size: int,
        update_ratio: float = 0.5,
    ) -> None:
        # §5.1: a byte window smaller than the largest message could deadlock
        if window_bytes < max_message_size:
            raise ValueError("window_bytes must be >= max_message_size")
        if window_messages < 1:
            raise ValueError("window_messages must be >= 1")
        if window_messages > _U32_MAX or window_bytes > _U32_MAX:
            raise ValueError("windows must fit in u32")
        if not 0.0 < update_ratio <= 1.0:
            raise ValueError("update_ratio must be in (0, 1]")
        #: the most messages this receiver holds for the connection
        self.window_messages = window_messages
        #: the most bytes this receiver holds for the connection
        self.window_bytes = window_bytes
        #: the largest message accepted (§5.1)
        self.max_message_size = max_message_size
        self._threshold_m = max(1, int(window_messages * update_ratio))
        self._threshold_b = max(1, int(window_bytes * update_ratio))
        self.outstanding_messages = 0
        self.outstanding_bytes = 0
        self.buffered_messages = 0
        self.buffered_bytes = 0
        # before initial_grant() the whole window is "pending"
        self.pending_messages = window_messages
        self.pending_bytes = window_bytes

    def initial_grant(self) -> tuple[int, int]:
        """The first CREDIT for a new connection: everything pending (the whole window)."""
        return self.take_pending()

    def on_received(self, nbytes: int) -> None:
        """A message of ``nbytes`` arrived; raise if the sender exceeded its credit (§5.3)."""
        if nbytes > self.max_message_size:
            raise FlowControlError("credit_violation", f"message of {nbytes} bytes > max")
        if self.outstanding_messages < 1 or nbytes > self.outstanding_bytes:
            raise FlowControlError(
                "credit_violation",
                f"{nbytes} bytes with {self.outstanding_messages} msgs/"
                f"{self.outstanding_bytes} bytes outstanding",
            )
        self.outstanding_messages -= 1
        self.outstanding_bytes -= nbytes
        self.buffered_messages += 1
        self.buffered_bytes += nbytes

    def on_consumed(self, nbytes: int) -> tuple[int, int] | None:
        """The application is done with a message; a grant ``(messages, bytes)`` or None."""
        if self.buffered_messages < 1 or nbytes > self.buffered_bytes:
            raise ValueError("consumed more than was received")
        self.buffered_messages -= 1
        self.buffered_bytes -= nbytes
        self.pending_messages += 1
        self.pending_bytes += nbytes
        if self._grant_due():
            return self.take_pending()
        return None

    def _grant_due(self) -> bool:
        """The grant rule: is what is pending worth a CREDIT now?

        Subclasses may batch differently; every rule must still grant when
        the sender may be blocked, or the window could deadlock.
        """
        return (
            self.pending_messages >= self._threshold_m
            or self.pending_bytes >= self._threshold_b
            # §5.2: the sender may be blocked: return what is pending now
            or self.sender_may_be_blocked()
        )

    def sender_may_be_blocked(self, unsent_messages: int = 0, unsent_bytes: int = 0) -> bool:
        """§5.2: the sender holds less than one message or one largest message's
        bytes of credit, so its next message may not fit - not counting
        ``unsent_*``, credit granted here but not yet sent to it."""
        return (self.outstanding_messages - unsent_messages < 1
                or self.outstanding_bytes - unsent_bytes < self.max_message_size)

    def take_pending(self) -> tuple[int, int]:
        """Grant everything pending now: ``(messages, bytes)``, possibly ``(0, 0)``."""
        m, b = self.pending_messages, self.pending_bytes
        self.pending_messages = self.pending_bytes = 0
        self.outstanding_messages += m
        self.outstanding_bytes += b
        return m, b
