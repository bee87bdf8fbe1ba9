"""msgpack-rpc stream framing (msgpack-rpc specification,
https://github.com/msgpack-rpc/msgpack-rpc/blob/master/spec.md).

Theory of operation
-------------------
The stream is a sequence of msgpack values with no other framing. Each value
must be one of (spec, "Messages"):

* request ``[type=0, msgid, method, params]`` (spec "Request Message"),
* response ``[type=1, msgid, error, result]`` (spec "Response Message"),
* notification ``[type=2, method, params]`` (spec "Notification Message"),

with ``msgid`` a 32-bit unsigned integer, ``method`` a string and ``params`` an
array. Anything else is :class:`~framing.BadRpcMessage`; bytes that are not
msgpack are :class:`~framing.BadMsgpack`.

Bytes are fed to a ``msgpack.Unpacker`` whose ``max_buffer_size`` is
``max_message_size`` (its derived limits ``max_str_len``, ``max_bin_len``,
``max_array_len``, ``max_map_len`` and ``max_ext_len`` bound every object
inside a value). Input is fed in slices no larger than the room left, so a
large chunk of many small values is fine, while a single value that cannot
complete within ``max_message_size`` bytes fails with
:class:`~framing.FrameTooLong`.

Raw bytes: ``Unpacker.tell()`` after each value gives its end offset in the
stream, so every message carries the exact bytes it arrived as (``raw``), to be
forwarded without re-encoding. The framer keeps only the bytes of the value in
progress (a ``bytearray``, appended to, so one byte at a time stays linear);
only the first value completed by a chunk can straddle those and the chunk, all
others are sliced straight out of the chunk (one copy each).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import msgpack

from ._base import Framer, parse_spec_value
from ._errors import (
    BadFramerSpec,
    BadMsgpack,
    BadRpcMessage,
    EncodeError,
    FramerClosed,
    FramerConfigError,
    FrameTooLong,
    FramingError,
)
from ._messages import (
    RpcMessage,
    RpcNotification,
    RpcRequest,
    RpcResponse,
    _new,
    _set_notification,
    _set_request,
    _set_response,
)

__all__ = ["MsgpackRpcFramer"]

REQUEST, RESPONSE, NOTIFICATION = 0, 1, 2
_MSGID_MAX = 0xFFFFFFFF


class MsgpackRpcFramer(Framer[RpcMessage]):
    """msgpack-rpc values in, :class:`RpcRequest` / :class:`RpcResponse` /
    :class:`RpcNotification` (with their raw bytes) out.

    ``max_message_size`` bounds one encoded value (it is the Unpacker's
    ``max_buffer_size``).
    """

    name: ClassVar[str] = "msgpack-rpc"

    def __init__(
        self,
        *,
        max_message_size: int = 1 << 20,
        strict_map_key: bool = False,
        max_depth: int | None = None,
    ) -> None:
        """``strict_map_key``: as msgpack's (only str/bytes map keys).
        ``max_depth`` is accepted for forward compatibility and must be None."""
        super().__init__(max_message_size=max_message_size)
        if max_depth is not None:
            raise FramerConfigError("max_depth is not supported by msgpack.Unpacker")
        self._strict_map_key = strict_map_key
        self._unpacker = msgpack.Unpacker(
            raw=False, max_buffer_size=max_message_size, strict_map_key=strict_map_key
        )
        self._base = 0  # stream offset of self._buf[0]
        self._packer = msgpack.Packer(use_bin_type=True)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._error is not None:
            raise self._error
        if self._eof:
            raise FramerClosed("feed() after feed_eof()")
        n = len(data)
        if not n:
            return
        if type(data) is not bytes:
            data = bytes(data)
        pos = 0
        limit = self.max_message_size
        try:
            while pos < n:
                room = limit - len(self._buf)
                if room <= 0:
                    raise FrameTooLong(
                        f"msgpack value longer than {limit} bytes (still incomplete)"
                    )
                chunk = data if (pos == 0 and room >= n) else data[pos : pos + room]
                try:
                    self._unpacker.feed(chunk)
                except msgpack.BufferFull as exc:  # pragma: no cover - room is computed
                    raise FrameTooLong(f"msgpack value longer than {limit} bytes") from exc
                pos += len(chunk)
                self._drain_unpacker(chunk)
        except FramingError as exc:
            self._fail(exc)

    def _drain_unpacker(self, chunk: bytes) -> None:
        """Take every value the Unpacker can complete. ``self._buf`` holds the
        bytes fed before ``chunk`` that did not complete a value (stream offset
        ``self._base``); only the first value can straddle them and ``chunk``,
        later ones are sliced straight out of ``chunk``."""
        unp = self._unpacker
        pend = self._buf
        plen = len(pend)
        base = self._base
        out = self._out.append
        start = 0  # relative to pend[0]
        tell = unp.tell
        new = _new
        rq_id, rq_method, rq_params, rq_raw = _set_request
        rs_id, rs_error, rs_result, rs_raw = _set_response
        try:
            for obj in unp:
                end = tell() - base
                if start >= plen:
                    raw = chunk[start - plen : end - plen]
                else:
                    raw = bytes(pend[start:]) + chunk[: end - plen]
                start = end
                # Fast path for well-formed requests and responses (the checks
                # of _to_message, inlined); everything else goes through it.
                if (
                    type(obj) is list
                    and len(obj) == 4
                    and type(obj[1]) is int
                    and 0 <= obj[1] <= _MSGID_MAX
                ):
                    kind = obj[0]
                    if (
                        kind == REQUEST
                        and type(kind) is int
                        and type(obj[2]) is str
                        and type(obj[3]) is list
                    ):
                        req = new(RpcRequest)
                        rq_id(req, obj[1])
                        rq_method(req, obj[2])
                        rq_params(req, obj[3])
                        rq_raw(req, raw)
                        out(req)
                        continue
                    if kind == RESPONSE and type(kind) is int:
                        resp = new(RpcResponse)
                        rs_id(resp, obj[1])
                        rs_error(resp, obj[2])
                        rs_result(resp, obj[3])
                        rs_raw(resp, raw)
                        out(resp)
                        continue
                out(_to_message(obj, raw))
        except FramingError:
            raise
        except Exception as exc:  # any decode failure of untrusted bytes
            raise BadMsgpack(f"invalid msgpack: {type(exc).__name__}: {exc}") from exc
        finally:
            if start:
                pend.clear()
                if start < plen + len(chunk):
                    pend += memoryview(chunk)[start - plen :]
                self._base = base + start
            else:
                pend += chunk

    def _parse(self, data: bytes) -> int:  # pragma: no cover - feed is overridden
        raise NotImplementedError

    def _fail(self, exc: FramingError) -> None:
        super()._fail(exc)
        self._unpacker = msgpack.Unpacker(max_buffer_size=1)

    def encode(self, message: RpcMessage) -> bytes:
        """Pack the message's fields (``raw`` is ignored; see :meth:`message_bytes`)."""
        m = message
        try:
            if type(m) is RpcRequest:
                _check_request(m.msgid, m.method, m.params)
                value: list[Any] = [REQUEST, m.msgid, m.method, m.params]
            elif type(m) is RpcResponse:
                _check_msgid(m.msgid)
                value = [RESPONSE, m.msgid, m.error, m.result]
            elif type(m) is RpcNotification:
                if type(m.method) is not str or type(m.params) is not list:
                    raise BadRpcMessage("notification needs a str method and list params")
                value = [NOTIFICATION, m.method, m.params]
            else:
                raise EncodeError(f"not a msgpack-rpc message: {type(m).__name__}")
            wire: bytes = self._packer.pack(value)
        except BadRpcMessage as exc:
            raise EncodeError(str(exc)) from exc
        except (TypeError, ValueError, OverflowError) as exc:
            raise EncodeError(f"cannot pack message: {exc}") from exc
        if len(wire) > self.max_message_size:
            raise EncodeError(
                f"encoded message of {len(wire)} bytes exceeds {self.max_message_size}"
            )
        return wire

    def message_bytes(self, message: RpcMessage) -> bytes:
        """The bytes the message arrived as (``raw``), or ``encode`` for a
        message built locally."""
        return message.raw or self.encode(message)

    def split_parts(self, message: RpcMessage) -> tuple[bytes, bytes]:
        return b"", self.message_bytes(message)

    @classmethod
    def from_spec(cls, params: Mapping[str, str]) -> MsgpackRpcFramer:
        kwargs: dict[str, Any] = {}
        for key, value in params.items():
            v = parse_spec_value(value)
            if key.lower() == "max":
                if not isinstance(v, int) or isinstance(v, bool):
                    raise BadFramerSpec(f"msgpack-rpc: max must be an integer, got {value!r}")
                kwargs["max_message_size"] = v
            elif key.lower() == "strict_map_key":
                kwargs["strict_map_key"] = bool(v)
            else:
                raise BadFramerSpec(
                    f"msgpack-rpc: unknown parameter {key!r} (known: max, strict_map_key)"
                )
        try:
            return cls(**kwargs)
        except FramerConfigError as exc:
            raise BadFramerSpec(f"msgpack-rpc: {exc}") from exc


