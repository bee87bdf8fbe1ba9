"""An echo + key-value msgpack-rpc service: the example to copy from.

Run it (served directly over TCP until the offloaded path is wired in)::

    python examples/kv_service.py --port 18800

and call it from any msgpack-rpc client, e.g. with mux_rpc's own::

    import asyncio, mux_rpc
    async def main():
        c = await mux_rpc.Client.connect("127.0.0.1", 18800)
        await c.call("put", "a", 1); print(await c.call("get", "a"))
        await c.close()
    asyncio.run(main())
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Any

import mux_rpc

app = mux_rpc.App("kv")
store: dict[str, Any] = {}
log = logging.getLogger("kv_service")


@app.method
def echo(*args: Any) -> list[Any]:
    """Return the arguments as a list. Plain functions run inline: keep them quick."""
    return list(args)


@app.method
def get(key: str, default: Any = None) -> Any:
    """The value stored under ``key``, or ``default``."""
    return store.get(key, default)


@app.method
def put(key: str, value: Any) -> bool:
    """Store ``value`` under ``key``; True if the key was new."""
    new = key not in store
    store[key] = value
    return new


@app.method
def delete(key: str) -> bool:
    """Remove ``key``; True if it was there."""
    return store.pop(key, None) is not None


@app.method
def keys(prefix: str = "") -> list[str]:
    """Sorted keys starting with ``prefix``."""
    return sorted(k for k in store if k.startswith(prefix))


@app.method(timeout=5.0)
async def slow_echo(value: Any, delay: float = 0.0) -> Any:
    """An async handler: runs as a task, concurrently with others, under a deadline."""
    await asyncio.sleep(delay)
    return value


@app.notification(name="log")  # wire name "log"; the Python name avoids the logger
def log_line(level: str, text: str) -> None:
    """Notification [2, "log", [level, text]]: no reply is ever sent."""
    log.log(logging.getLevelName(level.upper()) if isinstance(level, str) else logging.INFO,
            "%s", text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18800)
    parser.add_argument("--loop", choices=["auto", "uvloop", "asyncio"], default="auto")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)

    def ready(server: mux_rpc.DirectServer) -> None:
        print(f"kv service on {server.host}:{server.port}", flush=True)

    try:
        mux_rpc.run_direct(app, args.host, args.port, loop=args.loop, ready=ready)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
