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

import struct
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
    _c_maker,
    _new,
    _setter,
    _speedups,
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
        self._strict_map_key = bool(strict_map_key)
        self._fast = _speedups is not None
        """Use the C accelerator (tests turn it off to compare the two paths)."""
        self._unpacker: Any = None  # C path: only while a value is pending
        self._rescans = 0
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
        try:
            if self._fast:
                self._feed_scan(data)
            else:
                self._feed_unpacker(data)
        except FramingError as exc:
            self._fail(exc)

    # -- with the C accelerator: value boundaries by scanning, then unpackb -------

    def _feed_scan(self, data: bytes) -> None:
        """Whole values of ``data`` are found by ``_speedups.mp_scan`` (which
        walks msgpack headers without decoding them, checks each value against
        ``max_message_size`` and stops at byte 0xc1); ``_speedups.mp_batch``
        slices out each one's ``raw`` (one copy), decodes it (its own decoder
        for nil/bool/int/float/str/bin/array/map, ``msgpack.unpackb`` for
        anything else and for every error) and builds the message. A value
        left incomplete at the end of a chunk is kept in ``self._buf`` until
        the bytes the scan says it needs at least (``self._need``) are there;
        then only the bytes of that value are joined and scanned again. A value
        still incomplete after two such tries goes to a fresh
        ``msgpack.Unpacker``, which resumes where it stopped (linear whatever
        the chunking)."""
        pos = 0
        if self._unpacker is not None:
            pos = self._feed_pending(data)
        elif self._buf:
            pos = self._complete_pending(data)
        n = len(data)
        limit = self.max_message_size
        while pos < n:
            ends, stop, status, need = _mp_scan(data, pos, limit)
            if ends:
                self._decode(data, pos, ends)
            if status == 0:
                return
            if status == 1:  # incomplete value at stop: wait for `need` bytes
                self._buf += memoryview(data)[stop:]
                self._need = need
                self._rescans = 0
                return
            self._scan_error(status, stop, need)

    def _scan_error(self, status: int, stop: int, need: int) -> None:
        if status == 2:
            raise BadMsgpack(f"invalid msgpack: byte 0xc1 in the value at chunk byte {stop}")
        raise FrameTooLong(
            f"msgpack value of at least {need} bytes exceeds {self.max_message_size}"
        )

    def _complete_pending(self, data: bytes) -> int:
        """Add ``data`` to the incomplete value in ``self._buf``; return how
        much of ``data`` it took (``len(data)`` while still incomplete)."""
        pend = self._buf
        limit = self.max_message_size
        while True:
            if len(pend) + len(data) < self._need:
                pend += data
                return len(data)
            if self._rescans >= 2:  # arrives in small pieces: let the Unpacker resume it
                self._unpacker = msgpack.Unpacker(
                    raw=False,
                    max_buffer_size=limit,
                    read_size=min(limit, _READ_SIZE),
                    strict_map_key=self._strict_map_key,
                )
                self._unpacker.feed(pend)
                return self._feed_pending(data)
            held = len(pend)
            piece = b"".join((pend, memoryview(data)[: self._need - held]))
            ends, stop, status, need = _mp_scan(piece, 0, limit)
            if ends:  # one value, ending at len(piece): `need` is a lower bound
                pend.clear()
                self._decode(piece, 0, ends)
                return len(piece) - held
            if status != 1:
                self._scan_error(status, stop, need)
            self._need = need
            self._rescans += 1

    def _decode(self, data: bytes, prev: int, ends: bytes) -> None:
        """Messages from the values ``data[prev:e0]``, ``data[e0:e1]``...
        (``ends``: their end offsets from ``mp_scan``). ``mp_batch`` slices out
        each value's ``raw`` and decodes it (its own decoder for the common
        types, ``msgpack.unpackb`` for anything else, e.g. ext types, and for
        every error) while the values are well-formed messages."""
        try:
            i = _mp_batch(
                data, ends, 0, prev, msgpack.unpackb, self._strict_map_key, _KWNAMES, self._out,
                *_makers,
            )  # fmt: skip
        except Exception as exc:  # any decode failure of untrusted bytes
            raise BadMsgpack(f"invalid msgpack: {type(exc).__name__}: {exc}") from exc
        if i * _SSIZE < len(ends):
            self._decode_rest(data, prev, ends, i)

    def _decode_rest(self, data: bytes, prev: int, ends: bytes, i: int) -> None:
        """From the first value ``mp_batch`` did not take: checked (and
        reported) by ``_to_message``, then ``mp_batch`` again."""
        out = self._out
        ev = memoryview(ends).cast("n")  # type: ignore[call-overload]
        count = len(ev)
        unpackb = msgpack.unpackb
        kwv = self._strict_map_key
        req, resp, notif = _makers
        while i < count:
            try:
                if i:
                    prev = ev[i - 1]
                end = ev[i]
                raw = data[prev:end]
                obj = unpackb(raw, strict_map_key=kwv)
                out.append(_to_message(obj, raw))
                i = _mp_batch(data, ends, i + 1, end, unpackb, kwv, _KWNAMES, out, req, resp, notif)
            except FramingError:
                raise
            except Exception as exc:  # any decode failure of untrusted bytes
                raise BadMsgpack(f"invalid msgpack: {type(exc).__name__}: {exc}") from exc

    def _feed_pending(self, data: bytes) -> int:
        """Feed the Unpacker holding an incomplete value (``self._buf`` holds
        its bytes so far); return how much of ``data`` it took: all of it while
        the value is still incomplete, else up to the value's end."""
        unp = self._unpacker
        pend = self._buf
        limit = self.max_message_size
        n = len(data)
        pos = 0
        while pos < n:
            room = limit - len(pend)
            if room <= 0:
                raise FrameTooLong(f"msgpack value longer than {limit} bytes (still incomplete)")
            chunk = data if (pos == 0 and room >= n) else data[pos : pos + room]
            try:
                unp.feed(chunk)
                obj = unp.unpack()
            except msgpack.OutOfData:
                pend += chunk
                pos += len(chunk)
                continue
            except msgpack.BufferFull as exc:  # pragma: no cover - room is computed
                raise FrameTooLong(f"msgpack value longer than {limit} bytes") from exc
            except Exception as exc:  # any decode failure of untrusted bytes
                raise BadMsgpack(f"invalid msgpack: {type(exc).__name__}: {exc}") from exc
            take = int(unp.tell()) - len(pend)  # bytes of chunk in the value
            raw = b"".join((pend, memoryview(chunk)[:take]))
            pend.clear()
            self._unpacker = None
            self._out.append(_to_message(obj, raw))
            return pos + take
        return n

    # -- pure Python: one Unpacker over the stream, raw bytes via tell() ----------

    def _feed_unpacker(self, data: bytes) -> None:
        if self._unpacker is None:
            self._unpacker = msgpack.Unpacker(
                raw=False,
                max_buffer_size=self.max_message_size,
                strict_map_key=self._strict_map_key,
            )
        n = len(data)
        pos = 0
        limit = self.max_message_size
        while pos < n:
            room = limit - len(self._buf)
            if room <= 0:
                raise FrameTooLong(f"msgpack value longer than {limit} bytes (still incomplete)")
            chunk = data if (pos == 0 and room >= n) else data[pos : pos + room]
            try:
                self._unpacker.feed(chunk)
            except msgpack.BufferFull as exc:  # pragma: no cover - room is computed
                raise FrameTooLong(f"msgpack value longer than {limit} bytes") from exc
            pos += len(chunk)
            self._drain_unpacker(chunk)

    def _drain_unpacker(self, chunk: bytes) -> None:
        """Take every value the Unpacker can complete. ``self._buf`` holds the
        bytes fed before ``chunk`` that did not complete a value (stream offset
        ``self._base``); only the first value can straddle them and ``chunk``,
        later ones are sliced straight out of ``chunk``."""
        unp = self._unpacker
        pend = self._buf
        plen = len(pend)
        base = self._base
        objs: list[Any] = []
        ends: list[int] = []  # stream offset after each value
        add_obj = objs.append
        add_end = ends.append
        tell = unp.tell
        cause: Exception | None = None
        try:
            for obj in unp:
                add_obj(obj)
                add_end(tell())
        except Exception as exc:  # noqa: BLE001 - raised below, after the values before it
            cause = exc
        count = len(objs)
        try:
            if count:
                out = self._out
                dstart = base + plen  # stream offset of chunk[0]
                prev = base  # stream offset where the next value starts
                i = 0
                if plen:  # the first value began in an earlier chunk
                    prev = ends[0]
                    raw = b"".join((pend, memoryview(chunk)[: prev - dstart]))  # one copy
                    out.append(_to_message(objs[0], raw))
                    i = 1
                while True:
                    # well-formed requests, responses, notifications in one go
                    i = _rpc_batch(objs, ends, chunk, dstart, prev, i, out)
                    if i >= count:
                        break
                    # anything else: checked (and reported) by _to_message
                    if i:
                        prev = ends[i - 1]
                    end = ends[i]
                    out.append(_to_message(objs[i], chunk[prev - dstart : end - dstart]))
                    prev = end
                    i += 1
        finally:
            if count:
                start = ends[-1] - base  # relative to pend[0]
                pend.clear()
                if start < plen + len(chunk):
                    pend += memoryview(chunk)[start - plen :]
                self._base = ends[-1]
            else:
                pend += chunk
        if cause is not None:
            raise BadMsgpack(f"invalid msgpack: {type(cause).__name__}: {cause}") from cause

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


