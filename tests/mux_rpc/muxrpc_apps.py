"""Apps shared by the mux_rpc tests (plain module: no fixtures, so hypothesis can use it)."""

from __future__ import annotations

import asyncio
from typing import Any

import mux_rpc


class Probe:
    """A handler that blocks on an event and counts how many are inside."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.inside = 0
        self.max_inside = 0
        self.entered = 0
        self.cancelled = 0
        self.changed = asyncio.Event()

    async def block(self, tag: Any) -> Any:
        self.inside += 1
        self.entered += 1
        self.max_inside = max(self.max_inside, self.inside)
        self.changed.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            self.changed.set()
            raise
        finally:
            self.inside -= 1
        return tag

    async def until(self, pred: Any, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not pred():
                self.changed.clear()
                await self.changed.wait()


def make_app(probe: Probe | None = None) -> tuple[mux_rpc.App, list[Any]]:
    """An echo/kv app plus handlers for ordering, errors, blocking; returns (app, notes)."""
    app = mux_rpc.App("test")
    notes: list[Any] = []
    store: dict[str, Any] = {}

    @app.method
    def echo(*args: Any) -> list[Any]:
        return list(args)

    @app.method
    def add(a: int, b: int = 0) -> int:
        return a + b

    @app.method(name="get", prefix="kv")
    def kv_get(key: str) -> Any:
        return store.get(key)

    @app.method(name="put", prefix="kv")
    def kv_put(key: str, value: Any) -> None:
        store[key] = value

    @app.method
    async def sleep_echo(value: Any, delay: float) -> Any:
        await asyncio.sleep(delay)
        return value

    @app.method
    def boom(text: str) -> None:
        raise ValueError(text)

    @app.method
    async def aboom(text: str) -> None:
        await asyncio.sleep(0)
        raise KeyError(text)

    @app.method
    def refuse() -> None:
        raise mux_rpc.RemoteError("NOT_ALLOWED", "go away")

    @app.method
    def unencodable() -> object:
        return object()

    @app.notification
    def note(*args: Any) -> None:
        notes.append(list(args))

    @app.notification
    async def anote(value: Any) -> None:
        await asyncio.sleep(0)
        notes.append(value)

    if probe is not None:
        app.method(name="block")(probe.block)
    return app, notes
