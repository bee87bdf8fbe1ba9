"""XDP transport messages: the common header and one frozen dataclass per type.

Theory of operation
-------------------
Every transport message starts with the 16-byte *common header*
(docs/protocol.md §2)::

    version u8 | type u8 | flags u8 | reserved u8 | conn_id u32 |
    length u16 | aux u16 | total u32                      (network byte order)

``length`` is the number of body bytes that follow this header *in this
frame*; ``total`` is the body length of the whole message. A message whose
body fits in one frame is sent with ``FIRST|LAST`` and ``length == total``.
A larger one is split into fragments, each with the same header except
``flags`` (``FIRST`` on the first, ``LAST`` on the last) and ``length``; the
link is lossless and in order, so fragments of one connection arrive back to
back and no offset field is needed (:mod:`xport._reassembly`). ``aux`` is a
small type-specific field (DATA: the ULP header length).

The body is selected by ``type`` (docs/protocol.md §3). Control bodies are
tiny fixed structs followed by length-prefixed (u16) UTF-8 strings. A DATA
body is the ULP message itself, never copied through an intermediate encoding.

Public API (stable; the agent and the host runtime code against it)
-------------------------------------------------------------------
- ``PROTOCOL_VERSION``, ``MessageType``, ``MsgFlags``, ``Role``, ``Status``
- message dataclasses: ``Hello, Keepalive, Listen, ListenResult, Connect,
  Connected, NewConnection, Data, Close, Closed, Credit, Error, Eof``; the union
  ``Message``. Every one has ``conn_id`` (0 for link-wide messages).
- ``COMMON_HEADER`` (``struct.Struct``), ``HEADER_SIZE``
- ``make_data(conn_id, payload, header_length=0) -> Data``: a fast constructor
- ``encode_body(msg) -> (type, aux, body)``: body is bytes or a memoryview
- ``decode_body(type, conn_id, aux, body) -> Message``; raises ``ProtocolError``
- ``encode(msg) -> bytes``: one unfragmented message, header included
- ``encode_into(buf, offset, msg) -> int``: the same, into a preallocated
  buffer; returns the new offset; raises ``ValueError`` if it does not fit
- ``decode(buf, offset=0) -> (Message, next_offset)``: one unfragmented
  message; raises ``ProtocolError`` (with a machine ``reason``)

Errors never escape the link's receive path: the link counts
``ProtocolError.reason`` and drops the message (DESIGN.md "Wire contract").
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Union

__all__ = [
    "COMMON_HEADER",
    "HEADER_SIZE",
    "PROTOCOL_VERSION",
    "Close",
    "Closed",
    "Connect",
    "Connected",
    "Credit",
    "Data",
    "Eof",
    "Error",
    "Hello",
    "Keepalive",
    "Listen",
    "ListenResult",
    "Message",
    "MessageType",
    "MsgFlags",
    "NewConnection",
    "ProtocolError",
    "Role",
    "Status",
    "decode",
    "decode_body",
    "encode",
    "encode_body",
    "encode_into",
    "make_data",
]

#: version of the common header and of every body layout (docs/protocol.md §2)
PROTOCOL_VERSION = 1

# docs/protocol.md §2: the common header, declared once.
_COMMON_FIELDS = (
    ("version", "B"),
    ("type", "B"),
    ("flags", "B"),
    ("reserved", "B"),
    ("conn_id", "I"),
    ("length", "H"),
    ("aux", "H"),
    ("total", "I"),
)
COMMON_HEADER = struct.Struct("!" + "".join(f for _, f in _COMMON_FIELDS))
HEADER_SIZE = COMMON_HEADER.size  # 16

_U16 = struct.Struct("!H")


class MessageType(enum.IntEnum):
    """docs/protocol.md §3: the body selected by the header's ``type``."""

    HELLO = 1
    KEEPALIVE = 2
    LISTEN = 3
    LISTEN_RESULT = 4
    CONNECT = 5
    CONNECTED = 6
    NEW_CONNECTION = 7
    DATA = 8
    CLOSE = 9
    CLOSED = 10
    CREDIT = 11
    ERROR = 12
    EOF = 13


class MsgFlags(enum.IntFlag):
    """docs/protocol.md §2: header flags."""

    FIRST = 0x01  #: first fragment of a message
    LAST = 0x02  #: last fragment of a message
    WHOLE = 0x03  #: an unfragmented message


class Role(enum.IntEnum):
    """Who sent a HELLO."""

    AGENT = 1
    HOST = 2