_set_request = tuple(_setter(RpcRequest, name) for name in RpcRequest.__slots__)
_set_response = tuple(_setter(RpcResponse, name) for name in RpcResponse.__slots__)
_set_notification = tuple(_setter(RpcNotification, name) for name in RpcNotification.__slots__)


def _py_rpc_batch(
    objs: list[Any],
    ends: Any,
    data: bytes,
    start: int,
    prev: int,
    i: int,
    out: list[Any],
) -> int:
    """Build messages from ``objs[i:]`` while each is a well-formed request,
    response or notification; return the index of the first that is not (or
    ``len(objs)``). ``ends`` are the stream offsets after each value, ``data``
    starts at stream offset ``start``, ``objs[i]`` at ``prev``: each message's
    ``raw`` is its slice of ``data``. The pure-Python twin of the C
    ``framing._speedups.rpc_batch`` (the tests compare them)."""
    new = _new
    rq_id, rq_method, rq_params, rq_raw = _set_request
    rs_id, rs_error, rs_result, rs_raw = _set_response
    nt_method, nt_params, nt_raw = _set_notification
    count = len(objs)
    prev -= start
    while i < count:
        obj = objs[i]
        if type(obj) is not list:
            break
        n = len(obj)
        kind = obj[0] if n else None
        if type(kind) is not int:
            break
        if n == 4 and kind == REQUEST:
            msgid, method, params = obj[1], obj[2], obj[3]
            if not (
                type(msgid) is int
                and 0 <= msgid <= _MSGID_MAX
                and type(method) is str
                and type(params) is list
            ):
                break
            end = ends[i] - start
            msg: RpcMessage = new(RpcRequest)
            rq_id(msg, msgid)
            rq_method(msg, method)
            rq_params(msg, params)
            rq_raw(msg, data[prev:end])
        elif n == 4 and kind == RESPONSE:
            msgid = obj[1]
            if not (type(msgid) is int and 0 <= msgid <= _MSGID_MAX):
                break
            end = ends[i] - start
            msg = new(RpcResponse)
            rs_id(msg, msgid)
            rs_error(msg, obj[2])
            rs_result(msg, obj[3])
            rs_raw(msg, data[prev:end])
        elif n == 3 and kind == NOTIFICATION:
            method, params = obj[1], obj[2]
            if not (type(method) is str and type(params) is list):
                break
            end = ends[i] - start
            msg = new(RpcNotification)
            nt_method(msg, method)
            nt_params(msg, params)
            nt_raw(msg, data[prev:end])
        else:
            break
        out.append(msg)
        prev = end
        i += 1
    return i


_KWNAMES = ("strict_map_key",)
_SSIZE = struct.calcsize("n")  # bytes per offset in mp_scan's ends
_READ_SIZE = 16 * 1024  # an Unpacker's first buffer (it grows up to max_buffer_size)

if _speedups is not None:
    _c_rpc_batch = _speedups.rpc_batch
    _mp_scan = _speedups.mp_scan
    _mp_batch = _speedups.mp_batch
    _makers = (_c_maker(RpcRequest), _c_maker(RpcResponse), _c_maker(RpcNotification))

    def _rpc_batch(
        objs: list[Any], ends: Any, data: bytes, start: int, prev: int, i: int, out: list[Any]
    ) -> int:
        return int(_c_rpc_batch(objs, ends, data, start, prev, i, out, *_makers))

else:
    _rpc_batch = _py_rpc_batch
