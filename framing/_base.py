"""The framer contract and the base class every framer derives from.

Theory of operation
-------------------
A framer is a pure object: bytes go in with :meth:`Framer.feed`, whole messages
come out of :meth:`Framer.next_message` (or all at once from
:meth:`Framer.drain`). It never does I/O and never blocks.

Buffering. Unconsumed bytes live in one ``bytearray``. ``feed`` appends to it
and returns at once while fewer than ``_need`` bytes are buffered (``_need`` is
what the subclass said it needs to make progress: a header, or the whole
message whose length it has already read and checked). Only then are buffer
and chunk joined into one ``bytes`` object (one copy of each) and handed to
:meth:`Framer._parse`, which splits off as many whole messages as it holds
(slicing ``bytes`` gives each message's ``bytes`` in one copy) and returns how
far it got. The rest, at most one partial message, goes back into the
``bytearray``. When the buffer is empty and the chunk is ``bytes``, the chunk is
parsed in place (no copy). Each byte is therefore copied a bounded number of
times whatever the chunking, including one byte at a time.

Output. Decoded messages go to the list ``self._out``; :meth:`Framer.drain`
hands that list over (and starts a new one) instead of copying it, and
:meth:`Framer.next_message` walks it with an index.

Bounds. A subclass checks every length it reads against ``max_message_size``
before it waits for (buffers) the message; as a backstop the base class fails
with :class:`~framing.FrameTooLong` if a partial message ever exceeds
``max_message_size + _header_slack`` bytes.

Errors. When ``_parse`` raises a :class:`~framing.FramingError`, the messages it
produced before the error are still delivered in order; then ``next_message``
raises the error, and so does every later call: the framer is terminal.
``feed`` itself only raises once the framer is already terminal (h11 style).

Discarding. A framer may ask to skip the next ``n`` bytes and then fail (Netty's
discard-then-fail for an over-long frame) with :meth:`Framer._discard_then_fail`;
skipped bytes are never buffered.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar, Generic, TypeVar

from ._errors import BadFramerSpec, FramerClosed, FrameTooLong, FramingError, TruncatedMessage

__all__ = ["Framer", "parse_spec_value"]

M = TypeVar("M")


class Framer(ABC, Generic[M]):
    """Base class of all framers (built-in and custom).

    A subclass implements :meth:`_parse` and :meth:`encode`, sets
    :attr:`name`, and passes ``max_message_size`` to ``__init__``. See
    ``examples/ndjson_framer.py`` for a complete custom framer.
    """

    name: ClassVar[str] = "framer"
    """Registry name (the first word of a spec string)."""

    _header_slack: ClassVar[int] = 0
    """Bytes a partial message may hold beyond ``max_message_size`` (framing
    overhead that does not count toward the message size)."""

    __slots__ = (
        "__weakref__",
        "_buf",
        "_discard",
        "_discard_error",
        "_eof",
        "_error",
        "_head",
        "_need",
        "_out",
        "max_message_size",
    )

    def __init__(self, *, max_message_size: int) -> None:
        if not isinstance(max_message_size, int) or max_message_size <= 0:
            from ._errors import FramerConfigError

            raise FramerConfigError(
                f"max_message_size must be a positive int, got {max_message_size!r}"
            )
        self.max_message_size: int = max_message_size
        """Largest message (in wire bytes, see each framer) accepted or buffered."""
        self._buf = bytearray()
        self._need = 1
        self._out: list[M] = []
        """Decoded messages not yet returned; ``_parse`` appends to it."""
        self._head = 0  # messages of _out already returned by next_message
        self._error: FramingError | None = None
        self._eof = False
        self._discard = 0
        self._discard_error: FramingError | None = None

    # -- the contract -----------------------------------------------------

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes received from the stream. Raises only if the framer is
        already terminal (after an error) or after :meth:`feed_eof`."""
        if self._error is not None:
            raise self._error
        if self._eof:
            raise FramerClosed("feed() after feed_eof()")
        n = len(data)
        if not n:
            return
        if self._discard:
            k = min(n, self._discard)
            self._discard -= k
            if self._discard == 0:
                assert self._discard_error is not None
                self._error = self._discard_error
            return
        buf = self._buf
        if buf:
            if len(buf) + n < self._need:
                buf += data
                return
            view = b"".join((buf, data))  # one copy of buffer + chunk
            buf.clear()
        elif n < self._need:
            buf += data
            return
        else:
            view = data if type(data) is bytes else bytes(data)
        try:
            pos = self._parse(view)
        except FramingError as exc:
            self._fail(exc)
            return
        if self._discard:
            # _parse asked to skip bytes beyond this chunk.
            return
        rest = len(view) - pos
        if rest:
            if rest > self.max_message_size + self._header_slack:
                self._fail(
                    FrameTooLong(
                        f"partial message of {rest} bytes exceeds max_message_size "
                        f"{self.max_message_size}"
                    )
                )
                return
            buf += memoryview(view)[pos:]

    def feed_eof(self) -> None:
        """Signal the end of the stream. A partial message is an error
        (:class:`~framing.TruncatedMessage`), raised by ``next_message``."""
        if self._error is not None:
            raise self._error
        if self._eof:
            return
        self._eof = True
        if self._discard:
            self._fail(
                TruncatedMessage(
                    f"end of stream while discarding an over-long frame "
                    f"({self._discard} bytes left)"
                )
            )
        elif partial := self._partial_bytes():
            self._fail(
                TruncatedMessage(f"end of stream inside a message ({partial} bytes buffered)")
            )

    def next_message(self) -> M | None:
        """The next whole message, or ``None`` if more bytes are needed (or
        the stream ended cleanly). Raises the framer's error once every message
        decoded before it has been returned."""
        out = self._out
        head = self._head
        if head < len(out):
            msg = out[head]
            head += 1
            if head == len(out):
                out.clear()
                head = 0
            self._head = head
            return msg
        if self._error is not None:
            raise self._error
        return None

    def drain(self) -> list[M]:
        """All messages decoded so far, in order (may be empty). Raises the
        error instead if there are no messages left and the framer failed."""
        out = self._out
        if out:
            self._out = []  # hand the list over instead of copying it
            if self._head:
                del out[: self._head]
                self._head = 0
            return out
        if self._error is not None:
            raise self._error
        return []

    @property
    def buffered(self) -> int:
        """Bytes held for a partial message (never above
        ``max_message_size`` + framing overhead)."""
        return self._partial_bytes()

    @property
    def failed(self) -> FramingError | None:
        """The error that made this framer terminal, if any."""
        return self._error

    @property
    def at_eof(self) -> bool:
        """``feed_eof`` was called."""
        return self._eof

    @abstractmethod
    def encode(self, message: M) -> bytes:
        """Wire bytes for ``message`` (the inverse of decoding). Raises
        :class:`~framing.EncodeError` if the message cannot be encoded."""

    def message_bytes(self, message: M) -> bytes:
        """The wire bytes of a decoded message, to forward it whole. By default
        the same as :meth:`encode`; framers that keep the received bytes return
        those."""
        return self.encode(message)

    def split_parts(self, message: M) -> tuple[bytes, bytes]:
        """``(header, data)`` of a message. Framers without a header/data split
        return ``(b"", message_bytes(message))``."""
        return b"", self.message_bytes(message)

    @classmethod
    def from_spec(cls, params: Mapping[str, str]) -> Framer[Any]:
        """Build from the ``key=value`` parameters of a spec string. The default
        converts each value with :func:`parse_spec_value` and passes them as
        keyword arguments; built-in framers override this."""
        kwargs: dict[str, Any] = {k: parse_spec_value(v) for k, v in params.items()}
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise BadFramerSpec(f"{cls.__name__}: bad parameters {sorted(params)}: {exc}") from exc

    def __repr__(self) -> str:
        state = "failed" if self._error else ("eof" if self._eof else "open")
        return (
            f"<{type(self).__name__} {state} max_message_size={self.max_message_size} "
            f"buffered={self._partial_bytes()} queued={len(self._out) - self._head}>"
        )

    # -- for subclasses -----------------------------------------------------

    @abstractmethod
    def _parse(self, data: bytes) -> int:
        """Split whole messages off the start of ``data`` and append them to
        ``self._out``. Return the number of bytes consumed. Set ``self._need``
        to the total bytes (from the returned position) needed before calling
        again; check announced lengths against ``max_message_size`` before
        returning. Raise a :class:`~framing.FramingError` on bad input. Must
        consume bytes or return: never loop without progress."""

    def _partial_bytes(self) -> int:
        """Bytes of an incomplete message held (override if state is kept
        outside the buffer)."""
        return len(self._buf)

    def _discard_then_fail(self, n: int, error: FramingError) -> None:
        """Skip the next ``n`` bytes fed (beyond what ``_parse`` consumed), then
        enter the terminal state with ``error``. Call from ``_parse`` and
        return ``len(data)``."""
        if n <= 0:
            raise error
        self._discard = n
        self._discard_error = error

    def _fail(self, exc: FramingError) -> None:
        self._error = exc
        self._buf = bytearray()
        self._discard = 0


def parse_spec_value(value: str) -> int | bool | str:
    """Convert a spec-string value: integers (``123``, ``0x10``, ``1_000``),
    booleans (``true``/``false``/``yes``/``no``/``on``/``off``), else the
    string itself."""
    low = value.strip().lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    try:
        return int(low, 0)
    except ValueError:
        return value