def _check_msgid(msgid: object) -> None:
    if type(msgid) is not int or not 0 <= msgid <= _MSGID_MAX:
        raise BadRpcMessage(f"msgid must be a uint32, got {msgid!r}")


def _check_request(msgid: object, method: object, params: object) -> None:
    _check_msgid(msgid)
    if type(method) is not str:
        raise BadRpcMessage(f"method must be a string, got {type(method).__name__}")
    if type(params) is not list:
        raise BadRpcMessage(f"params must be an array, got {type(params).__name__}")


def _to_message(obj: Any, raw: bytes) -> RpcMessage:
    """Validate one decoded value (spec "Messages")."""
    if type(obj) is list:
        n = len(obj)
        kind = obj[0] if n else None
        if type(kind) is int:
            if kind == REQUEST and n == 4:
                msgid, method, params = obj[1], obj[2], obj[3]
                if (
                    type(msgid) is int
                    and 0 <= msgid <= _MSGID_MAX
                    and type(method) is str
                    and type(params) is list
                ):
                    return RpcRequest(msgid, method, params, raw)
                _check_request(msgid, method, params)
            elif kind == RESPONSE and n == 4:
                msgid = obj[1]
                if type(msgid) is int and 0 <= msgid <= _MSGID_MAX:
                    return RpcResponse(msgid, obj[2], obj[3], raw)
                _check_msgid(msgid)
            elif kind == NOTIFICATION and n == 3:
                method, params = obj[1], obj[2]
                if type(method) is str and type(params) is list:
                    msg = _new(RpcNotification)
                    set_method, set_params, set_raw = _set_notification
                    set_method(msg, method)
                    set_params(msg, params)
                    set_raw(msg, raw)
                    return msg
                raise BadRpcMessage("notification needs a str method and array params")
            raise BadRpcMessage(f"array of {n} with type {kind} is not a msgpack-rpc message")
        raise BadRpcMessage("message type must be an integer 0, 1 or 2")
    raise BadRpcMessage(f"msgpack-rpc message must be an array, got {type(obj).__name__}")
