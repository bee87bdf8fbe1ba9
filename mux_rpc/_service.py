"""Applications, services and the decorators that declare their handlers.

An :class:`App` is a registry: msgpack-rpc methods and notifications by name,
plus whole-message stream handlers bound to a (port, framer spec). A
:class:`Service` is a named group whose methods are registered as
``"<prefix>.<name>"``; ``app.service("kv")`` creates one bound to the app.

Handlers may be ``async def`` (run as tasks, concurrently, under the limits of
:class:`mux_rpc.ServerConfig`) or plain functions (called inline on the event
loop: they must not block; they are the fast path). The accepted argument
shape is computed once, at registration, from ``inspect.signature`` so a bad
argument count is answered with an error before the handler is called.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from ._conn import Message, MessageConnection

__all__ = ["App", "MethodSpec", "Service", "StreamHandlerSpec"]

F = TypeVar("F", bound=Callable[..., Any])
StreamHandler = Callable[[MessageConnection, Message], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class MethodSpec:
    """One registered msgpack-rpc method or notification handler."""

    name: str
    """Full wire name, prefix included ("kv.get")."""
    func: Callable[..., Any]
    """The handler."""
    is_async: bool
    """True for coroutine functions (run as tasks)."""
    notification: bool
    """True when registered with ``notification``: called for [2, name, params]."""
    min_args: int
    """Fewest positional arguments accepted."""
    max_args: int | None
    """Most positional arguments accepted (None: ``*args``)."""
    signature: inspect.Signature
    """Kept for keyword (map) params and error messages."""
    timeout: float | None = None
    """Per-method deadline in seconds, overriding ServerConfig.call_timeout."""

    def arity_error(self, params: list[Any] | dict[str, Any]) -> str | None:
        """Why ``params`` cannot be passed to the handler, or None when it can."""
        if isinstance(params, dict):
            try:
                self.signature.bind(**params)
            except TypeError as exc:
                return f"{self.name}{self.signature}: {exc}"
            return None
        n = len(params)
        if n < self.min_args or (self.max_args is not None and n > self.max_args):
            if self.max_args is None:
                want = f"at least {self.min_args}"
            elif self.min_args == self.max_args:
                want = str(self.min_args)
            else:
                want = f"{self.min_args} to {self.max_args}"
            return f"{self.name}{self.signature} takes {want} argument(s), {n} given"
        return None


@dataclass(frozen=True, slots=True)
class StreamHandlerSpec:
    """A whole-message handler for a listener with a non-msgpack-rpc framer."""

    port: int
    """TCP port the listener (offloaded or direct) accepts on."""
    framer: str
    """Framer spec as understood by ``framing.framer_from_spec`` ("length:size=4")."""
    func: StreamHandler
    """``async def handler(conn, message)``; replies with ``await conn.send(...)``."""
    host: str = "0.0.0.0"
    """Address to listen on."""
    concurrency: int = 1
    """Messages of one connection handled at once. 1 (the default) keeps replies
    in request order, which protocols without request ids need."""


def _make_spec(
    func: Callable[..., Any], name: str, *, notification: bool, timeout: float | None
) -> MethodSpec:
    sig = inspect.signature(func)
    min_args = 0
    max_args: int | None = 0
    for p in sig.parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            assert max_args is not None
            max_args += 1
            if p.default is p.empty:
                min_args += 1
        elif p.kind is p.VAR_POSITIONAL:
            max_args = None
        elif p.kind is p.KEYWORD_ONLY and p.default is p.empty:
            raise TypeError(
                f"handler {name!r} has a required keyword-only parameter {p.name!r}; "
                "msgpack-rpc params are positional"
            )
    return MethodSpec(
        name=name,
        func=func,
        is_async=inspect.iscoroutinefunction(func),
        notification=notification,
        min_args=min_args,
        max_args=max_args,
        signature=sig,
        timeout=timeout,
    )


def _join(prefix: str | None, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


class App:
    """A registry of handlers served by :class:`mux_rpc.Server` or ``serve_direct``.

    >>> app = App("kv")
    >>> @app.method
    ... def echo(*args): return list(args)
    """

    def __init__(self, name: str = "app") -> None:
        self.name = name
        self.methods: dict[str, MethodSpec] = {}
        self.notifications: dict[str, MethodSpec] = {}
        self.stream_handlers: list[StreamHandlerSpec] = []

    def _register(self, spec: MethodSpec) -> None:
        table = self.notifications if spec.notification else self.methods
        if spec.name in table:
            kind = "notification" if spec.notification else "method"
            raise ValueError(f"{kind} {spec.name!r} is already registered in app {self.name!r}")
        table[spec.name] = spec

    @overload
    def method(self, func: F, /) -> F: ...
    @overload
    def method(
        self, *, name: str | None = None, prefix: str | None = None, timeout: float | None = None
    ) -> Callable[[F], F]: ...
    def method(  # type: ignore[misc]  # mypy vs positional-only default
        self,
        func: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        prefix: str | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Register a request handler: ``[0, msgid, name, params]`` gets a reply.

        ``name`` defaults to the function's name; ``prefix`` gives "prefix.name";
        ``timeout`` (seconds) overrides the server's per-call deadline."""
        return self._decorator(func, name, prefix, timeout, notification=False)

    @overload
    def notification(self, func: F, /) -> F: ...
    @overload
    def notification(
        self, *, name: str | None = None, prefix: str | None = None
    ) -> Callable[[F], F]: ...
    def notification(  # type: ignore[misc]
        self,
        func: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        prefix: str | None = None,
    ) -> Any:
        """Register a notification handler: ``[2, name, params]``, never replied to."""
        return self._decorator(func, name, prefix, None, notification=True)

    def _decorator(
        self,
        func: Callable[..., Any] | None,
        name: str | None,
        prefix: str | None,
        timeout: float | None,
        *,
        notification: bool,
    ) -> Any:
        def register(f: Callable[..., Any]) -> Callable[..., Any]:
            full = _join(prefix, name or f.__name__)
            self._register(_make_spec(f, full, notification=notification, timeout=timeout))
            return f

        if func is not None:
            return register(func)
        return register

    def stream_handler(
        self,
        *,
        port: int,
        framer: str,
        host: str = "0.0.0.0",
        concurrency: int = 1,
    ) -> Callable[[F], F]:
        """Bind ``async def handler(conn, message)`` to a listener on ``port``
        whose connections are framed by ``framer`` (any framing spec)."""
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")

        def register(f: F) -> F:
            if not inspect.iscoroutinefunction(f):
                raise TypeError("a stream handler must be an async function (conn, message)")
            if any(s.port == port and s.host == host for s in self.stream_handlers):
                raise ValueError(f"a stream handler is already bound to {host}:{port}")
            self.stream_handlers.append(
                StreamHandlerSpec(port=port, framer=framer, func=f, host=host,
                                  concurrency=concurrency)
            )
            return f

        return register

    def service(self, prefix: str) -> Service:
        """A :class:`Service` whose handlers register into this app as "prefix.name"."""
        svc = Service(prefix)
        svc._bind(self)
        return svc

    def include(self, service: Service) -> None:
        """Register every handler of a free-standing :class:`Service`."""
        service._bind(self)


