"""The link: transport messages over a FrameBackend, batched, lossless, in order.

Theory of operation
-------------------
``send(message)`` only queues. ``flush()`` packs queued messages many to a
frame (batching is how small messages get past the per-frame cost), splits
messages larger than a frame into fragments (docs/protocol.md §2.2), and hands
as many frames to ``backend.send_batch`` as link credit allows
(:mod:`xport._linkcredit`) — one call per flush. Every frame header carries
this end's credit; when no data frame carries it and the peer needs it, a
credit-only frame is sent (§4.4).

``poll()`` takes one ``recv_batch``, validates every frame (§1) and message
(§2), updates credit, reassembles fragments and returns whole messages in
arrival order, which is per-connection send order. Bad frames and messages
are counted in ``statistics().dropped[reason]`` and dropped; nothing the peer
sends raises out of ``poll``.

Handshake (§3.1): ``Link`` queues a HELLO carrying its ``session`` when
built, and ``tick(now)`` queues it again every ``hello_interval`` until the
link is ``established``: the peer's HELLO was seen and the peer acknowledged
ours (its HELLO's ``peer_session`` is our session). A HELLO that does not
acknowledge us is answered at once. A duplicate HELLO (known session) is
absorbed. A HELLO with a *new* session from a known peer means the peer
restarted: the link resets everything it keeps about the peer (link credit,
with our receive counters re-based so the buffers the old peer's frames used
are not advertised twice; sequence expectation; partial reassemblies; the
send queue, which was meant for the old incarnation), drops the old
incarnation's messages still in the batch, counts ``peer_restarts`` and calls
``on_peer_hello(hello, restarted=True)``. The first HELLO of a peer calls
``on_peer_hello(hello, restarted=False)``. Nothing is decided by timing.

Keepalive (§3.2): ``tick(now)`` queues a KEEPALIVE when nothing was sent for
``keepalive_interval``; ``peer_lost`` is True while nothing was received for
``peer_timeout``. Time is passed in (``now=``); nothing here sleeps or reads a
clock. HELLO and KEEPALIVE are consumed by the link, not returned.

Backpressure: ``writable`` is False while more than ``max_queued_bytes`` wait
in the queue (link credit exhausted or not flushed yet). :class:`AsyncLink`
turns that into ``await drain()``.

Hot path: received frames are copied once (``recv_batch(copy=True)``, or a
backend's ``recv_copies`` straight into ``bytes``) and message payloads are
``bytes`` slices of that copy (grouped per connection with ``raw_runs``); outgoing frames are
built in place in fixed-size slots of one preallocated ``bytearray``
(``_txbuf``) that ``send_batch`` copies (every backend copies into its TX ring
on the call), or that a backend with ``strided_sender`` (AF_XDP) takes
straight from the slots in one C call. With the optional C accelerator
(``xport._linkfast``, see below) the clean frames of a receive batch (header,
credit, whole DATA and CREDIT messages) are taken in one C call, the frames
of a flush are packed in one, and ``AsyncLink.try_send_runs`` queues all its
entries in one; the Python loops take over at anything else and are the
reference. An AF_XDP backend also hands the link C callables for its
per-wake-up calls (``copies_receiver``, ``posted_reader``, ``strided_sender``),
and over them ``poll`` and ``flush`` are one C call each (``Poller``,
``Flusher``) in the common case; ``AsyncLink``'s reader callback is one C
call too (``Waker``: ``_on_readable`` with the Poller and Flusher called
directly, the clock read in C), so a wake-up runs no Python frame of the
link unless a callback is set or the rare path is taken.

Public API
----------
``LinkConfig`` (dataclass, docstring per field), ``LinkStats``,
``Link(backend, config=LinkConfig(), *, now=0.0, session=None)`` with ``send(msg)``,
``flush(now=None) -> int``, ``poll(max_frames=64, now=None) -> list[Message]``,
``tick(now)``, ``writable``, ``queued_bytes``, ``peer_lost``, ``peer_hello``,
``session``, ``peer_session``, ``established``, ``peer_restarts``,
``on_peer_hello``, ``raw_data``, ``raw_runs``, ``accelerated``, ``fileno()``,
``statistics()``, ``close()``; ``new_session()``; ``ACCELERATED``; and
``AsyncLink`` (asyncio: ``send``, ``send_data``, ``try_send_data``,
``try_send_many``, ``try_send_credit``, ``drain()``, ``recv()``,
``set_on_messages``, ``close()``).
"""

from __future__ import annotations

import asyncio
import importlib
import os
import secrets
import struct
import time
from array import array
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from itertools import repeat
from typing import Any

from ._backend import BackendStats, FrameBackend
from ._linkcredit import LinkCredit
from ._protocol import (
    COMMON_HEADER,
    HEADER_SIZE,
    PROTOCOL_VERSION,
    Credit,
    Data,
    Hello,
    Keepalive,
    Message,
    MessageType,
    ProtocolError,
    Role,
    decode_body,
    encode_body,
    make_data,
)
from ._reassembly import Reassembler
from ._wire import (
    ETH_HEADER_SIZE,
    ETHERTYPE,
    FRAME_HEADER,
    FRAME_HEADER_SIZE,
    LINK_VERSION,
    FrameFlags,
    mac_bytes,
)

__all__ = ["AsyncLink", "Link", "LinkConfig", "LinkLostError", "LinkStats", "new_session"]

_DATA = int(MessageType.DATA)
_CREDIT = int(MessageType.CREDIT)
_CREDIT_BODY = struct.Struct("!II")  # §3.11: messages, bytes
_HELLO = int(MessageType.HELLO)
_KEEPALIVE = int(MessageType.KEEPALIVE)
_WHOLE = 0x03
_FIRST = 0x01
_LAST = 0x02
_CREDIT_ONLY = int(FrameFlags.CREDIT_ONLY)
_MASK = 0xFFFFFFFF
_HALF = 1 << 31

# The optional C accelerator (xport/_linkfast.c, built by
# ``python scripts/build_accelerators.py``) runs the hot loops: per receive
# batch, the clean frames (link header checks, LinkCredit.on_frame without an
# anomaly, credit-only frames) and their whole DATA/CREDIT messages
# (``rx_frames``); per flush, the frames of whole messages (``pack_frames``);
# per ``AsyncLink.try_send_runs``, the queue entries of all its runs (``queue_runs``);
# per frame, the whole messages from an offset (``rx_whole``, ``pack_whole``)
# where the Python loops hand back to C. Everything else (fragments, control
# messages, malformed input, anomalies, the handshake) stays in Python, and
# the pure-Python loops are the reference and the fallback
# (tests/xport/test_linkfast.py and test_link_fast_frames.py compare them).
# ``XPORT_PURE_PYTHON=1`` turns it off for the process.
_linkfast: Any
try:
    if os.environ.get("XPORT_PURE_PYTHON"):
        raise ImportError("XPORT_PURE_PYTHON is set")
    _linkfast = importlib.import_module(__name__.rpartition(".")[0] + "._linkfast")
    # the C side hard-codes the wire constants: a stale build must not be used
    _c_wire = (_linkfast.PROTOCOL_VERSION, _linkfast.HEADER_SIZE, _linkfast.DATA, _linkfast.CREDIT)
    if _c_wire != (PROTOCOL_VERSION, HEADER_SIZE, _DATA, _CREDIT):
        raise ImportError(f"xport._linkfast was built for other wire constants {_c_wire}")
    # API 2: rx_whole's runs (raw=2) and 3-tuple; FEATURES 5: pack_frames, rx_frames,
    # queue_runs
    if (getattr(_linkfast, "API", 1), getattr(_linkfast, "FEATURES", 0)) != (2, 5):
        raise ImportError("xport._linkfast is a stale build (API != 2 or FEATURES != 5)")
    _linkfast.init(Data, Credit)  # TypeError if they stopped being slotted classes
