"""The pure msgpack-rpc dispatch core: message in, reply bytes out. No I/O.

Theory of operation
-------------------
Each incoming message is one msgpack value (the agent's framer, or the direct
server's ``msgpack.Unpacker``, delimits it). :meth:`Dispatcher.dispatch_obj`
validates it against the msgpack-rpc spec
(https://github.com/msgpack-rpc/msgpack-rpc/blob/master/spec.md):

* request ``[0, msgid, method, params]`` → response ``[1, msgid, error, result]``
* notification ``[2, method, params]`` → no response, ever.

and returns one of three things:

* ``bytes`` — the encoded response, ready now (plain-function handlers run
  inline; unknown method / bad argument count / handler exception replies
  are also immediate);
* :class:`PendingCall` — an ``async`` handler's coroutine, not started. The
  asyncio shell runs it (concurrently, under limits and deadlines) and turns
  the outcome into bytes with :meth:`Dispatcher.complete` or
  :meth:`Dispatcher.fail`. Responses carry their msgid, so they may be sent in
  any order;
* ``None`` — nothing to send (a notification that ran inline).

A value that is not a well-formed msgpack-rpc message raises
:class:`ProtocolError`; the shell closes that connection with the reason.

Batches: :meth:`Dispatcher.dispatch_inline` runs the hot case (a plain-function
handler, well-formed, right arity) of one encoded message and answers
:data:`DEFER` for the rest; :meth:`Dispatcher.dispatch_many` does that over a
batch, stopping at the first message to defer. With the C accelerator
(``mux_rpc/_rpcfast.c``; :data:`ACCELERATED`) those two and
:meth:`Dispatcher.dispatch_obj` run the hot case in C - decode, call, encode,
byte-identical replies - and hand everything else to the Python methods
here, which remain the only statement of the rules (errors, BAD_RESULT,
logging). ``MUX_RPC_PURE_PYTHON=1`` or ``Dispatcher(app, accelerated=False)``
keeps to Python.

Error objects (the ``error`` field of a response)
-------------------------------------------------
The spec leaves the error's type open. mux_rpc always sends a map
``{"code": <str>, "message": <str>}`` so clients in any language can branch
on ``code`` and show ``message``. Codes:

* ``"NO_METHOD"``     no method of that name is registered;
* ``"BAD_ARGS"``      params do not fit the handler's signature (checked with
  ``inspect.signature`` before the call);
* ``"HANDLER_ERROR"`` the handler raised; message is ``"<ExcType>: <text>"``;
* ``"TIMEOUT"``       the per-call deadline passed; the handler was cancelled;
* ``"BAD_RESULT"``    the handler's return value cannot be encoded by msgpack;
* any code a handler chooses by raising :class:`RemoteError` itself.
"""

from __future__ import annotations

import importlib
import logging
import os
import types
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from ._conn import MuxRpcError
from ._service import App, MethodSpec

__all__ = [
    "ACCELERATED",
    "DEFER",
    "Dispatcher",
    "ErrorCode",
    "PendingCall",
    "ProtocolError",
    "RemoteError",
    "decode_message",
    "encode_error",
    "encode_response",
]

logger = logging.getLogger("mux_rpc.dispatch")

REQUEST: Final = 0
RESPONSE: Final = 1
NOTIFICATION: Final = 2
MAX_MSGID: Final = 0xFFFFFFFF  # spec: msgid is a 32-bit unsigned integer


class ErrorCode:
    """The ``code`` strings mux_rpc puts in error responses (see module doc)."""

    NO_METHOD: Final = "NO_METHOD"
    BAD_ARGS: Final = "BAD_ARGS"
    HANDLER_ERROR: Final = "HANDLER_ERROR"
    TIMEOUT: Final = "TIMEOUT"
    BAD_RESULT: Final = "BAD_RESULT"


class ProtocolError(MuxRpcError):
    """A message is not a valid msgpack-rpc request or notification (bad
    msgpack, wrong shape, unexpected type). The connection is closed."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RemoteError(MuxRpcError):
    """An msgpack-rpc error response.

    Raised by :class:`mux_rpc.Client` when a call's response carries an
    error; a handler may raise it too, to answer with its own ``code``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @classmethod
    def from_wire(cls, error: Any) -> RemoteError:
        """Build from any error object a server sent (ours is a code/message map)."""
        if isinstance(error, dict) and isinstance(error.get("code"), str):
            return cls(error["code"], str(error.get("message", "")))
        if isinstance(error, (list, tuple)) and len(error) == 2:
            return cls(str(error[0]), str(error[1]))
        return cls("ERROR", error if isinstance(error, str) else repr(error))