class Service:
    """A group of handlers under one name prefix (``Service("kv")`` → "kv.get").

    Declared free-standing and added with ``app.include(svc)``, or created
    bound with ``app.service("kv")``."""

    def __init__(self, prefix: str) -> None:
        if not prefix:
            raise ValueError("a service needs a non-empty prefix")
        self.prefix = prefix
        self._specs: list[MethodSpec] = []
        self._apps: list[App] = []

    def _bind(self, app: App) -> None:
        for spec in self._specs:
            app._register(spec)
        self._apps.append(app)

    def _add(self, spec: MethodSpec) -> None:
        self._specs.append(spec)
        for app in self._apps:
            app._register(spec)

    def method(
        self, func: F | None = None, /, *, name: str | None = None, timeout: float | None = None
    ) -> F | Callable[[F], F]:
        """Register "prefix.name" as a request handler (see :meth:`App.method`)."""

        def register(f: F) -> F:
            full = _join(self.prefix, name or f.__name__)
            self._add(_make_spec(f, full, notification=False, timeout=timeout))
            return f

        return register(func) if func is not None else register

    def notification(
        self, func: F | None = None, /, *, name: str | None = None
    ) -> F | Callable[[F], F]:
        """Register "prefix.name" as a notification handler."""

        def register(f: F) -> F:
            full = _join(self.prefix, name or f.__name__)
            self._add(_make_spec(f, full, notification=True, timeout=None))
            return f

        return register(func) if func is not None else register