except (ImportError, TypeError):
    _linkfast = None

ACCELERATED: bool = _linkfast is not None
"""The C accelerator is in use (``XPORT_PURE_PYTHON=1`` turns it off)."""
_rx_whole: Callable[[bytes, int, int, int, int, list[Any]], tuple[int, int, int]] | None = (
    _linkfast.rx_whole if ACCELERATED else None
)
_pack_whole: Callable[[deque[Any], bytearray, int, int, int], tuple[int, int, int]] | None = (
    _linkfast.pack_whole if ACCELERATED else None
)
_pack_frames: Callable[..., tuple[int, int, int, int, int]] | None = (
    _linkfast.pack_frames if ACCELERATED else None
)
_rx_frames: (
    Callable[[list[bytes], int, LinkCredit, int, list[Any]], tuple[int, int, int, int, int]] | None
) = _linkfast.rx_frames if ACCELERATED else None
_queue_runs: Callable[[deque[Any], Any, Any], bool] | None = (
    _linkfast.queue_runs if ACCELERATED else None
)
_Flusher: Any = getattr(_linkfast, "Flusher", None) if ACCELERATED else None
_Poller: Any = getattr(_linkfast, "Poller", None) if ACCELERATED else None
_Waker: Any = getattr(_linkfast, "Waker", None) if ACCELERATED else None
_RunSender: Any = getattr(_linkfast, "RunSender", None) if ACCELERATED else None
# the clock the Waker reads itself (CLOCK_MONOTONIC) when an AsyncLink's clock is it
_MONOTONIC = time.monotonic


# the slot setters of Data and Credit: the Python loop of Link.poll builds
# them as object.__new__ + these (what the frozen dataclasses' __init__ does)
_SETTERS: tuple[Callable[[object, object], None], ...] = tuple(
    vars(cls)[name].__set__
    for cls, names in ((Data, ("conn_id", "payload", "header_length")),
                       (Credit, ("conn_id", "messages", "bytes")))
    for name in names
)


# docs/protocol.md §1 after the Ethernet header: FRAME_HEADER from ``version`` on
_LINK_HEADER = struct.Struct("!BBHIIIHH")
assert FRAME_HEADER.format == "!6s6sH" + _LINK_HEADER.format[1:]
# seq, credit, credit_ack, payload_length of the link header (§1)
_SEQ_TO_PLEN = struct.Struct("!IIIH")
_SEQ_OFFSET = ETH_HEADER_SIZE + 4
assert _LINK_HEADER.unpack(bytes(range(20)))[3:7] == _SEQ_TO_PLEN.unpack(bytes(range(4, 18)))
_REPEAT_DATA = repeat(_DATA)
_REPEAT_0 = repeat(0)


def new_session() -> int:
    """A random, non-zero u64: the identity of one incarnation (§3.1)."""
    return secrets.randbits(64) or 1


def _starts_with_hello(data: bytes, end: int) -> bool:
    """The frame's first message is a version-1 HELLO (§3.1.6)."""
    return (
        end >= FRAME_HEADER_SIZE + HEADER_SIZE
        and data[FRAME_HEADER_SIZE] == PROTOCOL_VERSION
        and data[FRAME_HEADER_SIZE + 1] == _HELLO
    )


class LinkLostError(ConnectionError):
    """The peer sent nothing for ``peer_timeout`` seconds."""


@dataclass(frozen=True, slots=True)
class LinkConfig:
    """Configuration of one link end. Both ends must agree on ``credit_reserve``."""

    #: who this end is (sent in HELLO)
    role: Role = Role.HOST
    #: this end's MAC address (Ethernet source)
    local_mac: bytes = b"\x02\x00\x00\x00\x00\x01"
    #: the peer's MAC address (Ethernet destination)
    peer_mac: bytes = b"\x02\x00\x00\x00\x00\x02"
    #: largest message body accepted or sent, bytes (bounds reassembly memory per message)
    max_message_size: int = 1 << 20
    #: most bytes held in partially reassembled messages over all connections
    max_reassembly_bytes: int = 16 << 20
    #: receive buffers kept for credit-only frames (K in docs/protocol.md §4); same at both ends
    credit_reserve: int = 2
    #: receive buffers the peer is assumed to have posted before its first header arrives
    initial_peer_credit: int = 4
    #: un-advertised buffers worth a credit-only frame even when the peer is not blocked
    credit_update_threshold: int = 16
    #: largest frame built, Ethernet header included (None: the backend's ``frame_size``;
    #: set it to the link MTU + 14 when the backend's buffers are larger than the MTU)
    max_frame_size: int | None = None
    #: most frames handed to the backend per flush (one send_batch call)
    max_frames_per_flush: int = 64
    #: a message larger than one frame's room is fragmented; smaller ones never are
    min_fragment: int = 256
    #: seconds without sending after which a KEEPALIVE is queued
    keepalive_interval: float = 1.0
    #: seconds without receiving after which the peer is declared lost
    peer_timeout: float = 5.0
    #: queued bytes above which ``writable`` is False (backpressure)
    max_queued_bytes: int = 4 << 20
    #: seconds between HELLOs until the link is established (§3.1.1)
    hello_interval: float = 0.05
    #: initial per-connection window this end grants its peer, messages (sent in HELLO, §5)
    window_messages: int = 64
    #: the same in bytes; 0: twice ``max_message_size`` (at most 2**32 - 1). Must be
    #: >= ``max_message_size`` (§5.1: every legal message must fit)
    window_bytes: int = 0

    def __post_init__(self) -> None:
        if self.max_message_size < 1 or self.max_reassembly_bytes < self.max_message_size:
            raise ValueError("need 1 <= max_message_size <= max_reassembly_bytes")
        if self.window_bytes == 0:
            object.__setattr__(self, "window_bytes", min(2 * self.max_message_size, _MASK))
        if not 1 <= self.window_messages <= _MASK or self.window_bytes > _MASK:
            raise ValueError("windows must fit in u32 (and window_messages >= 1)")
        if self.window_bytes < self.max_message_size:
            raise ValueError(
                f"window_bytes {self.window_bytes} < max_message_size {self.max_message_size}: "
                "a largest message could never be sent (docs/protocol.md §5.1)"
            )
        if self.hello_interval <= 0:
            raise ValueError("hello_interval must be > 0")
        if self.max_frames_per_flush < 1:
            raise ValueError("max_frames_per_flush must be >= 1")
        if self.keepalive_interval <= 0 or self.peer_timeout <= self.keepalive_interval:
            raise ValueError("need 0 < keepalive_interval < peer_timeout")
        object.__setattr__(self, "local_mac", mac_bytes(self.local_mac))
        object.__setattr__(self, "peer_mac", mac_bytes(self.peer_mac))


