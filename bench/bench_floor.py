"""The pure-Python floor of the mux_rpc runtime, and a loopback reference.

Floor (default): decode, dispatch and encode N msgpack-rpc requests for the
example service (examples/kv_service.py) through the pure
:class:`mux_rpc.Dispatcher`, with no I/O, no event loop, no framing: the
per-request Python cost every transport (offloaded or direct) pays on top.

    python bench/bench_floor.py                   # all mixes, table
    python bench/bench_floor.py -n 200000 --json

The default measures the pure-Python dispatcher whatever is built
(``Dispatcher(accelerated=False)``). ``--path`` adds the same loop through the C
fast path (``c``: ``Dispatcher.dispatch`` with mux_rpc._rpcfast), and batches
of ``--batch`` messages through ``Dispatcher.dispatch_many`` (``c-many``,
``python-many``), the deferred ones through ``dispatch`` as a host would:

    python bench/bench_floor.py --path python,c,c-many --mix echo

Loopback reference (``--tcp``): the same app served by ``serve_direct`` in a
child process (uvloop when installed), driven from this process by C
connections each keeping ``--depth`` pre-encoded requests in flight (a raw
pipelined client, so the client is cheaper than the server). Short runs. The
server uses the C fast path when it is built; ``--tcp --pure`` forces Python.

    python bench/bench_floor.py --tcp --conns 1,64 --seconds 3
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import multiprocessing as mp
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import msgpack

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import mux_rpc
from mux_rpc import Dispatcher, PendingCall
from mux_rpc._dispatch import ACCELERATED


def load_example() -> Any:
    spec = importlib.util.spec_from_file_location("kv_service", ROOT / "examples" / "kv_service.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def requests(mix: str, n: int) -> list[bytes]:
    out = []
    for i in range(n):
        msgid = i & 0xFFFFFFFF
        if mix == "echo":
            req = [0, msgid, "echo", ["hello", i]]
        elif mix == "kv":
            key = f"key{i % 1024}"
            req = ([0, msgid, "put", [key, i]] if i % 4 == 0 else [0, msgid, "get", [key]])
        elif mix == "async-echo":
            req = [0, msgid, "slow_echo", ["hello"]]
        elif mix == "notify":
            req = [2, "log", ["debug", "x"]]
        else:
            raise ValueError(mix)
        out.append(msgpack.packb(req, use_bin_type=True))
    return out


def _reply_size(dispatcher: Dispatcher, r: Any) -> int:
    """The size of the reply to what ``dispatch`` returned (``r``)."""
    if type(r) is bytes:
        return len(r)
    if r is None:
        return 0
    # an async handler with no real waits: drive it inline, no loop
    assert isinstance(r, PendingCall)
    try:
        while True:
            r.coro.send(None)
    except StopIteration as stop:
        reply = dispatcher.complete(r, stop.value)
        return len(reply or b"")


def run_floor(mix: str, n: int, repeat: int, path: str = "python",
              batch: int = 16) -> dict[str, Any]:
    """``path``: python (the floor: pure dispatch per message), c (the same
    through the C fast path), python-many / c-many (dispatch_many per batch)."""
    mod = load_example()
    many = path.endswith("-many")
    dispatcher = Dispatcher(mod.app, accelerated=path.startswith("c"))
    dispatch = dispatcher.dispatch
    payloads = requests(mix, n)
    batches = [payloads[i:i + batch] for i in range(0, n, batch)]  # as a host receives them
    best_wall = best_cpu = float("inf")
    out_bytes = 0
    for _ in range(repeat):
        out_bytes = 0
        c0, w0 = time.process_time(), time.perf_counter()
        if many:
            dispatch_many = dispatcher.dispatch_many
            for b in batches:
                start, end = 0, len(b)
                while True:
                    replies, stop = dispatch_many(b, start)
                    for r in replies:
                        out_bytes += len(r)
                    if stop == end:
                        break
                    out_bytes += _reply_size(dispatcher, dispatch(b[stop]))
                    start = stop + 1
        else:
            for p in payloads:
                r = dispatch(p)
                if type(r) is bytes:
                    out_bytes += len(r)
                elif r is not None:
                    out_bytes += _reply_size(dispatcher, r)
        w1, c1 = time.perf_counter(), time.process_time()
        best_wall, best_cpu = min(best_wall, w1 - w0), min(best_cpu, c1 - c0)
    return {
        "mix": mix, "path": path if not many else f"{path}{batch}", "requests": n,
        "requests_per_s": n / best_wall,
        "cpu_us_per_request": best_cpu / n * 1e6,
        "request_bytes": sum(map(len, payloads)) / n,
        "reply_bytes": out_bytes / n,
    }


# -- loopback reference -------------------------------------------------------------


def _server_child(port_q: Any, loop: str) -> None:
    mod = load_example()

    def ready(server: mux_rpc.DirectServer) -> None:
        port_q.put(server.port)

    try:
        mux_rpc.run_direct(mod.app, "127.0.0.1", 0, loop=loop, ready=ready)  # type: ignore[arg-type]
    except KeyboardInterrupt:
        pass


async def _drive(port: int, conns: int, depth: int, seconds: float) -> tuple[int, float]:
    batch = b"".join(requests("echo", depth))
    done = 0
    stop_at = time.perf_counter() + seconds

    async def one() -> None:
        nonlocal done
        r, w = await asyncio.open_connection("127.0.0.1", port)
        unpacker = msgpack.Unpacker(raw=False)
        while time.perf_counter() < stop_at:
            w.write(batch)
            got = 0
            while got < depth:
                data = await r.read(1 << 16)
                if not data:
                    raise ConnectionError("server closed")
                unpacker.feed(data)
                for _ in unpacker:
                    got += 1
            done += depth
        w.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(conns)))
    return done, time.perf_counter() - t0


def run_tcp(conns: int, depth: int, seconds: float, loop: str,
            pure: bool = False) -> dict[str, Any]:
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    child = ctx.Process(target=_server_child, args=(q, loop), daemon=True)
    saved = os.environ.get("MUX_RPC_PURE_PYTHON")
    if pure:  # the spawned child reads it when it imports mux_rpc
        os.environ["MUX_RPC_PURE_PYTHON"] = "1"
    try:
        child.start()
    finally:
        if saved is None:
            os.environ.pop("MUX_RPC_PURE_PYTHON", None)
        else:
            os.environ["MUX_RPC_PURE_PYTHON"] = saved
    try:
        port = q.get(timeout=20)
        c0 = time.process_time()
        try:
            import uvloop
            runner_factory: Any = uvloop.new_event_loop
        except ImportError:
            runner_factory = None
        with asyncio.Runner(loop_factory=runner_factory) as runner:
            done, wall = runner.run(_drive(port, conns, depth, seconds))
        client_cpu = time.process_time() - c0
    finally:
        if child.pid is not None and child.is_alive():
            os.kill(child.pid, 2)  # SIGINT: run_direct stops cleanly
        child.join(5)
        if child.is_alive():
            child.kill()
            child.join()
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    # the whole server process (startup included: a small overestimate)
    server_cpu = (children1.ru_utime + children1.ru_stime
                  - children0.ru_utime - children0.ru_stime)
    return {"mode": "direct-tcp", "server_loop": loop,
            "server_dispatch": "python" if pure or not ACCELERATED else "c",
            "connections": conns, "depth": depth,
            "requests": done, "seconds": wall, "requests_per_s": done / wall,
            "client_cpu_us_per_request": client_cpu / max(done, 1) * 1e6,
            "server_cpu_us_per_request": server_cpu / max(done, 1) * 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=100_000, help="requests per floor run")
    ap.add_argument("--repeat", type=int, default=3, help="floor: best of R runs")
    ap.add_argument("--mix", default="echo,kv,async-echo,notify")
    ap.add_argument("--path", default="python",
                    help="floor: comma list of python (default: the pure-Python floor), c, "
                         "python-many, c-many")
    ap.add_argument("--batch", type=int, default=16, help="floor: messages per dispatch_many")
    ap.add_argument("--pure", action="store_true", help="--tcp: the server dispatches in Python")
    ap.add_argument("--json", action="store_true", help="print JSON lines")
    ap.add_argument("--tcp", action="store_true", help="loopback reference instead of the floor")
    ap.add_argument("--conns", default="1,64", help="--tcp: connection counts")
    ap.add_argument("--depth", type=int, default=32, help="--tcp: requests in flight per connection")
    ap.add_argument("--seconds", type=float, default=3.0, help="--tcp: duration per point")
    ap.add_argument("--loop", default="auto", choices=["auto", "uvloop", "asyncio"])
    args = ap.parse_args()
    if args.tcp:
        rows = [run_tcp(int(c), args.depth, args.seconds, args.loop, args.pure)
                for c in args.conns.split(",")]
    else:
        rows = [run_floor(m, args.n, args.repeat, path, args.batch)
                for path in args.path.split(",") for m in args.mix.split(",")]
    for row in rows:
        if args.json:
            print(json.dumps(row))
        elif args.tcp:
            print(f"direct tcp  conns={row['connections']:<3} depth={row['depth']:<3} "
                  f"{row['requests_per_s']:>10,.0f} req/s  server "
                  f"{row['server_cpu_us_per_request']:.2f} / client "
                  f"{row['client_cpu_us_per_request']:.2f} CPU us/req  ({row['requests']} in "
                  f"{row['seconds']:.1f} s, loop={row['server_loop']}, "
                  f"dispatch={row['server_dispatch']})")
        else:
            label = "floor" if row["path"] == "python" else f"floor[{row['path']}]"
            print(f"{label} {row['mix']:<11} {row['requests_per_s']:>10,.0f} req/s  "
                  f"{row['cpu_us_per_request']:6.2f} CPU us/req  "
                  f"({row['request_bytes']:.0f} B in, {row['reply_bytes']:.0f} B out)")


if __name__ == "__main__":
    main()
