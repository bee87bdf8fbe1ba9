"""The kv example works as documented, and the floor benchmark runs."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import mux_rpc

ROOT = Path(__file__).resolve().parents[2]


def load_example() -> Any:
    spec = importlib.util.spec_from_file_location("kv_service_example",
                                                  ROOT / "examples" / "kv_service.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_kv_example_over_direct_tcp(caplog: pytest.LogCaptureFixture) -> None:
    mod = load_example()
    assert {"echo", "get", "put", "delete", "keys"} <= set(mod.app.methods)
    assert "log" in mod.app.notifications

    async def main() -> None:
        server = await mux_rpc.serve_direct(mod.app)
        async with server, await mux_rpc.Client.connect("127.0.0.1", server.port) as c:
            assert await c.call("echo", 1, "two") == [1, "two"]
            assert await c.call("put", "a", {"x": 1}) is True
            assert await c.call("put", "a", {"x": 2}) is False
            await c.call("put", "ab", 3)
            assert await c.call("get", "a") == {"x": 2}
            assert await c.call("get", "zz", "dflt") == "dflt"
            assert await c.call("keys", "a") == ["a", "ab"]
            assert await c.call("delete", "a") is True
            assert await c.call("delete", "a") is False
            assert await c.call("keys") == ["ab"]
            assert await c.call("slow_echo", "v", 0.01) == "v"
            c.notify("log", "warning", "from the test")
            assert await c.call("echo") == []

    with caplog.at_level(logging.INFO, "kv_service"):
        asyncio.run(asyncio.wait_for(main(), 10))
    assert "from the test" in caplog.text


def test_floor_benchmark_runs() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_floor.py"), "-n", "2000", "--repeat", "1",
         "--json"], capture_output=True, text=True, timeout=60, check=True)
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["mix"] for r in rows] == ["echo", "kv", "async-echo", "notify"]
    for r in rows:
        assert r["requests_per_s"] > 0 and r["cpu_us_per_request"] > 0
    assert rows[3]["reply_bytes"] == 0 and rows[0]["reply_bytes"] > 0