@dataclass(slots=True)
class LinkStats:
    """Counters of one link end, cumulative."""

    frames_out: int = 0
    frames_in: int = 0
    messages_out: int = 0
    messages_in: int = 0
    fragments_out: int = 0
    fragments_in: int = 0
    credit_only_out: int = 0
    credit_only_in: int = 0
    keepalives_out: int = 0
    hellos_out: int = 0
    #: HELLOs with a new session from a known peer (§3.1.4)
    peer_restarts: int = 0
    #: flushes that left data queued for lack of link credit
    credit_stalls: int = 0
    #: send_batch calls that took fewer frames than offered (TX ring full)
    tx_short: int = 0
    #: frames or messages dropped, by reason (§1, §2 reasons and seq_gap/credit_regress)
    dropped: dict[str, int] = field(default_factory=dict)
    backend: BackendStats | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class Link:
    """Transport messages over one FrameBackend (see module doc). One owner task."""

    def __init__(
        self,
        backend: FrameBackend,
        config: LinkConfig | None = None,
        *,
        now: float = 0.0,
        session: int | None = None,
    ):
        cfg = config or LinkConfig()
        frame_size = min(backend.frame_size, cfg.max_frame_size or backend.frame_size)
        if frame_size < FRAME_HEADER_SIZE + HEADER_SIZE + 64:
            raise ValueError(f"frame size {frame_size} too small")
        self.backend = backend
        self.config = cfg
        # §3.1.4: buffers consumed before this link (a backend reused after a
        # restart) are not advertised again: P counts from "free now"
        self._posted_base = backend.statistics().rx_frames
        self.credit = LinkCredit(
            reserve=cfg.credit_reserve,
            initial_peer_credit=cfg.initial_peer_credit,
            update_threshold=cfg.credit_update_threshold,
        )
        self._reasm = Reassembler(cfg.max_message_size, cfg.max_reassembly_bytes)
        self._frame_size = frame_size
        self._queue: deque[tuple[int, int, int, bytes | bytearray | memoryview]] = deque()
        self._head_sent = 0  # bytes of the queue head already sent as fragments
        self._queued_bytes = 0
        self._backlog: deque[bytes] = deque()  # built frames a full TX ring refused
        # the frames of one flush, built in place: frame i in the slot
        # _txbuf[i * frame_size:(i + 1) * frame_size], its length in _txlens[i]
        nslots = self._max_frames = cfg.max_frames_per_flush
        self._txbuf = bytearray(frame_size * nslots)
        self._txlens = array("I", bytes(4 * nslots))
        # Ethernet part of the header never changes: pack it once per slot
        eth = cfg.peer_mac + cfg.local_mac + ETHERTYPE.to_bytes(2, "big")
        for i in range(nslots):
            self._txbuf[i * frame_size : i * frame_size + ETH_HEADER_SIZE] = eth
        # a backend that sends the slots straight from _txbuf (AfXdpBackend:
        # one C call, no join): tx(n) hands frames 0..n-1 over, returns how many
        strided = getattr(backend, "strided_sender", None)
        self._tx_strided: Callable[[int], int] | None = (
            strided(self._txbuf, frame_size, self._txlens) if strided is not None else None
        )
        self.stats = LinkStats()
        self._dropped = self.stats.dropped
        #: the peer's HELLO, once received (the first of its current session)
        self.peer_hello: Hello | None = None
        #: this end's incarnation (§3.1)
        self.session = session if session is not None else new_session()
        if not 0 < self.session <= 0xFFFFFFFFFFFFFFFF:
            raise ValueError("session must be a non-zero u64")
        #: the peer's session, 0 until its HELLO arrives
        self.peer_session = 0
        self._acked = False  # the peer acknowledged our HELLO
        #: called with (hello, restarted) on the first HELLO of each peer session
        self.on_peer_hello: Callable[[Hello, bool], None] | None = None
        #: when True, ``poll`` returns each whole DATA message without a ULP
        #: header as a ``(conn_id, payload)`` tuple instead of a :class:`Data`
        #: (a consumer's hot path: no object per message); others are unchanged
        self.raw_data = False
        #: when True (whatever ``raw_data`` says), ``poll`` returns each *run*
        #: of consecutive whole DATA without a ULP header of one connection as
        #: one ``(conn_id, [payload, ...])`` entry, runs spanning frames of the
        #: batch: no two consecutive entries are runs of one connection
        #: (a consumer's per-run hot path); others are unchanged
        self.raw_runs = False
        #: run the per-message loops in C (``ACCELERATED``); False forces the
        #: pure-Python loops for this link (the tests compare the two)
        self.accelerated = ACCELERATED
        # backend.rx_buffers_posted, or the same as a C callable (AfXdpBackend's
        # posted_reader): asked once per flush
        reader = getattr(backend, "posted_reader", None)
        self._rx_posted: Callable[[], int] = (
            reader() if reader is not None else backend.rx_buffers_posted
        )
        # a backend that receives straight into bytes (AfXdpBackend.recv_copies):
        # recv_batch(copy=True) without an RxFrame per frame; the same as a C
        # callable where the backend has one (AfXdpBackend.copies_receiver)
        receiver = getattr(backend, "copies_receiver", None)
        self._recv_copies: Callable[[int], list[bytes]] | None = (
            receiver() if receiver is not None else getattr(backend, "recv_copies", None)
        )
        # the largest message sendable: ours, then min(ours, the peer's HELLO)
        self._max_send = cfg.max_message_size
        self.peer_lost = False
        self._last_rx = now
        self._last_tx = now
        self._last_hello = now
        self.closed = False
        # Link.poll in one C call for a link that receives copies (see poll)
        self._poll_c: Callable[[Link, int, float | None], Any] | None = (
            _Poller(self._recv_copies, self.stats)
            if _Poller is not None and self._recv_copies is not None
            else None
        )
        # Link.flush in one C call for a link that sends from its slots (see flush)
        self._flush_c: Callable[[Link, float | None], Any] | None = (
            _Flusher(self._queue, self._backlog, self._txbuf, frame_size, nslots, self._txlens,
                     self._tx_strided, self._rx_posted, self.stats)
            if _Flusher is not None and self._tx_strided is not None
            else None
        )  # fmt: skip
        self._queue_hello()

    # -- handshake (§3.1) ----------------------------------------------------
    @property
    def established(self) -> bool:
        """The peer's HELLO was seen and the peer acknowledged ours (§3.1.1)."""
        return self._acked and self.peer_session != 0

    @property
    def peer_restarts(self) -> int:
        return self.stats.peer_restarts

    def _queue_hello(self) -> None:
        cfg = self.config
        self.send(
            Hello(
                cfg.role,
                int(cfg.keepalive_interval * 1000),
                cfg.max_message_size,
                session=self.session,
                peer_session=self.peer_session,
                window_messages=cfg.window_messages,
                window_bytes=cfg.window_bytes,
            )
        )
        self.stats.hellos_out += 1

    def set_window(self, messages: int, nbytes: int) -> None:
        """Change the per-connection window announced in HELLO (§3.1, §5).

        Only before the link has sent anything (the HELLO still queued): the
        peer must never see two windows. ``ValueError`` as ``LinkConfig``.
        """
        head = self._queue[0] if self._queue else None
        if self.stats.frames_out or self._backlog or head is None or head[0] != _HELLO:
            raise RuntimeError("the HELLO was sent already: set the window in LinkConfig")
        self.config = replace(self.config, window_messages=messages, window_bytes=nbytes)
        self._queue.popleft()
        self._queued_bytes -= len(head[3])
        self._queue_hello()  # the only message queued, or goes first again
        self._queue.appendleft(self._queue.pop())
        self.stats.hellos_out -= 1

    def _posted(self) -> int:
        """Receive buffers posted, counted from this link's (or the peer session's) origin."""
        return self.backend.rx_buffers_posted() - self._posted_base

    # -- sending -----------------------------------------------------------
    @property
    def queued_bytes(self) -> int:
        """Message bytes queued and not yet handed to the backend."""
        return self._queued_bytes

    @property
    def queued_messages(self) -> int:
        return len(self._queue)

    @property
    def writable(self) -> bool:
        """False while the queue holds more than ``max_queued_bytes`` (backpressure)."""
        return self._queued_bytes <= self.config.max_queued_bytes

    def send(self, msg: Message) -> None:
        """Queue one transport message; ``flush()`` sends it."""
        if isinstance(msg, Data):
            payload = msg.payload
            aux = msg.header_length
            if aux > len(payload):
                raise ValueError("header_length exceeds payload")
            entry = (_DATA, msg.conn_id, aux, payload)
        else:
            mtype, aux, payload = encode_body(msg)
            entry = (int(mtype), msg.conn_id, aux, payload)
        n = len(payload)
        if n > self._max_send:
            raise ValueError(f"message of {n} bytes > max message size {self._max_send}")
        if not 0 <= msg.conn_id <= _MASK:
            raise ValueError("conn_id does not fit in u32")
        self._queue.append(entry)
        self._queued_bytes += n

    def send_data(
        self, conn_id: int, payload: bytes | bytearray | memoryview, header_length: int = 0
    ) -> None:
        """``send(Data(conn_id, payload, header_length))`` without building the dataclass."""
        n = len(payload)
        if header_length > n or n > self._max_send:
            raise ValueError(f"DATA of {n} bytes (header {header_length}) > max {self._max_send}")
        self._queue.append((_DATA, conn_id, header_length, payload))
        self._queued_bytes += n

    def flush(self, now: float | None = None) -> int:
        """Send what credit allows in one ``send_batch``; return frames handed over."""
        if self.closed:
            return 0
        fast = self._flush_c
        if fast is not None and self.accelerated:
            # C: all of the below (an int: frames sent), or the frames up to an
            # entry for the Python loop (a tuple: go on from there), or nothing
            # (None: a backlog, a fragment in progress, odd counters)
            r = fast(self, now)
            if r.__class__ is int:
                return r
            if r is not None:
                return self._flush_packed(r, now)
        lc = self.credit
        sent = 0
        if self._backlog:
            sent = self._send_backlog()
            if self._backlog:
                return sent
        queue = self._queue
        # read once per flush: sending frames never posts receive buffers
        posted = self._rx_posted() - self._posted_base  # _posted()
        if queue:
            # lc.data_credit(), inline (once or twice per flush)
            credit = (lc.peer_posted - lc.sent) - lc.reserve + (lc.co_sent - lc.peer_ack)
            if credit > 0:
                sent += self._send_data_frames(min(credit, self._max_frames), posted)
                if queue and lc.data_credit() < 1:
                    self.stats.credit_stalls += 1
            elif queue:
                self.stats.credit_stalls += 1
        return self._flush_end(sent, posted, now)

    def _flush_packed(self, r: tuple[int, ...], now: float | None) -> int:
        """``flush`` after the Flusher's tuple (frames packed up to an entry
        for the Python loop): the rest of the flush, as ``flush`` returns it."""
        nf, off, count, msgs, nbytes, nframes, seq, credit, ack, posted = r
        sent = self._send_packed(nf, off, count, msgs, nbytes, nframes, seq, credit, ack)
        if self._queue and self.credit.data_credit() < 1:
            self.stats.credit_stalls += 1
        return self._flush_end(sent, posted, now)

    def _flush_end(self, sent: int, posted: int, now: float | None) -> int:
        """The end of a flush: a credit-only frame if one is due (§4.4); ``_last_tx``."""
        lc = self.credit
        # lc.want_credit_only(posted), its early answer inline: False when nothing
        # was posted since the last advertisement (often: this flush's data
        # frame carried it)
        if (posted ^ lc.adv_posted) & _MASK and not self._backlog and lc.want_credit_only(posted):
            sent += self._send_credit_only(posted)
        if sent and now is not None:
            self._last_tx = now
        return sent

    def _send_data_frames(self, nframes: int, posted: int) -> int:
        lc = self.credit
        # credit, ack = lc.advertise(posted), inline (once per flush; a test
        # compares the two)
        last = lc.adv_posted
        delta = (posted - last) & _MASK
        p = last if delta >= _HALF else last + delta  # never advertise less
        a = p - (last - lc.adv_ack)  # §4.1: clamp A so that P − A never decreases
        if lc.co_rx < a:
            a = lc.co_rx
        lc.adv_posted = p
        lc.adv_ack = a
        credit = p & _MASK
        ack = a & _MASK
        seq = lc.sent
        msgs_out = bytes_out = 0
        nf = 0  # frames closed (frame nf is built at buf[nf * frame_size:])
        off = count = 0  # an open frame left by pack_frames (count 0: none)
        if self.accelerated and _pack_frames is not None and not self._head_sent:
            # C: whole frames of whole messages, as _pack_frames_py builds them
            nf, off, count, msgs_out, bytes_out = _pack_frames(
                self._queue, self._txbuf, self._frame_size, nframes, seq & _MASK, credit, ack,
                self._txlens,
            )  # fmt: skip
        return self._send_packed(nf, off, count, msgs_out, bytes_out, nframes, seq, credit, ack)

    def _send_packed(
        self,
        nf: int,
        off: int,
        count: int,
        msgs_out: int,
        bytes_out: int,
        nframes: int,
        seq: int,
        credit: int,
        ack: int,
    ) -> int:
        """``_send_data_frames`` from frame ``nf`` on (frames before it packed
        by C; frame ``nf`` filled up to ``off`` with ``count`` messages when
        ``count``): the Python loop for the rest, the counters, and the
        frames to the backend; returns the frames it took."""
        queue = self._queue
        frame_size = self._frame_size
        buf = self._txbuf
        lens = self._txlens
        frags_out = 0
        if queue and nf < nframes:
            nf, off, msgs_out, frags_out, bytes_out = self._pack_frames_py(
                nf, off, count, nframes, seq, credit, ack, msgs_out, bytes_out
            )
        self._queued_bytes -= bytes_out
        self.credit.sent += nf  # lc.on_data_sent(nf): nf <= nframes <= data_credit()
        st = self.stats
        st.fragments_out += frags_out
        st.messages_out += msgs_out
        tx = self._tx_strided
        if tx is not None:
            taken = tx(nf)
        else:
            mv = memoryview(buf)
            taken = self.backend.send_batch(
                [mv[i * frame_size : i * frame_size + lens[i]] for i in range(nf)]
            )
        st.frames_out += taken
        if taken < nf:
            st.tx_short += 1
            mv = memoryview(buf)
            self._backlog.extend(
                bytes(mv[i * frame_size : i * frame_size + lens[i]]) for i in range(taken, nf)
            )
        return taken

    def _pack_frames_py(
        self,
        nf: int,
        off: int,
        count: int,
        nframes: int,
        seq: int,
        credit: int,
        ack: int,
        msgs_out: int,
        bytes_out: int,
    ) -> tuple[int, int, int, int, int]:
        """Frames ``nf..nframes-1`` of a flush (frame ``nf`` filled up to
        ``off`` with ``count`` messages when ``count``): the pure-Python
        loop, the reference for ``pack_frames``, which goes on from any
        entry the C side leaves (fragments, odd entries). Returns frames
        closed, the last offset, and the messages, fragments and payload
        bytes sent (counted from ``msgs_out``, ``bytes_out``)."""
        queue = self._queue
        frame_size = self._frame_size
        min_frag = self.config.min_fragment
        pack_msg = COMMON_HEADER.pack_into
        pack_link = _LINK_HEADER.pack_into
        buf = self._txbuf
        lens = self._txlens
        frags_out = 0
        head_sent = self._head_sent
        popleft = queue.popleft
        frag_room = frame_size - FRAME_HEADER_SIZE - HEADER_SIZE
        pack_whole = _pack_whole if self.accelerated else None
        while queue and nf < nframes:
            base = nf * frame_size
            if not count:
                off = base + FRAME_HEADER_SIZE
            frame_end = base + frame_size
            limit = frame_end - HEADER_SIZE  # room test: remaining <= limit - off
            while queue:
                if pack_whole is not None and not head_sent:
                    # C: the whole messages that fit, as the branch below packs them
                    off, n, nbytes = pack_whole(queue, buf, off, count, frame_end)
                    count += n
                    msgs_out += n
                    bytes_out += nbytes
                    if not queue or count == 0xFFFF:
                        break
                mtype, conn_id, aux, payload = entry = popleft()
                total = len(payload)
                remaining = total - head_sent
                room = limit - off
                if remaining <= room:
                    # §2: whole message, or the last fragment of one
                    if head_sent:
                        pack_msg(
                            buf,
                            off,
                            PROTOCOL_VERSION,
                            mtype,
                            _LAST,
                            0,
                            conn_id,
                            remaining,
                            aux,
                            total,
                        )
                        off += HEADER_SIZE
                        buf[off : off + remaining] = memoryview(payload)[head_sent:]
                        frags_out += 1
                        head_sent = 0
                    else:
                        pack_msg(
                            buf, off, PROTOCOL_VERSION, mtype, _WHOLE, 0, conn_id, total, aux, total
                        )
                        off += HEADER_SIZE
                        buf[off : off + total] = payload
                    off += remaining
                    bytes_out += total
                    msgs_out += 1
                    count += 1
                    if count == 0xFFFF:
                        break
                    continue
                queue.appendleft(entry)
                if total > frag_room and room >= min_frag:
                    # §2.2: fragment only messages that fit in no frame
                    flags = _FIRST if head_sent == 0 else 0
                    pack_msg(buf, off, PROTOCOL_VERSION, mtype, flags, 0, conn_id, room, aux, total)
                    off += HEADER_SIZE
                    buf[off : off + room] = memoryview(payload)[head_sent : head_sent + room]
                    off += room
                    head_sent += room
                    frags_out += 1
                    count += 1
                break
            if count == 0:
                break  # nothing fits (cannot happen with frame_size checked at init)
            # the Ethernet header is in every slot already (__init__)
            pack_link(buf, base + ETH_HEADER_SIZE, LINK_VERSION, 0, count, (seq + nf) & _MASK,
                      credit, ack, off - base - FRAME_HEADER_SIZE, 0)  # fmt: skip
            lens[nf] = off - base
            nf += 1
            count = 0
        self._head_sent = head_sent
        return nf, off, msgs_out, frags_out, bytes_out

    def _send_backlog(self) -> int:
        frames = list(self._backlog)
        taken = self.backend.send_batch(frames)
        for _ in range(taken):
            self._backlog.popleft()
        self.stats.frames_out += taken
        if taken < len(frames):
            self.stats.tx_short += 1
        return taken

    def _send_credit_only(self, posted: int) -> int:
        lc = self.credit
        credit, ack = lc.advertise(posted)
        buf = bytearray(FRAME_HEADER_SIZE)
        FRAME_HEADER.pack_into(
            buf, 0, self.config.peer_mac, self.config.local_mac, ETHERTYPE, LINK_VERSION,
            _CREDIT_ONLY, 0, lc.sent & _MASK, credit, ack, 0, 0,
        )  # fmt: skip
        lc.on_credit_only_sent()
        self.stats.credit_only_out += 1
        if self.backend.send_batch([buf]) == 1:
            self.stats.frames_out += 1
            return 1
        self.stats.tx_short += 1
        self._backlog.append(bytes(buf))
        return 0

    # -- receiving ---------------------------------------------------------
    def _drop(self, reason: str, n: int = 1) -> None:
        self._dropped[reason] = self._dropped.get(reason, 0) + n

    def poll(self, max_frames: int = 64, now: float | None = None) -> list[Message]:
        """Receive one batch; whole messages in arrival order (never raises for bad input)."""
        if self.closed:
            return []
        fast = self._poll_c
        if fast is not None and self.accelerated and self.peer_session:
            # C: all of it (the messages), or up to a frame or message for the
            # Python loops (a tuple: go on from there)
            r = fast(self, max_frames, now)
            if r.__class__ is list:
                return r
            return self._poll_rest(*r)
        recv_copies = self._recv_copies
        if recv_copies is not None:
            rx = recv_copies(max_frames)
        else:
            rx = []
            for frame in self.backend.recv_batch(max_frames, copy=True):
                data = frame.data
                rx.append(data if isinstance(data, bytes) else bytes(data))
                frame.release()  # data is our copy: repost the buffer now
        if not rx:
            return []
        if now is not None:
            self._last_rx = now
        self.stats.frames_in += len(rx)
        return self._poll_rest(rx, 0, 0, 0, 0, [])

    def _poll_rest(
        self, rx: list[bytes], start: int, off: int, left: int, merged: int, out: list[Any]
    ) -> list[Message]:
        """``poll`` from ``rx[start]`` on, the batch received and counted: when
        ``off``, ``rx[start]`` was accounted by C (``rx_frames``) and its
        ``left`` messages from ``off`` on are the Python loop's; ``out`` holds
        the messages so far (``merged``: payloads that joined a run in it)."""
        lc = self.credit
        # 0: Data objects; 1: (conn_id, payload); 2: runs (conn_id, [payload, ...])
        raw = 2 if self.raw_runs else 1 if self.raw_data else 0
        st = self.stats
        fresh = not self.peer_session  # §3.1: no peer session yet
        rx_frames = _rx_frames if self.accelerated and not fresh else None
        while True:
            if off:
                # rx[start] is accounted; its messages from off on are Python's
                data = rx[start]
                seq, credit, ack, plen = _SEQ_TO_PLEN.unpack_from(data, _SEQ_OFFSET)
                end = FRAME_HEADER_SIZE + plen
                merged, restarted = self._rx_messages(
                    data, off, end, left, raw, out, merged,
                    (start + st.frames_in - len(rx), seq, credit, ack, None),
                )  # fmt: skip
                if restarted:
                    lc = self.credit
                start += 1
            if rx_frames is None:
                break
            # C: the clean frames (valid header, credit in order) and their
            # whole DATA/CREDIT messages, as the loop below handles them
            start, off, left, joined, co_in = rx_frames(rx, start, lc, raw, out)
            merged += joined
            st.credit_only_in += co_in
            if not off:
                break  # rx[start:] are the loop's (an anomaly, or the end)
        if start == len(rx):  # C took every frame (the common case): no loop to set up
            st.messages_in += len(out) + merged
            return out
        unpack_frame = FRAME_HEADER.unpack_from
        rx_whole = _rx_whole if self.accelerated else None
        for index, data in enumerate(rx[start:] if start else rx, start):
            n = len(data)
            # §1: bounds check before reading the header
            if n < FRAME_HEADER_SIZE:
                self._drop("truncated")
                continue
            (_d, _s, etype, version, flags, count, seq, credit, ack, plen, _r) = unpack_frame(
                data, 0
            )
            if etype != ETHERTYPE:
                self._drop("not_ours")
                continue
            # §1: unknown link versions are dropped
            if version != LINK_VERSION:
                self._drop("bad_version")
                continue
            end = FRAME_HEADER_SIZE + plen
            if end > n:
                self._drop("truncated")
                continue
            credit_only = bool(flags & _CREDIT_ONLY)
            if credit_only != (count == 0):
                self._drop("bad_count")
                continue
            if fresh:
                # §3.1.6: until the peer's first HELLO, frames are another
                # incarnation's (a survivor that has not seen our HELLO yet):
                # their credit is not ours and their buffers are not advertised
                if credit_only or not _starts_with_hello(data, end):
                    self._drop("before_hello")
                    self._posted_base += 1
                    continue
                lc.frames_rx = seq  # the peer's sequence starts here for us
                fresh = False
            anomaly = lc.on_frame(seq, credit, ack, credit_only)
            if anomaly is not None:
                self._drop(anomaly)
                if anomaly == "seq_gap":
                    self._reasm.reset()
            if credit_only:
                lc.on_credit_only_released()
                st.credit_only_in += 1
                continue
            off = FRAME_HEADER_SIZE
            left = count
            if rx_whole is not None:
                # C: the whole DATA and CREDIT messages from the start, as
                # _rx_messages handles them; it goes on at the rest
                off, left, joined = rx_whole(data, off, end, left, raw, out)
                merged += joined
                if not left:
                    continue
            header = (index + st.frames_in - len(rx), seq, credit, ack, anomaly)
            merged, restarted = self._rx_messages(data, off, end, left, raw, out, merged, header)
            if restarted:
                lc = self.credit
        st.messages_in += len(out) + merged
        return out

    def _rx_messages(
        self,
        data: bytes,
        off: int,
        end: int,
        left: int,
        raw: int,
        out: list[Message],
        merged: int,
        header: tuple[int, int, int, int, str | None],
    ) -> tuple[int, bool]:
        """The ``left`` messages of a frame from ``off`` (the pure-Python loop,
        the reference for the C accelerator, which it calls again when on);
        returns the new ``merged`` (payloads in ``out`` that joined a run) and
        whether a HELLO reset the per-peer state. ``header``: (frames this
        link took before this one, seq, credit, ack, anomaly) of the frame."""
        unpack_msg = COMMON_HEADER.unpack_from
        append = out.append
        new = object.__new__
        push: Callable[[object], None] = out.append  # type: ignore[assignment]  # raw DATA
        set_conn, set_payload, set_hlen, set_cconn, set_cmsgs, set_cbytes = _SETTERS
        unpack_credit = _CREDIT_BODY.unpack_from
        rx_whole = _rx_whole if self.accelerated else None
        restarted = False
        while left:
            if rx_whole is not None:
                # C: the whole DATA and CREDIT messages from here, as the
                # branches below handle them; the loop goes on at the rest
                off, left, joined = rx_whole(data, off, end, left, raw, out)
                merged += joined
                if not left:
                    break
            left -= 1
            # §2: bounds check before reading each message header
            if off + HEADER_SIZE > end:
                self._drop("truncated_message")
                break
            mver, mtype, mflags, _rr, conn_id, length, aux, total = unpack_msg(data, off)
            off += HEADER_SIZE
            mend = off + length
            if mend > end:
                self._drop("truncated_message")
                break
            # §2: version and length sit at the same place in every version: skip it
            if mver != PROTOCOL_VERSION:
                self._drop("bad_version")
                off = mend
                continue
            if mflags & _WHOLE == _WHOLE and length == total:
                if mtype == _DATA:
                    if aux > length:
                        self._drop("bad_body")
                    elif raw == 2 and not aux:
                        last: Any = out[-1] if out else None
                        if last.__class__ is tuple and last[0] == conn_id:
                            last[1].append(data[off:mend])
                            merged += 1
                        else:
                            push((conn_id, [data[off:mend]]))
                    elif raw and not aux:
                        push((conn_id, data[off:mend]))
                    else:
                        d = new(Data)
                        set_conn(d, conn_id)
                        set_payload(d, data[off:mend])
                        set_hlen(d, aux)
                        append(d)
                    off = mend
                    continue
                if mtype == _CREDIT and length == 8:
                    # CREDIT, one per reply: built like DATA above
                    cm, cb = unpack_credit(data, off)
                    c = new(Credit)
                    set_cconn(c, conn_id)
                    set_cmsgs(c, cm)
                    set_cbytes(c, cb)
                    append(c)
                    off = mend
                    continue
                body = memoryview(data)[off:mend]
                off = mend
                if mtype == _HELLO:
                    # §3.1: may reset the per-peer state (a restart)
                    if self._rx_hello(conn_id, aux, body, out, *header, merged):
                        restarted = True
                        merged = 0
                    continue
                self._decode(mtype, conn_id, aux, body, out)
                continue
            body = memoryview(data)[off:mend]
            off = mend
            self.stats.fragments_in += 1
            try:
                whole = self._reasm.feed(conn_id, mtype, mflags, aux, total, body)
            except ProtocolError as exc:
                self._drop(exc.reason)
                continue
            if whole is not None:
                wtype, waux, wbody = whole
                if wtype == _DATA:
                    if waux > len(wbody):
                        self._drop("bad_body")
                    else:
                        out.append(make_data(conn_id, bytes(wbody), waux))
                else:
                    self._decode(wtype, conn_id, waux, memoryview(wbody), out)
        return merged, restarted

    def _decode(
        self, mtype: int, conn_id: int, aux: int, body: memoryview, out: list[Message]
    ) -> None:
        try:
            msg = decode_body(mtype, conn_id, aux, body)
        except ProtocolError as exc:
            self._drop(exc.reason)
            return
        if mtype == _KEEPALIVE:
            return
        if isinstance(msg, Hello):
            self._drop("fragmented_hello")  # a HELLO never needs fragments
            return
        out.append(msg)

    def _rx_hello(
        self,
        conn_id: int,
        aux: int,
        body: memoryview,
        out: list[Message],
        consumed: int,
        seq: int,
        credit: int,
        ack: int,
        anomaly: str | None,
        merged: int = 0,
    ) -> bool:
        """A HELLO in a frame (§3.1); True when it reset the per-peer state.

        ``consumed`` is the number of frames this link took from the backend
        before this one; ``seq, credit, ack, anomaly`` are this frame's header
        and what the credit state said about it; ``out`` holds ``len(out) +
        merged`` messages (``merged``: payloads that joined a run).
        """
        try:
            msg = decode_body(_HELLO, conn_id, aux, body)
        except ProtocolError as exc:
            self._drop(exc.reason)
            return False
        assert isinstance(msg, Hello)
        if msg.protocol_version != PROTOCOL_VERSION:
            self._drop("hello_version")
        # §3.1.5: a window that cannot carry a largest message is no window
        if msg.window_messages < 1 or msg.window_bytes < msg.max_message_size:
            self._drop("bad_hello")
            return False
        new = msg.session != self.peer_session
        restarted = new and self.peer_session != 0
        if restarted:
            # §3.1.4: the peer restarted: forget it, start over from this frame
            self._reset_peer(consumed, seq, credit, ack, anomaly)
            if out:
                self._drop("stale_after_restart", len(out) + merged)
                out.clear()
            self.stats.peer_restarts += 1
        if new:
            self.peer_session = msg.session
            self.peer_hello = msg
            self._acked = False
            # §2.2: never send the peer more than it accepts
            self._max_send = min(self.config.max_message_size, msg.max_message_size)
        if msg.peer_session == self.session:
            self._acked = True
        if new or msg.peer_session != self.session:
            self._queue_hello()  # §3.1.2: answer (it acknowledges the peer's session)
        if new and self.on_peer_hello is not None:
            self.on_peer_hello(msg, restarted)
        return restarted

    def _undrop(self, reason: str) -> None:
        n = self._dropped.get(reason, 0) - 1
        if n > 0:
            self._dropped[reason] = n
        else:
            self._dropped.pop(reason, None)

    def _reset_peer(
        self, consumed: int, seq: int, credit: int, ack: int, anomaly: str | None
    ) -> None:
        """Forget everything about the old peer incarnation (§3.1.4)."""
        cfg = self.config
        if anomaly is not None:
            # the old credit state judged the new peer's first frame: not an anomaly
            self._undrop(anomaly)
        # our receive buffers the old peer's frames used are free again (released
        # right after parsing): advertise from here on, as a fresh end would
        self._posted_base = self.backend.statistics().rx_frames - (self.stats.frames_in - consumed)
        self.credit = lc = LinkCredit(
            reserve=cfg.credit_reserve,
            initial_peer_credit=cfg.initial_peer_credit,
            update_threshold=cfg.credit_update_threshold,
        )
        lc.frames_rx = seq  # the new peer's first frame: no gap
        lc.on_frame(seq, credit, ack, False)
        self._reasm.reset()
        self._queue.clear()
        self._head_sent = 0
        self._queued_bytes = 0
        self._backlog.clear()

    # -- time --------------------------------------------------------------
    def tick(self, now: float) -> None:
        """Keepalive and liveness (§3.2): queue KEEPALIVE when idle; detect a lost peer.

        Receive activity is recorded by ``poll(now=...)`` (or :meth:`note_rx`):
        pass ``now`` to ``poll`` whenever ``tick`` is used.
        """
        # §3.2: lost while silent; frames coming again (the same peer) end it
        self.peer_lost = now - self._last_rx > self.config.peer_timeout
        if (
            not self.established
            and now - self._last_hello >= self.config.hello_interval
            and not self._queue
        ):
            self._queue_hello()  # §3.1.1: until established
            self._last_hello = now
            self._last_tx = now
        elif now - self._last_tx >= self.config.keepalive_interval and not self._queue:
            self.send(Keepalive())
            self.stats.keepalives_out += 1
            self._last_tx = now

    def note_rx(self, now: float) -> None:
        """Record activity seen outside ``poll(now=...)``."""
        self._last_rx = now

    # -- misc --------------------------------------------------------------
    def fileno(self) -> int:
        return self.backend.fileno()

    def statistics(self) -> LinkStats:
        self.stats.backend = self.backend.statistics()
        return self.stats

    def close(self) -> None:
        """Stop using the backend (the caller owns and closes it)."""
        self.closed = True


