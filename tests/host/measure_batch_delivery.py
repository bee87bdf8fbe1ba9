"""Host CPU per message of the offloaded receive path alone: synthetic batches
of raw DATA (``(conn_id, [payload, ...])`` runs, as ``Link.raw_runs`` gives them)
fed to ``Host._on_batch`` with ``mux_rpc.Server`` serving an echo method
inline, replies and CREDITs taken by stub link senders. No link, no agent,
no clients: what is left is the host's per-message bookkeeping plus dispatch.

Usage (from the repository root, or with PYTHONPATH pointing at another checkout):

    .venv/bin/python tests/host/measure_batch_delivery.py [CONNS] [RUN] [BATCH] [SECONDS] [--python]
        [--idle-us N]

CONNS connections (64), each batch holds runs of RUN consecutive calls per
connection (8; 1 = connections interleaved message by message), BATCH
messages per batch (512), for SECONDS (3). Prints microseconds per RPC, the
fastest round of 8 batches. The host uses the C run engine when it is built
(``Host(run_engine=None)``); ``--python`` measures the Python chain instead.

``--idle-us N`` measures the other way round: the process sleeps N
microseconds before every batch, as a host does between wake-ups, and the
figure is the median of the batches' own CPU time (``time.thread_time``).
What the same work costs once the caches have cooled down: e.g. ``1 8 8 2
--idle-us 150`` is one connection's wake-up of 8 calls at the rate
``mux-rpc bench`` drives it, against ``1 8 8 2 --idle-us 0`` back to back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mux_rpc import App, Server  # noqa: E402
from mux_rpc._offload import Host, HostConfig  # noqa: E402
from tests.host._fake import FakeAgent, MemoryPort  # noqa: E402
from xport import _protocol as P  # noqa: E402


class StubPort(MemoryPort):
    """A MemoryPort whose direct link senders only count (as the xport link's
    ``try_send_*`` would take everything)."""

    sent = [0, 0]

    def direct_senders(self) -> tuple[object, object, object]:
        sent = self.sent

        def data(conn_id: int, payload: bytes, header_length: int) -> bool:
            sent[0] += 1
            return True

        def credit(conn_id: int, messages: int, nbytes: int) -> bool:
            sent[1] += 1
            return True

        def many(conn_id: int, payloads: Sequence[bytes], nbytes: int) -> int:
            sent[0] += len(payloads)
            return len(payloads)

        return data, credit, many

    def run_sender(self) -> object:
        sent = self.sent

        def runs(runs: Sequence[tuple[int, Sequence[bytes]]],
                 credits: Sequence[tuple[int, int, int]], nbytes: int) -> bool:
            for _, ps in runs:
                sent[0] += len(ps)
            sent[1] += len(credits)
            return True

        return runs


async def main(nconn: int, run: int, batch: int, seconds: float, engine: bool,
               idle_us: float | None) -> None:
    logging.disable(logging.WARNING)  # the fake agent never confirms a CLOSE
    app = App()

    @app.method
    def echo(x: object, i: int) -> object:
        return x

    a, b = StubPort(), MemoryPort()
    a.peer, b.peer = b, a
    agent = FakeAgent([b])
    host = Host([a], dataclasses.replace(HostConfig(), close_timeout=0.05), run_timer=False,
                run_engine=None if engine else False)
    start = asyncio.create_task(host.start())
    await agent.wait_for(P.Hello)
    await agent.hello()
    await start
    server = Server(app)
    lst = await host.listen(0, "msgpack-rpc")
    task = asyncio.create_task(server.serve(lst))
    for cid in range(1, nconn + 1):
        await agent.send(0, P.NewConnection(cid, lst.listener_id, "127.0.0.1", cid))
    for _ in range(50):
        await asyncio.sleep(0)
    sent = StubPort.sent
    msgid = 0
    batches = []
    for _ in range(8):
        msgs: list[tuple[int, bytes]] = []
        while len(msgs) < batch:
            for cid in range(1, nconn + 1):
                for _ in range(run):
                    msgid += 1
                    msgs.append((cid, msgpack.packb([0, msgid, "echo", ["hello", msgid]])))
        batches.append(msgs[:batch])
    # as runs (the payloads copied per round: a run's list is the host's)
    runs = [[(cid, [p for _, p in grp]) for cid, grp in itertools.groupby(b, lambda m: m[0])]
            for b in batches]
    conns = list(host._conns.values())
    how = "run engine" if host._engine is not None else "Python chain"
    if idle_us is None:
        best = await _fastest_round(host, conns, runs, seconds)
        result = f"{best:.2f} us per RPC"
    else:
        per_rpc = await _batches_after_idle(host, conns, runs, seconds, idle_us / 1e6)
        result = (f"{idle_us:.0f} us idle before each batch: median "
                  f"{statistics.median(per_rpc):.2f} us per RPC over {len(per_rpc):,} batches")
    assert sent[0] > 0 and server.stats.messages >= sent[0]
    print(f"{how}: {nconn} conns, runs of {run}, {batch} msgs/batch: {result} "
          f"(replies {sent[0]:,}, credits {sent[1]:,}, "
          f"protocol errors {host.stats.protocol_errors})")
    await _shutdown(server, task, host, agent)


def _fresh(conns: list[Any], runs: list[tuple[int, list[bytes]]]) -> list[tuple[int, list[bytes]]]:
    """One batch ready for ``Host._on_batch``: the agent's window for replies
    opened wide (never the limit here), the runs copied (a run's list is the host's)."""
    for c in conns:
        c._swin.messages = c._swin.bytes = 1 << 30
    return [(cid, list(p)) for cid, p in runs]


async def _fastest_round(host: Host, conns: list[Any], runs: list[Any], seconds: float) -> float:
    """Microseconds per RPC of the fastest round of all the batches: what is left
    of the host's work when nothing else got the CPU (a shared machine's noise
    is one-sided)."""
    best = float("inf")
    deadline = time.monotonic() + seconds
    rounds = 0
    while time.monotonic() < deadline or rounds < 20:
        rounds += 1
        n = 0
        t0 = time.perf_counter()
        for b in runs:
            batch = _fresh(conns, b)
            host._on_batch(0, batch)
            n += sum(len(p) for _, p in batch)
        best = min(best, (time.perf_counter() - t0) / n * 1e6)
        await asyncio.sleep(0)  # credit timers, as the event loop would
    return best


async def _batches_after_idle(host: Host, conns: list[Any], runs: list[Any],
                              seconds: float, idle: float) -> list[float]:
    """CPU microseconds per RPC of each batch, each after ``idle`` seconds asleep."""
    per_rpc = []
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline or len(per_rpc) < 20:
        batch = _fresh(conns, runs[i % len(runs)])
        i += 1
        n = sum(len(p) for _, p in batch)
        if idle:
            time.sleep(idle)  # the CPU goes to whoever else runs, the caches with it
        t0 = time.thread_time()
        host._on_batch(0, batch)
        per_rpc.append((time.thread_time() - t0) / n * 1e6)
        if i % 64 == 0:
            await asyncio.sleep(0)  # credit timers, as the event loop would
    return per_rpc


async def _shutdown(server: Server, task: asyncio.Task[None], host: Host,
                    agent: FakeAgent) -> None:
    await server.close()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await host.close()
    await agent.close()


if __name__ == "__main__":
    flags = sys.argv[1:]
    idle_us = None
    if "--idle-us" in flags:
        k = flags.index("--idle-us")
        idle_us = float(flags[k + 1])
        del flags[k:k + 2]
    argv = [a for a in flags if a != "--python"]
    args = [int(x) for x in argv[0:3]] + [64, 8, 512][len(argv[0:3]):]
    asyncio.run(main(args[0], args[1], args[2], float(argv[3]) if len(argv) > 3 else 3.0,
                     "--python" not in flags, idle_us))