@dataclass(frozen=True, slots=True)
class PendingCall:
    """An async handler's call, decoded and checked but not yet run."""

    msgid: int | None
    """Request id to answer, or None for a notification (never answered)."""
    spec: MethodSpec
    """The handler's registration."""
    coro: Coroutine[Any, Any, Any]
    """The handler's coroutine, not started."""


class _Deferred:
    """Type of :data:`DEFER`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "DEFER"


#: :meth:`Dispatcher.dispatch_inline`'s "not inline: use dispatch()" answer
DEFER: Final = _Deferred()

_unpackb = msgpack.unpackb

# The optional C fast path (mux_rpc/_rpcfast.c, built by scripts/setup.sh via
# scripts/build_accelerators.py): the hot case of dispatch_inline / dispatch_many /
# dispatch_obj, deferring everything else to the Python code below, which
# stays the one statement of the rules. MUX_RPC_PURE_PYTHON=1 turns it off.
_rpcfast: Any
try:
    if os.environ.get("MUX_RPC_PURE_PYTHON"):
        raise ImportError("MUX_RPC_PURE_PYTHON is set")
    _rpcfast = importlib.import_module(__name__.rpartition(".")[0] + "._rpcfast")
except ImportError:
    _rpcfast = None

#: True when Dispatchers use the C fast path by default (built, not forced off).
ACCELERATED: Final = _rpcfast is not None


def decode_message(payload: bytes) -> Any:
    """Decode one whole msgpack value; :class:`ProtocolError` if it is not one."""
    try:
        return msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except msgpack.ExtraData:
        raise ProtocolError("trailing bytes after the msgpack value") from None
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ProtocolError(f"not a msgpack value: {type(exc).__name__}: {exc}") from exc


def _new_packer() -> msgpack.Packer:
    return msgpack.Packer(use_bin_type=True, autoreset=True)


def encode_response(msgid: int, result: Any, packer: msgpack.Packer | None = None) -> bytes:
    """``[1, msgid, nil, result]``; a result msgpack cannot encode becomes BAD_RESULT.

    ``packer`` (reused by a Dispatcher; a Packer is not thread-safe) defaults to a new one."""
    p = packer if packer is not None else _new_packer()
    try:
        data: bytes = p.pack([RESPONSE, msgid, None, result])
        return data
    except (TypeError, ValueError, OverflowError) as exc:
        p.reset()
        return encode_error(
            msgid, ErrorCode.BAD_RESULT, f"cannot encode result: {type(exc).__name__}: {exc}", p
        )


def encode_error(msgid: int, code: str, message: str,
                 packer: msgpack.Packer | None = None) -> bytes:
    """``[1, msgid, {"code": code, "message": message}, nil]``."""
    p = packer if packer is not None else _new_packer()
    data: bytes = p.pack([RESPONSE, msgid, {"code": code, "message": message}, None])
    return data


class Dispatcher:
    """Routes decoded msgpack-rpc messages of one :class:`App` to its handlers.

    ``accelerated``: None (default) uses the C fast path when it is built and
    not forced off (:data:`ACCELERATED`); False forces pure Python (the
    floor benchmark measures that); True requires the C path (RuntimeError
    without it). Either way the replies are byte-identical: the C path takes
    only the hot case and hands everything else to the Python methods."""

    def __init__(self, app: App, *, accelerated: bool | None = None) -> None:
        self.app = app
        self._methods = app.methods
        self._notifications = app.notifications
        self._packer = _new_packer()  # one per dispatcher: a Packer is not thread-safe
        self._inline_handled = 0
        if accelerated is None:
            accelerated = ACCELERATED
        elif accelerated and _rpcfast is None:
            raise RuntimeError("mux_rpc._rpcfast is not available: build it with "
                               "scripts/setup.sh (and unset MUX_RPC_PURE_PYTHON)")
        self.accelerated: bool = accelerated
        """Whether this dispatcher runs the hot case in C."""
        self._core: Any = None
        if accelerated:
            # Bound to this dispatcher's own tables and packer; the C methods
            # replace the Python ones on the instance (no wrapper per message).
            core = _rpcfast.Core(
                self._methods, self._notifications, self.fail_call, encode_response,
                self._packer, DEFER, types.MethodType(Dispatcher.dispatch_obj, self),
                types.MethodType(Dispatcher.dispatch_inline, self),
            )
            self._core = core
            self.dispatch_inline = core.dispatch_inline  # type: ignore[method-assign]
            self.dispatch_many = core.dispatch_many  # type: ignore[method-assign]
            self.dispatch_obj = core.dispatch_obj  # type: ignore[method-assign]

    @property
    def inline_handled(self) -> int:
        """Messages :meth:`dispatch_many` handled inline, over this dispatcher's life."""
        return self._inline_handled + (self._core.handled if self._core is not None else 0)

    def dispatch(self, payload: bytes) -> bytes | PendingCall | None:
        """Decode and dispatch one whole message (see the module doc)."""
        return self.dispatch_obj(decode_message(payload))

    def dispatch_inline(self, payload: bytes) -> bytes | None | _Deferred:
        """The batch fast path: run a well-formed call of a plain (sync) handler
        now and return its reply (``None`` for a notification), or
        :data:`DEFER` when the message needs :meth:`dispatch` (an ``async``
        handler, an unknown method, a malformed message): nothing was called
        then, and the caller hands the message to the slow path unchanged."""
        try:
            msg = _unpackb(payload, raw=False, strict_map_key=False)
        except Exception:  # noqa: BLE001 - dispatch() reports it
            return DEFER
        if type(msg) is not list:
            return DEFER
        n = len(msg)
        if n == 4:
            kind, msgid, method, params = msg
            if kind != REQUEST or type(kind) is not int or type(msgid) is not int \
                    or not 0 <= msgid <= MAX_MSGID:
                return DEFER
            spec = self._methods.get(method) if type(method) is str else None
        elif n == 3:
            kind, method, params = msg
            if kind != NOTIFICATION or type(kind) is not int:
                return DEFER
            msgid = None
            spec = self._notifications.get(method) if type(method) is str else None
        else:
            return DEFER
        if spec is None or spec.is_async or type(params) is not list:
            return DEFER
        np = len(params)
        if np < spec.min_args or (spec.max_args is not None and np > spec.max_args):
            return DEFER
        try:
            result = spec.func(*params)
        except Exception as exc:  # noqa: BLE001 - becomes the error response, and is logged
            return self.fail_call(spec, msgid, exc)
        if msgid is None:
            return None
        try:
            data: bytes = self._packer.pack([RESPONSE, msgid, None, result])
        except (TypeError, ValueError, OverflowError):
            self._packer.reset()
            return encode_response(msgid, result, self._packer)  # BAD_RESULT
        return data

    def dispatch_many(
        self, payloads: Sequence[bytes], start: int = 0
    ) -> tuple[list[bytes], int]:
        """:meth:`dispatch_inline` over ``payloads[start:]``, in order, for a batch.

        Returns ``(replies, stop)``: the replies of the messages handled (in
        order; notifications add none) and the index of the first message that
        :meth:`dispatch_inline` would have answered with :data:`DEFER` — nothing
        was called for it, and the caller sends ``payloads[stop:]`` down the
        slow path (then may call again with ``start=stop + 1``). ``stop`` is
        ``len(payloads)`` when none deferred; ``stop - start`` messages were
        handled (:attr:`inline_handled` counts them all)."""
        replies: list[bytes] = []
        inline = self.dispatch_inline
        append = replies.append
        n = len(payloads)
        if not 0 <= start <= n:
            raise ValueError(f"start {start} is not in [0, {n}]")
        i = start
        while i < n:
            out = inline(payloads[i])
            if out is DEFER:
                break
            if out is not None:
                append(out)  # type: ignore[arg-type]
            i += 1
        self._inline_handled += i - start
        return replies, i

    def dispatch_obj(self, msg: Any) -> bytes | PendingCall | None:
        """Dispatch one already-decoded msgpack value."""
        if type(msg) is not list:
            raise ProtocolError(f"message is a {type(msg).__name__}, not an array")
        n = len(msg)
        kind = msg[0] if n else None
        if kind == REQUEST and n == 4 and type(kind) is int:
            _, msgid, method, params = msg
            if type(msgid) is not int or not 0 <= msgid <= MAX_MSGID:
                raise ProtocolError(f"request msgid {msgid!r} is not a 32-bit unsigned integer")
            method = _method_name(method)
            params = _params(params)
            spec = self._methods.get(method)
            if spec is None:
                why = f"no method {method!r}"
                if method in self._notifications:
                    why += " (it is registered as a notification)"
                return encode_error(msgid, ErrorCode.NO_METHOD, why, self._packer)
            return self._call(spec, msgid, params)
        if kind == NOTIFICATION and n == 3 and type(kind) is int:
            _, method, params = msg
            method = _method_name(method)
            params = _params(params)
            spec = self._notifications.get(method)
            if spec is None:
                logger.warning("notification for unknown method %r dropped", method)
                return None
            return self._call(spec, None, params)
        if kind == RESPONSE and n == 4:
            raise ProtocolError("unexpected response message: this peer makes no calls")
        raise ProtocolError(f"array of {n} is not a request [0,id,m,p] or notification [2,m,p]")

    def _call(
        self, spec: MethodSpec, msgid: int | None, params: list[Any] | dict[str, Any]
    ) -> bytes | PendingCall | None:
        if type(params) is list:
            n = len(params)
            if n < spec.min_args or (spec.max_args is not None and n > spec.max_args):
                return self._bad_args(spec, msgid, params)
        elif spec.arity_error(params) is not None:
            return self._bad_args(spec, msgid, params)
        try:
            if isinstance(params, list):
                result = spec.func(*params)
            else:
                result = spec.func(**params)
        except Exception as exc:  # noqa: BLE001 - becomes the error response, and is logged
            return self.fail_call(spec, msgid, exc)
        if spec.is_async:
            return PendingCall(msgid, spec, result)
        if msgid is None:
            return None
        return encode_response(msgid, result, self._packer)

    def _bad_args(
        self, spec: MethodSpec, msgid: int | None, params: list[Any] | dict[str, Any]
    ) -> bytes | None:
        why = spec.arity_error(params) or f"bad arguments for {spec.name}"
        if msgid is None:
            logger.warning("notification %s dropped: %s", spec.name, why)
            return None
        return encode_error(msgid, ErrorCode.BAD_ARGS, why, self._packer)

    def complete(self, call: PendingCall, result: Any) -> bytes | None:
        """The reply for an async call that returned ``result`` (None for notifications)."""
        if call.msgid is None:
            return None
        return encode_response(call.msgid, result, self._packer)

    def fail(self, call: PendingCall, exc: BaseException) -> bytes | None:
        """The reply for an async call that raised ``exc`` (TimeoutError → TIMEOUT)."""
        return self.fail_call(call.spec, call.msgid, exc)

    def fail_call(
        self, spec: MethodSpec, msgid: int | None, exc: BaseException
    ) -> bytes | None:
        """Error reply for ``exc`` raised by ``spec``'s handler; logs unexpected errors."""
        if isinstance(exc, RemoteError):
            code, message = exc.code, exc.message
        elif isinstance(exc, TimeoutError):
            code, message = ErrorCode.TIMEOUT, f"{spec.name} passed its deadline"
        else:
            code, message = ErrorCode.HANDLER_ERROR, f"{type(exc).__name__}: {_text(exc)}"
            logger.warning("handler %s raised", spec.name, exc_info=exc)
        if msgid is None:
            if isinstance(exc, (RemoteError, TimeoutError)):
                logger.warning("notification %s failed: %s: %s", spec.name, code, message)
            return None
        return encode_error(msgid, code, message, self._packer)


def _text(exc: BaseException) -> str:
    # an exception whose str() fails still gets its error reply (raising here
    # would leave the call unanswered and its credit held)
    try:
        return str(exc)
    except Exception:  # noqa: BLE001 - any failure of a user's __str__
        return "<str() of the exception failed>"


def _method_name(method: Any) -> str:
    if type(method) is str:
        return method
    if type(method) is bytes:  # old clients send names as raw bytes
        try:
            return method.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("method name is not UTF-8") from None
    raise ProtocolError(f"method name is a {type(method).__name__}, not a string")


def _params(params: Any) -> list[Any] | dict[str, Any]:
    if type(params) is list:
        return params
    if type(params) is dict and all(type(k) is str for k in params):
        return params
    raise ProtocolError(f"params is a {type(params).__name__}, not an array")