class AsyncLink:
    """asyncio adapter: reader callback on ``fileno``, flush scheduled with ``call_soon``.

    A lone ``send`` is flushed on the next loop iteration (no timer, no added
    latency); many sends in one iteration share frames. ``await drain()``
    waits while the link is not ``writable`` (credit exhausted); messages go
    to ``on_messages(list)`` if given, else to ``await recv()``.
    """

    def __init__(
        self,
        link: Link,
        *,
        on_messages: Callable[[list[Message]], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_frames: int = 64,
    ) -> None:
        self.link = link
        self._loop = asyncio.get_running_loop()
        self._on_messages = on_messages
        self._clock = clock
        self._max_frames = max_frames
        self._inbox: deque[Message] = deque()
        self._inbox_ready = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        # _writable was cleared (a send pushed the queue over max_queued_bytes)
        # and not set again by a flush since: flushes check this bool only
        self._blocked = False
        self._flush_scheduled = False
        self._closed = False
        self._max_queued = link.config.max_queued_bytes
        # AsyncLink._on_readable in one C call (xport._linkfast.Waker) for an
        # accelerated Link; _on_readable is the reference and the fallback
        reader: Callable[[], None] = self._on_readable
        if (_Waker is not None and link.accelerated and type(link) is Link
                and type(self)._on_readable is AsyncLink._on_readable):  # fmt: skip
            reader = _Waker(self, _MONOTONIC)
        self._reader = reader
        self._loop.add_reader(link.fileno(), reader)
        self._timer = self._loop.call_later(self._timer_interval(), self._on_timer)
        self._schedule_flush()

    def set_on_messages(self, on_messages: Callable[[list[Message]], None] | None) -> None:
        """Hand received batches to ``on_messages(list)`` from now on (None:
        to ``await recv()``)."""
        self._on_messages = on_messages

    def _timer_interval(self) -> float:
        cfg = self.link.config
        if self.link.established:
            return cfg.keepalive_interval / 2
        return min(cfg.keepalive_interval / 2, cfg.hello_interval)  # §3.1.1 resends

    def send(self, msg: Message) -> None:
        self.link.send(msg)
        self._after_send()

    def send_data(
        self, conn_id: int, payload: bytes | bytearray | memoryview, header_length: int = 0
    ) -> None:
        self.link.send_data(conn_id, payload, header_length)
        self._after_send()

    def try_send_data(
        self, conn_id: int, payload: bytes | bytearray | memoryview, header_length: int = 0
    ) -> bool:
        """``send_data`` unless the link pushes back (not ``writable``): then
        queue nothing and return False (the caller waits with ``drain()``)."""
        link = self.link
        queued = link._queued_bytes
        if self._closed or queued > self._max_queued:
            return False
        n = len(payload)
        if header_length > n or n > link._max_send:
            raise ValueError(f"DATA of {n} bytes (header {header_length}) > max {link._max_send}")
        link._queue.append((_DATA, conn_id, header_length, payload))  # Link.send_data
        self._queued(queued + n)
        return True

    def try_send_many(
        self, conn_id: int, payloads: Sequence[bytes | bytearray | memoryview], nbytes: int = -1
    ) -> int:
        """``try_send_data(conn_id, p)`` for each of ``payloads`` (DATA without
        a ULP header, in order) with one backpressure check: queue them all and
        return ``len(payloads)``, or queue nothing and return 0 when the link
        pushes back. (Like one ``try_send_data``, it may leave the queue above
        ``max_queued_bytes`` by what it added: bounded by the caller's window.)
        ``nbytes``: their total length if the caller knows it (-1: computed)."""
        link = self.link
        queued = link._queued_bytes
        if self._closed or queued > self._max_queued:
            return 0
        nb = sum(map(len, payloads)) if nbytes < 0 else nbytes
        mx = link._max_send
        if nb > mx and max(map(len, payloads)) > mx:
            raise ValueError(f"DATA of {max(map(len, payloads))} bytes > max {mx}")
        # Link.send_data's entries, built in C (zip; repeat iterators never end)
        link._queue.extend(zip(_REPEAT_DATA, repeat(conn_id), _REPEAT_0, payloads))
        self._queued(queued + nb)
        return len(payloads)

    def try_send_runs(
        self,
        runs: Sequence[tuple[int, Sequence[bytes | bytearray | memoryview]]],
        credits: Sequence[tuple[int, int, int]],
        nbytes: int,
    ) -> bool:
        """Many ``try_send_many`` and ``try_send_credit`` calls with one
        backpressure check, for a sender that batches a whole receive batch's
        output (mux_rpc's run engine): ``runs`` are ``(conn_id, payloads)``
        (DATA without a ULP header), ``credits`` are ``(conn_id, messages,
        bytes)``; ``nbytes`` is the payloads' total length (the caller counted
        it). Queue all of them - every run's DATA in order, then the CREDITs -
        and return True, or queue nothing and return False when the link
        pushes back. Like ``try_send_many`` it may leave the queue above
        ``max_queued_bytes`` by what it added (bounded by the callers'
        windows). Payload sizes are the caller's contract (each within the
        peer's maximum message size): they are not checked here."""
        link = self.link
        queued = link._queued_bytes
        if self._closed or queued > self._max_queued:
            return False
        # C: every entry built and queued in one call, as the loop below does
        # (False: inputs it leaves to the loop, nothing queued)
        if not (link.accelerated and _queue_runs is not None
                and _queue_runs(link._queue, runs, credits)):  # fmt: skip
            extend = link._queue.extend
            for conn_id, payloads in runs:
                extend(zip(_REPEAT_DATA, repeat(conn_id), _REPEAT_0, payloads))
            if credits:
                pack = _CREDIT_BODY.pack
                extend([(_CREDIT, c, 0, pack(m, b)) for c, m, b in credits])
        # self._queued(queued), inline (once per wake-up)
        queued += nbytes + 8 * len(credits)
        link._queued_bytes = queued
        if queued > self._max_queued:
            self._writable.clear()
            self._blocked = True
        if not self._flush_scheduled:
            self._schedule_flush()
        return True

    def run_sender(self) -> Callable[[Any, Any, int], bool]:
        """``try_send_runs`` as a callable for a sender that calls it once per
        received batch (mux_rpc's run engine): in C (``xport._linkfast.RunSender``:
        the same steps, no Python frame) for an accelerated Link, else the
        method itself."""
        if (_RunSender is not None and self.link.accelerated and type(self.link) is Link
                and type(self).try_send_runs is AsyncLink.try_send_runs):  # fmt: skip
            return _RunSender(self)  # type: ignore[no-any-return]
        return self.try_send_runs

    def _queued(self, queued: int) -> None:
        # after try_send_*: the link's new queue length, backpressure, one flush
        self.link._queued_bytes = queued
        if queued > self._max_queued:
            self._writable.clear()
            self._blocked = True
        if not self._flush_scheduled:
            self._schedule_flush()

    def try_send_credit(self, conn_id: int, messages: int, nbytes: int) -> bool:
        """``send(Credit(conn_id, messages, nbytes))`` without the dataclass,
        unless the link pushes back (then False, nothing queued)."""
        link = self.link
        if self._closed or link._queued_bytes > self._max_queued:
            return False
        link._queue.append((_CREDIT, conn_id, 0, _CREDIT_BODY.pack(messages, nbytes)))
        self._queued(link._queued_bytes + 8)
        return True

    def _after_send(self) -> None:
        if not self.link.writable:
            self._writable.clear()
            self._blocked = True
        if not self._flush_scheduled:
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        self._flush_scheduled = True
        self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._closed:
            return
        link = self.link
        link.flush(self._clock())
        if self._blocked and link._queued_bytes <= self._max_queued:
            self._blocked = False
            self._writable.set()

    async def drain(self) -> None:
        """Wait until the link accepts more (backpressure); raise if the peer is lost."""
        while not self._writable.is_set():
            if self.link.peer_lost:
                raise LinkLostError("peer lost")
            await self._writable.wait()

    async def recv(self) -> Message:
        """The next received message (when no ``on_messages`` callback is set)."""
        while not self._inbox:
            if self.link.peer_lost:
                raise LinkLostError("peer lost")
            self._inbox_ready.clear()
            await self._inbox_ready.wait()
        return self._inbox.popleft()

    def _on_readable(self) -> None:
        now = self._clock()
        link = self.link
        msgs = link.poll(self._max_frames, now)
        if msgs and self._on_messages is not None:
            # what the callback sends at once (replies) goes out with the flush
            # below, in the same frames, instead of one more loop iteration later
            scheduled = self._flush_scheduled
            self._flush_scheduled = True
            try:
                self._on_messages(msgs)
            finally:
                self._flush_scheduled = scheduled
            msgs = []
        # new credit may have arrived, or our posted buffers grew: flush now
        link.flush(now)
        if self._blocked and link._queued_bytes <= self._max_queued:
            self._blocked = False
            self._writable.set()
        if msgs:
            self._inbox.extend(msgs)
            self._inbox_ready.set()

    def _on_timer(self) -> None:
        if self._closed:
            return
        now = self._clock()
        self.link.tick(now)
        if self.link.peer_lost:
            self._inbox_ready.set()
            self._writable.set()
        self._schedule_flush()
        self._timer = self._loop.call_later(self._timer_interval(), self._on_timer)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._timer.cancel()
        self._loop.remove_reader(self.link.fileno())
        self.link.close()
