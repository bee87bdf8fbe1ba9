from __future__ import annotations

from typing import Any

import pytest

import mux_rpc


def test_names_default_prefix_and_service() -> None:
    app = mux_rpc.App("kv")

    @app.method
    def plain(a: int) -> int:
        return a

    @app.method(name="get", prefix="kv")
    async def whatever(key: str) -> str:
        return key

    svc = mux_rpc.Service("store")

    @svc.method
    def put(k: str, v: Any) -> None: ...

    app.include(svc)

    @svc.method(name="size")  # added after include: still registered
    def size_() -> int:
        return 0

    bound = app.service("math")

    @bound.notification
    def tick() -> None: ...

    assert set(app.methods) == {"plain", "kv.get", "store.put", "store.size"}
    assert set(app.notifications) == {"math.tick"}
    assert app.methods["kv.get"].is_async and not app.methods["plain"].is_async
    assert app.notifications["math.tick"].notification


def test_arity_bounds() -> None:
    app = mux_rpc.App()

    @app.method
    def f(a: int, b: int = 1, *rest: int, flag: bool = False) -> None: ...

    @app.method
    def g(a: int, b: int = 1) -> None: ...

    spec_f, spec_g = app.methods["f"], app.methods["g"]
    assert (spec_f.min_args, spec_f.max_args) == (1, None)
    assert (spec_g.min_args, spec_g.max_args) == (1, 2)
    assert spec_g.arity_error([1]) is None
    assert "takes 1 to 2 argument(s), 3 given" in (spec_g.arity_error([1, 2, 3]) or "")
    assert spec_g.arity_error({"a": 1}) is None
    assert spec_g.arity_error({"c": 1}) is not None


def test_registration_errors() -> None:
    app = mux_rpc.App()

    @app.method
    def x() -> None: ...

    with pytest.raises(ValueError, match="already registered"):
        app.method(name="x")(lambda: None)
    with pytest.raises(TypeError, match="keyword-only"):
        @app.method
        def y(*, k: int) -> None: ...
    with pytest.raises(TypeError, match="async"):
        @app.stream_handler(port=1, framer="length:size=4")
        def z(conn: Any, msg: Any) -> None: ...
    with pytest.raises(ValueError):
        app.stream_handler(port=1, framer="x", concurrency=0)
    with pytest.raises(ValueError):
        mux_rpc.Service("")
    with pytest.raises(ValueError):
        mux_rpc.ServerConfig(max_inflight_total=0)


def test_stream_handler_registered() -> None:
    app = mux_rpc.App()

    @app.stream_handler(port=9000, framer="length:size=4", concurrency=4)
    async def h(conn: Any, msg: Any) -> None: ...

    (spec,) = app.stream_handlers
    assert (spec.port, spec.framer, spec.concurrency, spec.func) == (9000, "length:size=4", 4, h)
    with pytest.raises(ValueError, match="already bound"):
        app.stream_handler(port=9000, framer="x")(h)