class Status(enum.IntEnum):
    """Status and reason codes in LISTEN_RESULT, CONNECTED, CLOSED and ERROR.

    Values below 1000 are the transport's; framers and the runtime may use
    1000 and above for their own reasons (e.g. a framer's error code).
    """

    OK = 0
    #: the peer closed the TCP connection normally
    PEER_CLOSED = 1
    #: closed on request of the other side (CLOSE)
    LOCAL_CLOSE = 2
    #: the TCP connection was reset or broke
    RESET = 3
    #: connect or bind failed (text carries the OS error)
    OS_ERROR = 4
    #: the framer rejected the byte stream (text carries the framer's reason)
    FRAMING_ERROR = 5
    #: a message exceeded the configured maximum message size
    TOO_LARGE = 6
    #: the sender exceeded its connection credit
    CREDIT_VIOLATION = 7
    #: unknown framer spec, listener id or connection id
    UNKNOWN = 8
    #: TLS handshake or certificate failure
    TLS_ERROR = 9
    #: the link to the peer was lost (keepalive expired)
    LINK_LOST = 10
    #: a malformed transport message
    PROTOCOL_ERROR = 11
    #: anything else
    INTERNAL = 99


class ProtocolError(ValueError):
    """A transport message that cannot be decoded.

    ``reason`` is a short machine name that becomes a drop counter
    (``bad_version``, ``unknown_type``, ``truncated``, ``bad_body``, ...).
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


# --- message dataclasses (docs/protocol.md §3) --------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """The link handshake (§3.1): sent by each end until the peer acknowledges it.

    ``session`` identifies the sender's incarnation (random, non-zero, chosen
    once); ``peer_session`` is the session of the peer's HELLO the sender has
    seen (0: none yet), so a HELLO with ``peer_session`` equal to the
    receiver's session acknowledges the receiver's HELLO. ``window_messages``
    and ``window_bytes`` are the initial per-connection window the sender
    grants its peer (§5).
    """

    role: Role
    keepalive_interval_ms: int = 1000
    max_message_size: int = 1 << 20
    protocol_version: int = PROTOCOL_VERSION
    conn_id: int = 0
    session: int = 1
    peer_session: int = 0
    window_messages: int = 64
    window_bytes: int = 2 << 20


@dataclass(frozen=True, slots=True)
class Keepalive:
    """Sent when the link has been idle for the keepalive interval (§3.2)."""

    conn_id: int = 0


@dataclass(frozen=True, slots=True)
class Listen:
    """Host → agent: listen on a TCP port with a framer (§3.3)."""

    listener_id: int
    bind_address: str
    port: int
    framer: str
    tls: bool = False
    cert_path: str = ""
    key_path: str = ""
    conn_id: int = 0


@dataclass(frozen=True, slots=True)
class ListenResult:
    """Agent → host: the outcome of LISTEN; ``port`` is the bound port (§3.4)."""

    listener_id: int
    status: int = Status.OK
    port: int = 0
    text: str = ""
    conn_id: int = 0


@dataclass(frozen=True, slots=True)
class Connect:
    """Host → agent: open an outgoing TCP connection with id ``conn_id`` (§3.5)."""

    conn_id: int
    host: str
    port: int
    framer: str
    tls: bool = False


@dataclass(frozen=True, slots=True)
class Connected:
    """Agent → host: the outcome of CONNECT (§3.6)."""

    conn_id: int
    status: int = Status.OK
    text: str = ""


@dataclass(frozen=True, slots=True)
class NewConnection:
    """Agent → host: a client connected to a listener (§3.7)."""

    conn_id: int
    listener_id: int
    peer_host: str
    peer_port: int


@dataclass(frozen=True, slots=True)
class Data:
    """One whole ULP message (§3.8).

    ``payload`` is the message; its first ``header_length`` bytes are the ULP
    header (e.g. an NVMe/TCP PDU header), the rest the data: see
    :attr:`header` and :attr:`data`.
    """

    conn_id: int
    payload: bytes | bytearray | memoryview
    header_length: int = 0

    @property
    def header(self) -> memoryview:
        return memoryview(self.payload)[: self.header_length]

    @property
    def data(self) -> memoryview:
        return memoryview(self.payload)[self.header_length :]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Data):
            return NotImplemented
        return (
            self.conn_id == other.conn_id
            and self.header_length == other.header_length
            and bytes(self.payload) == bytes(other.payload)
        )

    def __hash__(self) -> int:
        return hash((self.conn_id, self.header_length, bytes(self.payload)))


@dataclass(frozen=True, slots=True)
class Close:
    """Host → agent: close a connection (``abort``: reset instead of FIN) (§3.9)."""

    conn_id: int
    abort: bool = False


@dataclass(frozen=True, slots=True)
class Closed:
    """Agent → host: a connection is gone, with a reason code and text (§3.10)."""

    conn_id: int
    reason: int = Status.PEER_CLOSED
    text: str = ""


@dataclass(frozen=True, slots=True)
class Credit:
    """Connection-level credit grant: increments, not totals (§3.11, §5)."""

    conn_id: int
    messages: int
    bytes: int


@dataclass(frozen=True, slots=True)
class Error:
    """An error about a connection (or the link, ``conn_id == 0``) (§3.12)."""

    conn_id: int
    code: int
    text: str = ""


@dataclass(frozen=True, slots=True)
class Eof:
    """Agent → host: the client half-closed (TCP FIN) (§3.13).

    No DATA follows on this connection; every DATA the client sent before its
    FIN came first. The connection stays open the other way: the host may
    still send DATA, and ends the connection with CLOSE as usual.
    """

    conn_id: int


_new = object.__new__
_set_conn_id = vars(Data)["conn_id"].__set__
_set_payload = vars(Data)["payload"].__set__
_set_header_length = vars(Data)["header_length"].__set__


def make_data(
    conn_id: int, payload: bytes | bytearray | memoryview, header_length: int = 0
) -> Data:
    """``Data(conn_id, payload, header_length)`` for the receive hot path.

    A frozen dataclass's ``__init__`` costs about three times more than setting
    its three slots directly; the result is an ordinary, equal ``Data``. No
    validation: the caller has checked ``header_length <= len(payload)``.
    """
    d = _new(Data)
    _set_conn_id(d, conn_id)
    _set_payload(d, payload)
    _set_header_length(d, header_length)
    return d


Message = Union[  # noqa: UP007 (a runtime alias the docs can name)
    Hello,
    Keepalive,
    Listen,
    ListenResult,
    Connect,
    Connected,
    NewConnection,
    Data,
    Close,
    Closed,
    Credit,
    Error,
    Eof,
]

# --- bodies, declared once (docs/protocol.md §3) ------------------------------

# protocol_version, role, pad, keepalive_ms, max_msg, session, peer_session, window msgs/bytes
_HELLO = struct.Struct("!HBxIIQQII")
_LISTEN = struct.Struct("!IHBx")  # listener_id, port, flags(TLS=1), pad; + 4 strings
_LISTEN_RESULT = struct.Struct("!IHH")  # listener_id, status, port; + text
_CONNECT = struct.Struct("!HBx")  # port, flags(TLS=1), pad; + host, framer
_STATUS = struct.Struct("!H")  # CONNECTED status / CLOSED reason / ERROR code; + text
_NEW_CONNECTION = struct.Struct("!IH")  # listener_id, peer_port; + peer_host
_CLOSE = struct.Struct("!B")  # flags (ABORT=1)
_CREDIT = struct.Struct("!II")  # messages, bytes

_TLS = 0x01
_ABORT = 0x01
_MAX_STR = 0xFFFF


def _pack_strings(*values: str) -> bytes:
    out = bytearray()
    for v in values:
        raw = v.encode("utf-8")
        if len(raw) > _MAX_STR:
            raise ValueError(f"string field longer than {_MAX_STR} bytes")
        out += _U16.pack(len(raw))
        out += raw
    return bytes(out)


def _unpack_strings(body: memoryview, offset: int, n: int) -> list[str]:
    out = []
    end = len(body)
    for _ in range(n):
        # §3: every string is u16 length + UTF-8; bounds-check before reading
        if offset + 2 > end:
            raise ProtocolError("bad_body", "string length truncated")
        (ln,) = _U16.unpack_from(body, offset)
        offset += 2
        if offset + ln > end:
            raise ProtocolError("bad_body", "string truncated")
        try:
            out.append(str(body[offset : offset + ln], "utf-8"))
        except UnicodeDecodeError as exc:
            raise ProtocolError("bad_body", "string is not UTF-8") from exc
        offset += ln
    if offset != end:
        raise ProtocolError("bad_body", "trailing bytes in body")
    return out


def _fixed(st: struct.Struct, body: memoryview, exact: bool = False) -> tuple[int, ...]:
    if len(body) < st.size or (exact and len(body) != st.size):
        raise ProtocolError("bad_body", f"body of {len(body)} bytes, expected {st.size}")
    return st.unpack_from(body, 0)


def _check_u(value: int, bits: int, name: str) -> None:
    if not 0 <= value < (1 << bits):
        raise ValueError(f"{name}={value} does not fit in u{bits}")


def encode_body(msg: Message) -> tuple[int, int, bytes | bytearray | memoryview]:
    """``(type, aux, body)`` for ``msg``; ``ValueError`` if a field does not fit."""
    if isinstance(msg, Data):
        _check_u(msg.header_length, 16, "header_length")
        if msg.header_length > len(msg.payload):
            raise ValueError("header_length exceeds payload")
        return MessageType.DATA, msg.header_length, msg.payload
    if isinstance(msg, Credit):
        _check_u(msg.messages, 32, "messages")
        _check_u(msg.bytes, 32, "bytes")
        return MessageType.CREDIT, 0, _CREDIT.pack(msg.messages, msg.bytes)
    if isinstance(msg, Keepalive):
        return MessageType.KEEPALIVE, 0, b""
    if isinstance(msg, Hello):
        if msg.session == 0:
            raise ValueError("HELLO session must be non-zero")
        _check_u(msg.session, 64, "session")
        _check_u(msg.peer_session, 64, "peer_session")
        _check_u(msg.window_messages, 32, "window_messages")
        _check_u(msg.window_bytes, 32, "window_bytes")
        return (
            MessageType.HELLO,
            0,
            _HELLO.pack(
                msg.protocol_version,
                int(msg.role),
                msg.keepalive_interval_ms,
                msg.max_message_size,
                msg.session,
                msg.peer_session,
                msg.window_messages,
                msg.window_bytes,
            ),
        )
    if isinstance(msg, Listen):
        return (
            MessageType.LISTEN,
            0,
            _LISTEN.pack(msg.listener_id, msg.port, _TLS if msg.tls else 0)
            + _pack_strings(msg.bind_address, msg.framer, msg.cert_path, msg.key_path),
        )
    if isinstance(msg, ListenResult):
        return (
            MessageType.LISTEN_RESULT,
            0,
            _LISTEN_RESULT.pack(msg.listener_id, int(msg.status), msg.port)
            + _pack_strings(msg.text),
        )
    if isinstance(msg, Connect):
        return (
            MessageType.CONNECT,
            0,
            _CONNECT.pack(msg.port, _TLS if msg.tls else 0) + _pack_strings(msg.host, msg.framer),
        )
    if isinstance(msg, Connected):
        return MessageType.CONNECTED, 0, _STATUS.pack(int(msg.status)) + _pack_strings(msg.text)
    if isinstance(msg, NewConnection):
        return (
            MessageType.NEW_CONNECTION,
            0,
            _NEW_CONNECTION.pack(msg.listener_id, msg.peer_port) + _pack_strings(msg.peer_host),
        )
    if isinstance(msg, Close):
        return MessageType.CLOSE, 0, _CLOSE.pack(_ABORT if msg.abort else 0)
    if isinstance(msg, Closed):
        return MessageType.CLOSED, 0, _STATUS.pack(int(msg.reason)) + _pack_strings(msg.text)
    if isinstance(msg, Error):
        return MessageType.ERROR, 0, _STATUS.pack(int(msg.code)) + _pack_strings(msg.text)
    if isinstance(msg, Eof):
        return MessageType.EOF, 0, b""
    raise TypeError(f"not a transport message: {msg!r}")


def decode_body(mtype: int, conn_id: int, aux: int, body: memoryview) -> Message:
    """The message of ``mtype`` whose (reassembled) body is ``body``.

    DATA keeps a reference to ``body`` (no copy): pass bytes if the buffer is
    reused. Raises :class:`ProtocolError`.
    """
    if mtype == MessageType.DATA:
        # §3.8: the ULP header length cannot exceed the message
        if aux > len(body):
            raise ProtocolError("bad_body", "DATA header_length exceeds payload")
        return make_data(conn_id, body, aux)
    if mtype == MessageType.CREDIT:
        m, b = _fixed(_CREDIT, body, exact=True)
        return Credit(conn_id, m, b)
    if mtype == MessageType.KEEPALIVE:
        return Keepalive(conn_id)
    if mtype == MessageType.HELLO:
        pv, role, ka, mx, sess, peer, wm, wb = _fixed(_HELLO, body)
        try:
            r = Role(role)
        except ValueError as exc:
            raise ProtocolError("bad_body", f"unknown role {role}") from exc
        # §3.1: a session identifies an incarnation; 0 means "none"
        if sess == 0:
            raise ProtocolError("bad_body", "HELLO session 0")
        # §3.1: trailing bytes are allowed in HELLO (later versions may extend it)
        return Hello(r, ka, mx, pv, conn_id, sess, peer, wm, wb)
    if mtype == MessageType.LISTEN:
        lid, port, fl = _fixed(_LISTEN, body)
        bind, framer, cert, key = _unpack_strings(body, _LISTEN.size, 4)
        return Listen(lid, bind, port, framer, bool(fl & _TLS), cert, key, conn_id)
    if mtype == MessageType.LISTEN_RESULT:
        lid, st, port = _fixed(_LISTEN_RESULT, body)
        (text,) = _unpack_strings(body, _LISTEN_RESULT.size, 1)
        return ListenResult(lid, st, port, text, conn_id)
    if mtype == MessageType.CONNECT:
        port, fl = _fixed(_CONNECT, body)
        host, framer = _unpack_strings(body, _CONNECT.size, 2)
        return Connect(conn_id, host, port, framer, bool(fl & _TLS))
    if mtype == MessageType.CONNECTED:
        (st,) = _fixed(_STATUS, body)
        (text,) = _unpack_strings(body, _STATUS.size, 1)
        return Connected(conn_id, st, text)
    if mtype == MessageType.NEW_CONNECTION:
        lid, pport = _fixed(_NEW_CONNECTION, body)
        (host,) = _unpack_strings(body, _NEW_CONNECTION.size, 1)
        return NewConnection(conn_id, lid, host, pport)
    if mtype == MessageType.CLOSE:
        (fl,) = _fixed(_CLOSE, body, exact=True)
        return Close(conn_id, bool(fl & _ABORT))
    if mtype == MessageType.CLOSED:
        (st,) = _fixed(_STATUS, body)
        (text,) = _unpack_strings(body, _STATUS.size, 1)
        return Closed(conn_id, st, text)
    if mtype == MessageType.ERROR:
        (st,) = _fixed(_STATUS, body)
        (text,) = _unpack_strings(body, _STATUS.size, 1)
        return Error(conn_id, st, text)
    if mtype == MessageType.EOF:
        # §3.13: an empty body
        if len(body):
            raise ProtocolError("bad_body", "trailing bytes in body")
        return Eof(conn_id)
    raise ProtocolError("unknown_type", f"type {mtype}")


def encode_into(buf: bytearray | memoryview, offset: int, msg: Message) -> int:
    """Write ``msg`` unfragmented at ``offset``; return the offset after it."""
    mtype, aux, body = encode_body(msg)
    n = len(body)
    _check_u(msg.conn_id, 32, "conn_id")
    if n > 0xFFFF:
        raise ValueError("message body too large for one fragment")
    end = offset + HEADER_SIZE + n
    if end > len(buf):
        raise ValueError("buffer too small")
    COMMON_HEADER.pack_into(
        buf, offset, PROTOCOL_VERSION, mtype, MsgFlags.WHOLE, 0, msg.conn_id, n, aux, n
    )
    buf[offset + HEADER_SIZE : end] = body
    return end


def encode(msg: Message) -> bytes:
    """One unfragmented message, common header included."""
    body = encode_body(msg)[2]
    buf = bytearray(HEADER_SIZE + len(body))
    encode_into(buf, 0, msg)
    return bytes(buf)


def decode(buf: bytes | bytearray | memoryview, offset: int = 0) -> tuple[Message, int]:
    """Decode one unfragmented message at ``offset``; ``(message, next_offset)``.

    DATA payloads are copied to ``bytes`` so the result outlives ``buf``.
    """
    mv = memoryview(buf)
    # §2: bounds-check the header before reading it
    if offset + HEADER_SIZE > len(mv):
        raise ProtocolError("truncated", "common header")
    version, mtype, flags, _r, conn_id, length, aux, total = COMMON_HEADER.unpack_from(mv, offset)
    if version != PROTOCOL_VERSION:
        raise ProtocolError("bad_version", f"version {version}")
    end = offset + HEADER_SIZE + length
    if end > len(mv):
        raise ProtocolError("truncated", "body")
    if flags & MsgFlags.WHOLE != MsgFlags.WHOLE or total != length:
        raise ProtocolError("fragment", "decode() takes whole messages only")
    body = mv[offset + HEADER_SIZE : end]
    if mtype == MessageType.DATA:
        body = memoryview(bytes(body))
    return decode_body(mtype, conn_id, aux, body), end
